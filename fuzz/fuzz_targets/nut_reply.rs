//! upsd's answer to `LIST VAR test`, whole, in reads of any size, and sent
//! without end: the parser never panics and keeps its bounds.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ebb_backends::nut::fuzz_reply(data));
