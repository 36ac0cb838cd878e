//! `[power]` and `[power.devices]`: the UPS, the power model and budget, low battery, device power.

use super::*;
use ebb_core::devices::DeviceConfig;
use ebb_core::human::{FieldError, Span};
use ebb_core::power::{LowBattery, PowerModel, Watts};
use ebb_backends::nut::{NutClient, NutTls, TlsSetupError};
use ebb_backends::platform::UpsAddress;
use serde::Deserialize;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::time::Duration;

/// `[power]`: where the host's power comes from and what ebb does when it fails.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct PowerSection {
    /// A UPS served by NUT's upsd: `name@host:port` (port 3493 when left out).
    pub ups: Option<String>,
    /// The CA (a PEM file) upsd's certificate must chain to. Set, every
    /// reading is over TLS (STARTTLS) and a upsd that cannot prove itself
    /// is not read; unset, readings are plain TCP, unauthenticated.
    pub ups_ca: Option<PathBuf>,
    /// The name upsd's certificate must be issued for; default: the host of
    /// `ups` (set it when ebb reaches upsd by an address the certificate
    /// does not name).
    pub ups_tls_name: Option<String>,
    /// Root of the sysfs tree read for mains and batteries when no UPS is set.
    pub sysfs: PathBuf,
    /// On battery, at or below this charge (percent) or this runtime the
    /// battery is low: `LowBattery`'s `charge` and `runtime`, its default
    /// the section's (`low_battery` hands them over).
    pub low_charge: f64,
    pub low_runtime: Span,
    /// The command that powers the host down once every VM is saved. Unset:
    /// the power-off is recorded in the journal, not run.
    pub power_off_command: Option<Vec<String>>,
    /// On low battery, how long the guest of a VM that could not be saved
    /// has to shut down; past it the host stays up under it (never destroyed).
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    /// How long one whole reading of the UPS may take: the name lookup, the
    /// connect, STARTTLS and the handshake (with `ups_ca`) and every line of
    /// the answer.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Watts the host may draw on battery. Set, ebb plans for a power drop
    /// every tick (`ebb plan`) and, on battery, saves the VMs the plan drops.
    pub budget: Option<f64>,
    /// The host's power model: watts idle and at full CPU load…
    pub idle_watts: f64,
    pub max_watts: f64,
    /// …or 11 points, watts at 0 %, 10 %, …, 100 % CPU (a SPECpower result).
    pub model_table: Option<Vec<f64>>,
    /// `[power.devices]`: CPU frequency and disk standby.
    pub devices: DeviceConfig,
}

impl Default for PowerSection {
    fn default() -> Self {
        let low = LowBattery::default();
        PowerSection {
            ups: None,
            ups_ca: None,
            ups_tls_name: None,
            sysfs: PathBuf::from("/sys"),
            low_charge: low.charge,
            low_runtime: low.runtime,
            power_off_command: None,
            shutdown_timeout: Duration::from_secs(120),
            timeout: Duration::from_secs(2),
            budget: None,
            idle_watts: 100.0,
            max_watts: 250.0,
            model_table: None,
            devices: DeviceConfig::default(),
        }
    }
}

