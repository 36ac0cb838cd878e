//! `Config::parse` on any text: a config is loaded or refused, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ebb_daemon::fuzzing::config(data));
