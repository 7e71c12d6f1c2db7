#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llamactl::fuzzing::lane_head(data));
