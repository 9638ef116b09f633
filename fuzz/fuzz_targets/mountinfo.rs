#![no_main]
// The harness and its invariants: apptheus::fuzzing::mountinfo.
libfuzzer_sys::fuzz_target!(|data: &[u8]| apptheus::fuzzing::mountinfo(data));
