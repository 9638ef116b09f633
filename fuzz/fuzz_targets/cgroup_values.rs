#![no_main]
// The harness and its invariants: apptheus::fuzzing::cgroup_values.
libfuzzer_sys::fuzz_target!(|data: &[u8]| apptheus::fuzzing::cgroup_values(data));
