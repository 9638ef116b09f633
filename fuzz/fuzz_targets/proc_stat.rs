#![no_main]
// The harness and its invariants: apptheus::fuzzing::proc_stat.
libfuzzer_sys::fuzz_target!(|data: &[u8]| apptheus::fuzzing::proc_stat(data));
