//! `ebb check`'s look at the guests: which managed guests lack both of the
//! balloon's own safety nets (deflate-on-OOM, free page reporting), read
//! from the libvirt the config names.

use crate::config::Config;

/// One line per guest the config would manage whose balloon has neither
/// safety net, saying what that risks; an error when libvirt cannot be read.
pub fn unsafe_balloons(cfg: &Config) -> Result<Vec<String>, String> {
    let mut hv = ebb_backends::connect(&cfg.agent.uri).map_err(|e| e.to_string())?;
    let obs = hv.observe().map_err(|e| e.to_string())?;
    Ok(obs
        .vms
        .iter()
        .filter(|v| cfg.agent.is_ebbs(v.id.as_str()))
        // The config's word only: metadata may still say managed="no".
        .filter(|v| cfg.vm.get(v.id.as_str()).and_then(|s| s.managed) != Some(false))
        .filter_map(|v| Some(format!("{}: {}", v.id, v.balloon.as_ref()?.features.risk()?)))
        .collect())
}
