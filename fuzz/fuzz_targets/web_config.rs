#![no_main]
// The harness and its invariants: apptheus::fuzzing::web_config.
libfuzzer_sys::fuzz_target!(|data: &[u8]| apptheus::fuzzing::web_config(data));
