#![no_main]
// The harness and its invariants: apptheus::fuzzing::proc_statm.
libfuzzer_sys::fuzz_target!(|data: &[u8]| apptheus::fuzzing::proc_statm(data));
