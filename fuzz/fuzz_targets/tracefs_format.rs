#![no_main]
// The harness and its invariants: apptheus::fuzzing::tracefs_format.
libfuzzer_sys::fuzz_target!(|data: &[u8]| apptheus::fuzzing::tracefs_format(data));
