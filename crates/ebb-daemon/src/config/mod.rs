//! The agent's configuration file (TOML). Every field is documented in
//! `ebb.example.toml`; unknown fields, zero sizes and contradictions stop
//! startup with a message that names the field and the line.

mod units;
mod agent;
mod power;
mod vm;
mod web;

pub use units::*;
pub use agent::*;
pub use power::*;
pub use vm::*;
pub use web::*;

use ebb_core::clients::ClientsConfig;
use ebb_core::memory::MemoryConfig;
use ebb_core::realloc::ReallocConfig;
use ebb_core::{Bytes, VmId};
use ebb_core::human::FieldError;
use ebb_surrogate::{FdPlan, Limits, ServiceSpec, SpecError, SurrogateConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Invalid { path: PathBuf, source: ParseError },
}

/// Why a config text is refused, in one line: the field and, where it
/// stands in the text, its line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not TOML, or a value of the wrong type or form: toml's message, with
    /// the key it was reading.
    #[error("{}{}{message}", at_line(*.line), key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
    Read { line: Option<usize>, key: Option<String>, message: String },
    /// A value that its section's rules, or another value, refuse.
    #[error("{}{error}", at_line(*.line))]
    Invalid { line: Option<usize>, error: FieldError },
}

fn at_line(line: Option<usize>) -> String {
    line.map(|n| format!("line {n}: ")).unwrap_or_default()
}

