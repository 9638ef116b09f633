#!/bin/sh
srun /work/wt-slurm/target/debug/examples/workload alloc:200
echo srun exit $?
