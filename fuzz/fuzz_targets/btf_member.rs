#![no_main]
// The harness and its invariants: apptheus::fuzzing::btf_member.
libfuzzer_sys::fuzz_target!(|data: &[u8]| apptheus::fuzzing::btf_member(data));