/// `[gateway.NAME]`: a VM of the farm (NAME: its domain's name) whose
/// services `ebb coord`'s gateway serves (listen: the gateway's address;
/// backend: the VM's, as reached from the coordinator).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayVm {
    /// The farm host the VM runs on (its `farm.host`); without it, the host
    /// whose agent lists the VM in etcd (`hosts/{h}/vms`).
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub service: Vec<ServiceSpec>,
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
    /// `[clients]`: the timers of the clients attached to the VMs.
    #[serde(default)]
    pub clients: ClientsConfig,
    /// `[farm]`: the farm this host joins through etcd; none: ebb runs alone.
    #[serde(default)]
    pub farm: Option<ebb_core::farm::FarmConfig>,
    /// `[web]`: the live web view; off unless `listen` is set.
    #[serde(default)]
    pub web: WebSection,
    /// Per-VM settings: `[vm.NAME]`. These win over the domain's metadata.
    #[serde(default)]
    pub vm: BTreeMap<String, VmSection>,
    /// `[gateway.NAME]`, read by `ebb coord`: the services of the farm's
    /// VMs its gateway serves while their hosts sleep.
    #[serde(default)]
    pub gateway: BTreeMap<String, GatewayVm>,
    /// The agent's split of its descriptor limit, planned at start from its
    /// own `RLIMIT_NOFILE` (not config).
    #[serde(skip)]
    pub fd_plan: FdPlan,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text).map_err(|source| ConfigError::Invalid { path: path.to_owned(), source })
    }

    /// Parses and validates; the error names the field and its line.
    pub fn parse(text: &str) -> Result<Config, ParseError> {
        let cfg: Config = toml::from_str(text).map_err(|e| read_error(text, &e))?;
        cfg.validate().map_err(|error| ParseError::Invalid { line: line_of_field(text, &error.field), error })?;
        Ok(cfg)
    }

    /// Every section's rules, then those across sections; the error names
    /// the field it is about.
    fn validate(&self) -> Result<(), FieldError> {
        self.agent.validate()?;
        self.memory.validate()?;
        self.surrogate.validate().map_err(|e| match &e {
            SpecError::BadLimit { field, .. } => FieldError::new(format!("surrogate.{field}"), e.to_string()),
            _ => FieldError::new("surrogate", e.to_string()),
        })?;
        self.realloc.validate()?;
        self.power.validate()?;
        self.clients.validate()?;
        self.web.validate()?;
        if self.web.listen()? == Some(WebListen::Unix(self.agent.socket.clone())) {
            return Err(FieldError::new("web.listen", format!("web.listen = {:?} is agent.socket's path: give the web view a socket of its own", self.agent.socket.display().to_string())));
        }
        if let Some(farm) = &self.farm {
            farm.validate()?;
            // The hostname is read here, so `ebb check` refuses what `ebb run` would.
            ebb_farm::member::host_or_hostname(farm)?;
        }
        // The surrogate's own rules, through the function it runs them with:
        // `ebb check` and `ebb run` cannot disagree on a service.
        let services: Vec<(&str, &[ServiceSpec])> = self.vm.iter().map(|(name, vm)| (name.as_str(), vm.service.as_slice())).collect();
        ebb_surrogate::validate_services(&services)
            .map_err(|e| FieldError::new(e.vm().map_or("vm".into(), |vm| format!("vm.{vm}.service")), e.to_string()))?;
        for (name, vm) in &self.vm {
            vm.validate(&format!("vm.{name}"))?;
        }
        // The gateway runs in `ebb coord`, apart from the agent's services.
        let gateways: Vec<(&str, &[ServiceSpec])> = self.gateway.iter().map(|(name, g)| (name.as_str(), g.service.as_slice())).collect();
        ebb_surrogate::validate_services(&gateways)
            .map_err(|e| FieldError::new(e.vm().map_or("gateway".into(), |vm| format!("gateway.{vm}.service")), e.to_string()))?;
        for (name, g) in &self.gateway {
            if let Some(host) = &g.host {
                ebb_core::farm::host_name(host).map_err(|why| FieldError::new(format!("gateway.{name}.host"), format!("gateway.{name}.host = {host:?} {why}")))?;
            }
            if g.service.is_empty() {
                return Err(FieldError::new(format!("gateway.{name}"), format!("gateway.{name} has no [[gateway.{name}.service]]: give the services the gateway serves")));
            }
        }
        if let Some(pool) = self.memory.pool {
            let mins: Bytes = self.vm.values().filter_map(|v| v.min.map(|m| m.0)).sum();
            if mins > pool {
                return Err(FieldError::new(
                    "memory.pool",
                    format!(
                        "memory.pool ({}) is smaller than the sum of the VMs' minimums ({mins}) by {}: raise the pool or lower some vm.*.min",
                        pool.0,
                        mins - pool
                    ),
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

/// The line of a dotted `path` ("memory.pool", "vm.web.min",
/// "power.model_table[3]") in the text, if it is there. A key may hold dots
/// itself (`[vm."a.b"]`): at each level the longest key the path goes on
/// with is taken; an index names its array's line.
fn line_of_field(text: &str, path: &str) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut rest = path.strip_suffix(']').and_then(|p| p.rsplit_once('[')).map_or(path, |(p, _)| p);
    loop {
        let (key, value) = table
            .iter()
            .map(|(k, v)| (k.get_ref().as_ref(), v))
            .filter(|(k, _)| rest == *k || rest.strip_prefix(*k).is_some_and(|r| r.starts_with('.')))
            .max_by_key(|(k, _)| k.len())?;
        let after = &rest[key.len()..];
        rest = after.strip_prefix('.').unwrap_or(after);
        if rest.is_empty() {
            return Some(line_of(text, value.span().start));
        }
        match value.get_ref() {
            toml::de::DeValue::Table(t) => table = t,
            _ => return None,
        }
    }
}

/// toml's message on one line, with the line and the key it was reading,
/// without the source excerpt.
fn read_error(text: &str, e: &toml::de::Error) -> ParseError {
    let line = e.span().map(|s| line_of(text, s.start));
    // Without the input toml's text is the message and, when it knows the
    // key, a last line "in `agent.tick`".
    let mut bare = e.clone();
    bare.set_input(None);
    let bare = bare.to_string();
    let key = bare.trim_end().rsplit_once('\n').and_then(|(_, last)| last.strip_prefix("in `")?.strip_suffix('`'));
    ParseError::Read { line, key: key.map(str::to_string), message: e.message().trim().to_string() }
}

#[cfg(test)]
mod tests;
