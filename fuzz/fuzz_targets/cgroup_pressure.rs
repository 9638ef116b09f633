#![no_main]
// The harness and its invariants: apptheus::fuzzing::cgroup_pressure.
libfuzzer_sys::fuzz_target!(|data: &[u8]| apptheus::fuzzing::cgroup_pressure(data));
