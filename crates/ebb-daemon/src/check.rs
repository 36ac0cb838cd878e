//! `ebb check`'s look at the guests: which managed guests lack both of the
//! balloon's own safety nets (deflate-on-OOM, free page reporting), read
//! from the libvirt the config names.

use crate::config::Config;
use crate::settings;

/// One line per guest ebb would manage whose balloon has neither safety
/// net, saying what that risks; an error when libvirt cannot be read.
/// Whether ebb manages a guest is resolved as `ebb run` resolves it
/// (`settings::resolve`: the config over the domain's metadata), so a
/// guest whose metadata says managed="no" is not flagged.
pub fn unsafe_balloons(cfg: &Config) -> Result<Vec<String>, String> {
    let mut hv = ebb_backends::connect(&cfg.agent.uri).map_err(|e| e.to_string())?;
    let obs = hv.observe().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for v in obs.vms.iter().filter(|v| cfg.agent.is_ebbs(v.id.as_str())) {
        let Some(risk) = v.balloon.as_ref().and_then(|b| b.features.risk()) else { continue };
        if resolve_live(cfg, hv.as_mut(), &v.id).settings.managed {
            out.push(format!("{}: {risk}", v.id));
        }
    }
    Ok(out)
}

/// A VM's settings as `ebb run` resolves them: the config over the
/// domain's metadata (metadata that cannot be read or parsed is ignored,
/// as `ebb run` ignores it).
pub(crate) fn resolve_live(cfg: &Config, hv: &mut dyn ebb_backends::Hypervisor, vm: &ebb_core::VmId) -> settings::Resolved {
    let meta = hv.ebb_metadata(vm).ok().flatten().and_then(|xml| settings::parse_metadata(&xml).ok());
    settings::resolve(cfg.vm_section(vm), meta.as_ref())
}
