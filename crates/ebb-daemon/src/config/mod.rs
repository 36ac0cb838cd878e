//! The agent's configuration file (TOML). Every field is documented in
//! `ebb.example.toml`; unknown fields, zero sizes and contradictions stop
//! startup with a message that names the field and the line.

mod units;
mod agent;
mod power;
mod vm;

pub use units::*;
pub use agent::*;
pub use power::*;
pub use vm::*;

use ebb_core::memory::MemoryConfig;
use ebb_core::realloc::ReallocConfig;
use ebb_core::affinity::MAX_CPUS;
use ebb_core::{Bytes, VmId};
use ebb_surrogate::{FdPlan, Limits, ServiceSpec, SurrogateConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: AgentSection,
    #[serde(default)]
    pub memory: MemoryConfig,
    /// `[surrogate]`: the bounds of the listeners that stand in for sleeping VMs.
    #[serde(default)]
    pub surrogate: SurrogateConfig,
    #[serde(default)]
    pub realloc: ReallocConfig,
    #[serde(default)]
    pub power: PowerSection,
    /// Per-VM settings: `[vm.NAME]`. These win over the domain's metadata.
    #[serde(default)]
    pub vm: BTreeMap<String, VmSection>,
    /// The agent's split of its descriptor limit, planned at start from its
    /// own `RLIMIT_NOFILE` (not config).
    #[serde(skip)]
    pub fd_plan: FdPlan,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text).map_err(|message| ConfigError::Invalid { path: path.to_owned(), message })
    }

    /// Parses and validates; the error names the field and its line.
    pub fn parse(text: &str) -> Result<Config, String> {
        let cfg: Config = toml::from_str(text).map_err(|e| describe_toml_error(text, &e))?;
        cfg.validate(text).map_err(|e| with_line(text, e))?;
        Ok(cfg)
    }

    fn validate(&self, text: &str) -> Result<(), String> {
        let at = |span: std::ops::Range<usize>| line_of(text, span.start);
        self.agent.validate()?;
        self.memory.validate()?;
        self.surrogate.validate().map_err(|e| format!("[surrogate]: {e}"))?;
        self.realloc.validate()?;
        if let Some(Err(e)) = self.power.ups_reader() {
            return Err(e);
        }
        if self.power.ups.is_none() && (self.power.ups_ca.is_some() || self.power.ups_tls_name.is_some()) {
            return Err("power.ups_ca and power.ups_tls_name authenticate the UPS's upsd, but power.ups is not set: set it, or remove them".into());
        }
        if self.power.ups_ca.is_none() && self.power.ups_tls_name.is_some() {
            return Err("power.ups_tls_name is set without power.ups_ca: set power.ups_ca to the CA that signed upsd's certificate (the name is checked only over TLS)".into());
        }
        if let Some(t) = &self.power.model_table {
            if t.len() != 11 {
                return Err(format!("power.model_table has {} values: give 11 watt figures, at 0 %, 10 %, …, 100 % CPU, never falling", t.len()));
            }
            for (i, w) in t.iter().enumerate() {
                number(&format!("power.model_table[{i}]"), *w, Range::AtLeast(0.0), " (watts)")?;
            }
            if t.windows(2).any(|w| w[1] < w[0]) {
                return Err("power.model_table falls: give 11 watt figures, at 0 %, 10 %, …, 100 % CPU, never falling".into());
            }
        }
        number("power.idle_watts", self.power.idle_watts, Range::AtLeast(0.0), "")?;
        number("power.max_watts", self.power.max_watts, Range::AtLeast(0.0), "")?;
        if self.power.max_watts < self.power.idle_watts {
            return Err(format!(
                "power.max_watts ({}) must be at least power.idle_watts ({})",
                self.power.max_watts, self.power.idle_watts
            ));
        }
        if let Some(b) = self.power.budget {
            number("power.budget", b, Range::Above(0.0), " (watts the host may draw on battery)")?;
        }
        number("power.low_charge", self.power.low_charge, Range::Closed(0.0, 100.0), " (percent)")?;
        if self.power.power_off_command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err("power.power_off_command is empty: give the command and its arguments, e.g. [\"systemctl\", \"poweroff\"]".into());
        }
        self.power.devices.validate()?;
        // The surrogate's own rules, through the function it runs them with:
        // `ebb check` and `ebb run` cannot disagree on a service.
        let services: Vec<(&str, &[ServiceSpec])> = self.vm.iter().map(|(name, vm)| (name.as_str(), vm.service.as_slice())).collect();
        ebb_surrogate::validate_services(&services).map_err(|e| e.to_string())?;
        for (name, vm) in &self.vm {
            if let (Some(min), Some(max)) = (&vm.min, &vm.max) {
                if min.get_ref().0 > max.get_ref().0 {
                    return Err(format!(
                        "line {}: vm.{name}.min ({}) is above vm.{name}.max ({})",
                        at(min.span()),
                        min.get_ref().0,
                        max.get_ref().0
                    ));
                }
            }
            if let Some(sleep) = &vm.sleep {
                sleep.validate(&format!("vm.{name}.sleep"))?;
            }
            if let Some(r) = &vm.realloc {
                r.validate(&format!("vm.{name}.realloc"))?;
            }
            if let Some(shares) = &vm.shares {
                if *shares.get_ref() == 0 {
                    return Err(format!("line {}: vm.{name}.shares must be more than zero", at(shares.span())));
                }
            }
        }
        if let Some(pool) = self.memory.pool {
            let mins: Bytes = self.vm.values().filter_map(|v| v.min.as_ref().map(|m| m.get_ref().0)).sum();
            if mins > pool {
                return Err(format!(
                    "memory.pool ({}) is smaller than the sum of the VMs' minimums ({mins}) by {}: raise the pool or lower some vm.*.min",
                    pool.0,
                    mins - pool
                ));
            }
        }
        Ok(())
    }

    /// The surrogate's bounds: `[surrogate]`'s and the descriptor shares.
    pub fn surrogate_limits(&self) -> Limits {
        Limits::new(&self.surrogate, &self.fd_plan)
    }

    /// The per-VM section for a domain, if the config has one.
    pub fn vm_section(&self, vm: &VmId) -> Option<&VmSection> {
        self.vm.get(vm.as_str())
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Puts the line of the field an error begins with ("memory.pool …") in
/// front of it: the sections validate themselves, knowing nothing of the
/// file, and the file's reader knows where each field stands.
fn with_line(text: &str, e: String) -> String {
    let field: String = e.chars().take_while(|c| c.is_ascii_alphanumeric() || "_.-".contains(*c)).collect();
    match line_of_field(text, field.trim_end_matches('.')) {
        Some(n) => format!("line {n}: {e}"),
        None => e,
    }
}

/// The line of a dotted `path` ("memory.pool") in the file, if it is there.
fn line_of_field(text: &str, path: &str) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut keys = path.split('.').peekable();
    while let Some(key) = keys.next() {
        let (_, value) = table.iter().find(|(k, _)| k.get_ref() == key)?;
        if keys.peek().is_none() {
            return Some(line_of(text, value.span().start));
        }
        match value.get_ref() {
            toml::de::DeValue::Table(t) => table = t,
            _ => return None,
        }
    }
    None
}

/// toml's message on one line, with the line and the key it was reading,
/// without the source excerpt.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let line = e.span().map(|s| format!("line {}: ", line_of(text, s.start))).unwrap_or_default();
    // Without the input toml's text is the message and, when it knows the
    // key, a last line "in `agent.tick`".
    let mut bare = e.clone();
    bare.set_input(None);
    let bare = bare.to_string();
    let key = bare.trim_end().rsplit_once('\n').and_then(|(_, last)| last.strip_prefix("in `")?.strip_suffix('`'));
    let key = key.map(|k| format!("{k}: ")).unwrap_or_default();
    format!("{line}{key}{}", e.message().trim())
}

#[cfg(test)]
mod tests;
