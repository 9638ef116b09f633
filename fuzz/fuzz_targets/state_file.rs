#![no_main]
// The harness and its invariants: apptheus::fuzzing::state_file.
libfuzzer_sys::fuzz_target!(|data: &[u8]| apptheus::fuzzing::state_file(data));