impl PowerSection {
    /// The section's rules (the UPS's address and CA among them: its CA
    /// file is loaded here); the error names the field.
    pub(crate) fn validate(&self) -> Result<(), FieldError> {
        if let Some(Err(e)) = self.ups_reader() {
            return Err(e);
        }
        if self.ups.is_none() && (self.ups_ca.is_some() || self.ups_tls_name.is_some()) {
            let field = if self.ups_ca.is_some() { "power.ups_ca" } else { "power.ups_tls_name" };
            return Err(FieldError::new(field, "power.ups_ca and power.ups_tls_name authenticate the UPS's upsd, but power.ups is not set: set it, or remove them"));
        }
        if self.ups_ca.is_none() && self.ups_tls_name.is_some() {
            return Err(FieldError::new("power.ups_tls_name", "power.ups_tls_name is set without power.ups_ca: set power.ups_ca to the CA that signed upsd's certificate (the name is checked only over TLS)"));
        }
        if let Some(t) = &self.model_table {
            let refused = "give 11 watt figures, at 0 %, 10 %, …, 100 % CPU, never falling";
            if t.len() != 11 {
                return Err(FieldError::new("power.model_table", format!("power.model_table has {} values: {refused}", t.len())));
            }
            for (i, w) in t.iter().enumerate() {
                number(&format!("power.model_table[{i}]"), *w, Range::AtLeast(0.0), " (watts)")?;
            }
            if t.windows(2).any(|w| w[1] < w[0]) {
                return Err(FieldError::new("power.model_table", format!("power.model_table falls: {refused}")));
            }
        }
        number("power.idle_watts", self.idle_watts, Range::AtLeast(0.0), "")?;
        number("power.max_watts", self.max_watts, Range::AtLeast(0.0), "")?;
        if self.max_watts < self.idle_watts {
            return Err(FieldError::new(
                "power.max_watts",
                format!("power.max_watts ({}) must be at least power.idle_watts ({})", self.max_watts, self.idle_watts),
            ));
        }
        if let Some(b) = self.budget {
            number("power.budget", b, Range::Above(0.0), " (watts the host may draw on battery)")?;
        }
        number("power.low_charge", self.low_charge, Range::Closed(0.0, 100.0), " (percent)")?;
        if self.power_off_command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(FieldError::new("power.power_off_command", "power.power_off_command is empty: give the command and its arguments, e.g. [\"systemctl\", \"poweroff\"]"));
        }
        self.devices.validate()
    }

    pub fn model(&self) -> PowerModel {
        match &self.model_table {
            Some(t) if t.len() == 11 => {
                let mut points = [0.0; 11];
                points.copy_from_slice(t);
                PowerModel::Table(points)
            }
            _ => PowerModel::Linear { idle: Watts(self.idle_watts), max: Watts(self.max_watts) },
        }
    }

    pub fn low_battery(&self) -> LowBattery {
        LowBattery { charge: self.low_charge, runtime: self.low_runtime }
    }

    /// `name@host[:port]` → (name, host:port), as upsc takes it; an IPv6
    /// host goes in brackets (`ups@[::1]:3493`).
    pub fn ups_address(&self) -> Option<Result<(String, String), FieldError>> {
        let text = self.ups.as_ref()?;
        Some(parse_ups(text).map_err(|why| {
            FieldError::new(
                "power.ups",
                format!("power.ups = {text:?}: {why}; write it as name@host, name@host:port or name@[IPv6]:port, as upsc takes it"),
            )
        }))
    }

    /// The name upsd's certificate must hold: `ups_tls_name`, else the
    /// host of `addr` (`host:port`, an IPv6 host in brackets).
    pub fn ups_tls_name(&self, addr: &str) -> String {
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        self.ups_tls_name.clone().unwrap_or_else(|| host.trim_start_matches('[').trim_end_matches(']').to_string())
    }

    /// The UPS and the client that reads it, over TLS when `ups_ca` is set
    /// (its CA file loaded now: `ebb check` and `ebb run` refuse one that
    /// cannot be used alike); None without `ups`.
    pub fn ups_reader(&self) -> Option<Result<UpsAddress, FieldError>> {
        let (ups, addr) = match self.ups_address()? {
            Ok(a) => a,
            Err(e) => return Some(Err(e)),
        };
        let client = NutClient::new(addr.clone(), self.timeout);
        let Some(ca) = &self.ups_ca else {
            return Some(Ok(UpsAddress { ups, client }));
        };
        let name = self.ups_tls_name(&addr);
        Some(match NutTls::new(ca, &name) {
            Ok(tls) => Ok(UpsAddress { ups, client: client.with_tls(tls) }),
            Err(e @ TlsSetupError::BadName) if self.ups_tls_name.is_some() => {
                Err(FieldError::new("power.ups_tls_name", format!("power.ups_tls_name = {name:?} {e}")))
            }
            Err(e @ TlsSetupError::BadName) => Err(FieldError::new("power.ups", format!("the host of power.ups ({name:?}) {e}: set power.ups_tls_name"))),
            Err(e) => Err(FieldError::new("power.ups_ca", format!("power.ups_ca = {:?} {e}", ca.display().to_string()))),
        })
    }
}

pub(crate) fn parse_ups(text: &str) -> Result<(String, String), &'static str> {
    let (name, rest) = text.split_once('@').filter(|(n, h)| !n.is_empty() && !h.is_empty()).ok_or("it names no UPS or no host")?;
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (ip, after) = v6.split_once(']').ok_or("the IPv6 address has no closing ']'")?;
            ip.parse::<Ipv6Addr>().map_err(|_| "the text in brackets is not an IPv6 address")?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or("only :port may follow the ']'")?),
            };
            (format!("[{ip}]"), port)
        }
        None => match rest.split_once(':') {
            Some((_, port)) if port.contains(':') => return Err("an IPv6 address goes in brackets"),
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (rest.to_string(), None),
        },
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err("the host is empty or has spaces");
    }
    let port = match port {
        None => 3493,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or("the port must be a number from 1 to 65535")?,
    };
    Ok((name.to_string(), format!("{host}:{port}")))
}
