//! A domain's ebb `<metadata>` element (settings.rs's parser).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ebb_daemon::fuzzing::metadata(data));
