//! The checks of the fuzz targets `config` and `metadata`
//! (`fuzz/fuzz_targets/`), here so that the inputs they found run as unit
//! tests too. Not ebb's API: hidden from its docs.

use crate::config::Config;
use crate::settings::parse_metadata;
use ebb_core::Bytes;

/// A config file: parsed and validated, or refused with a message. (Memory
/// and time are bounded by the fuzzer's own limits, in `scripts/fuzz.sh`.)
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(message) = Config::parse(text) {
        assert!(!message.to_string().trim().is_empty(), "a config refused without a word");
    }
}

/// A domain's `<metadata>` element: what it sets is what validation promises.
pub fn metadata(data: &[u8]) {
    let Ok(xml) = std::str::from_utf8(data) else { return };
    let Ok(m) = parse_metadata(xml) else { return };
    assert_ne!(m.shares, Some(0));
    assert!(m.min != Some(Bytes::ZERO) && m.max != Some(Bytes::ZERO));
    if let Some(s) = m.sleep {
        assert!(s.idle_after.as_millis() > 0);
        assert!(s.cpu_threshold.is_finite() && s.cpu_threshold >= 0.0, "{}", s.cpu_threshold);
    }
    if let Some(r) = m.realloc {
        assert!(r.validate("<realloc>").is_ok());
        assert_ne!(r.vcpus_min, Some(0));
    }
}

#[cfg(test)]
mod tests {
    /// Every input of the fuzz target `target`: its seeds (`fuzz/seeds/`) and
    /// the inputs it found, kept in this crate's `fuzz-regressions/` once fixed.
    fn fuzz_inputs(target: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let seeds = std::fs::read_dir(crate_dir.join("../../fuzz/seeds").join(target)).expect("the target's seeds");
        let found = std::fs::read_dir(crate_dir.join("fuzz-regressions").join(target)).into_iter().flatten();
        seeds.chain(found).map(|e| e.unwrap().path()).map(|p| (p.clone(), std::fs::read(p).unwrap())).collect()
    }

    #[test]
    fn config_fuzz_inputs_keep_their_properties() {
        for (path, data) in fuzz_inputs("config") {
            println!("{}", path.display());
            super::config(&data);
        }
    }

    #[test]
    fn metadata_fuzz_inputs_keep_their_properties() {
        for (path, data) in fuzz_inputs("metadata") {
            println!("{}", path.display());
            super::metadata(&data);
        }
    }
}
