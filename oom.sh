#!/bin/sh
/work/wt-slurm/target/debug/examples/workload alloc:200
echo cmd exit $?
