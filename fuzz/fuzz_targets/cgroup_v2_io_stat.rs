#![no_main]
// The harness and its invariants: apptheus::fuzzing::cgroup_v2_io_stat.
libfuzzer_sys::fuzz_target!(|data: &[u8]| apptheus::fuzzing::cgroup_v2_io_stat(data));
