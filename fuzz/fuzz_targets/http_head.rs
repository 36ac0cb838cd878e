//! A client's request head against a canned reply: the surrogate's request
//! line parser, head completeness and canned-reply matcher.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ebb_surrogate::fuzzing::http_head(data));
