//! A client for NUT's network protocol (upsd, TCP 3493), written against the
//! protocol text (NUT's docs/net-protocol.txt): one request per line;
//! `LIST VAR <ups>` answers `BEGIN LIST VAR <ups>`, lines
//! `VAR <ups> <name> "<value>"` and `END LIST VAR <ups>`; `GET VAR <ups>
//! <name>` answers one `VAR` line; any request may answer `ERR <code>`.
//!
//! Each reading opens its own connection: a UPS is polled once a tick, and a
//! fresh connection is the simplest recovery from upsd restarting or the
//! network dropping in between. Every read has a timeout, so a stalled upsd
//! cannot stall the agent.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum NutError {
    #[error("upsd at {addr} is not reachable ({detail}): is upsd running and listening there?")]
    Connect { addr: String, detail: String },
    #[error("upsd at {addr} closed the connection or stopped answering mid-reply")]
    Dropped { addr: String },
    #[error("upsd at {addr} knows no UPS named {ups:?}: check the name (upsc -l {addr} lists them)")]
    UnknownUps { addr: String, ups: String },
    #[error("upsd at {addr} refused access (ERR ACCESS-DENIED): allow this host in upsd.conf / upsd.users")]
    AccessDenied { addr: String },
    #[error("upsd at {addr} answered ERR {code}")]
    Other { addr: String, code: String },
    #[error("upsd at {addr} sent a line ebb cannot read: {line:?}")]
    Malformed { addr: String, line: String },
    #[error("UPS {ups} at {addr} reports no ups.status")]
    NoStatus { addr: String, ups: String },
}

/// Talks to one upsd.
#[derive(Clone, Debug)]
pub struct NutClient {
    addr: String,
    timeout: Duration,
}

impl NutClient {
    /// `addr` is `host:port` (upsd listens on 3493 by default).
    pub fn new(addr: impl Into<String>, timeout: Duration) -> NutClient {
        NutClient { addr: addr.into(), timeout }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn connect(&self) -> Result<TcpStream, NutError> {
        let fail = |detail: String| NutError::Connect { addr: self.addr.clone(), detail };
        let sock = self
            .addr
            .to_socket_addrs()
            .map_err(|e| fail(e.to_string()))?
            .next()
            .ok_or_else(|| fail("the name resolves to no address".into()))?;
        let s = TcpStream::connect_timeout(&sock, self.timeout).map_err(|e| fail(e.to_string()))?;
        s.set_read_timeout(Some(self.timeout)).map_err(|e| fail(e.to_string()))?;
        s.set_write_timeout(Some(self.timeout)).map_err(|e| fail(e.to_string()))?;
        Ok(s)
    }

    /// Every variable of `ups` (`LIST VAR`).
    pub fn list_vars(&self, ups: &str) -> Result<BTreeMap<String, String>, NutError> {
        let mut s = self.connect()?;
        let dropped = || NutError::Dropped { addr: self.addr.clone() };
        s.write_all(format!("LIST VAR {ups}\n").as_bytes()).map_err(|_| dropped())?;
        let mut lines = BufReader::new(s.try_clone().map_err(|_| dropped())?).lines();
        let mut next = || -> Result<String, NutError> {
            match lines.next() {
                Some(Ok(l)) => Ok(l),
                _ => Err(dropped()),
            }
        };
        let first = next()?;
        self.check_error(&first, ups)?;
        if first.trim() != format!("BEGIN LIST VAR {ups}") {
            return Err(self.malformed(&first));
        }
        let mut vars = BTreeMap::new();
        loop {
            let line = next()?;
            self.check_error(&line, ups)?;
            if line.trim() == format!("END LIST VAR {ups}") {
                break;
            }
            let (name, value) = parse_var(&line, ups).ok_or_else(|| self.malformed(&line))?;
            vars.insert(name, value);
        }
        let _ = s.write_all(b"LOGOUT\n");
        Ok(vars)
    }

    /// The UPS's state, from its variables.
    pub fn read(&self, ups: &str) -> Result<UpsReading, NutError> {
        let vars = self.list_vars(ups)?;
        UpsReading::from_vars(&vars).ok_or_else(|| NutError::NoStatus { addr: self.addr.clone(), ups: ups.into() })
    }

    fn check_error(&self, line: &str, ups: &str) -> Result<(), NutError> {
        let Some(code) = line.trim().strip_prefix("ERR ") else { return Ok(()) };
        let code = code.split_whitespace().next().unwrap_or("").to_string();
        Err(match code.as_str() {
            "UNKNOWN-UPS" => NutError::UnknownUps { addr: self.addr.clone(), ups: ups.into() },
            "ACCESS-DENIED" => NutError::AccessDenied { addr: self.addr.clone() },
            _ => NutError::Other { addr: self.addr.clone(), code },
        })
    }

    fn malformed(&self, line: &str) -> NutError {
        NutError::Malformed { addr: self.addr.clone(), line: line.chars().take(200).collect() }
    }
}

/// `VAR <ups> <name> "<value>"` → (name, value), unescaping `\"` and `\\`.
fn parse_var(line: &str, ups: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("VAR ")?.strip_prefix(ups)?.strip_prefix(' ')?;
    let (name, quoted) = rest.split_once(' ')?;
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut value = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => value.push(chars.next()?),
            '"' => return None,
            c => value.push(c),
        }
    }
    (!name.is_empty()).then(|| (name.to_string(), value))
}

/// What ebb reads from a UPS.
#[derive(Clone, Debug, PartialEq)]
pub struct UpsReading {
    /// `ups.status` as sent, e.g. "OB LB".
    pub status: String,
    pub on_line: bool,
    pub on_battery: bool,
    pub low_battery: bool,
    /// FSD: the UPS (or its master) orders a shutdown now.
    pub forced_shutdown: bool,
    /// `battery.charge`, percent.
    pub charge: Option<f64>,
    /// `battery.runtime`, seconds left.
    pub runtime_s: Option<f64>,
    /// `ups.load`, percent of its capacity.
    pub load: Option<f64>,
    /// `ups.realpower`, watts drawn.
    pub realpower_w: Option<f64>,
}

impl UpsReading {
    /// None without `ups.status`.
    pub fn from_vars(vars: &BTreeMap<String, String>) -> Option<UpsReading> {
        let status = vars.get("ups.status")?.trim().to_string();
        let has = |flag: &str| status.split_whitespace().any(|f| f == flag);
        let num = |name: &str| vars.get(name).and_then(|v| v.trim().parse::<f64>().ok());
        Some(UpsReading {
            on_line: has("OL"),
            on_battery: has("OB"),
            low_battery: has("LB"),
            forced_shutdown: has("FSD"),
            charge: num("battery.charge"),
            runtime_s: num("battery.runtime"),
            load: num("ups.load"),
            realpower_w: num("ups.realpower"),
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_lines() {
        assert_eq!(parse_var(r#"VAR test ups.status "OB LB""#, "test"), Some(("ups.status".into(), "OB LB".into())));
        assert_eq!(parse_var(r#"VAR test ups.mfr "say \"hi\" \\ ok""#, "test"), Some(("ups.mfr".into(), r#"say "hi" \ ok"#.into())));
        assert_eq!(parse_var(r#"VAR other ups.status "OL""#, "test"), None);
        assert_eq!(parse_var(r#"VAR test ups.status OL"#, "test"), None);
        assert_eq!(parse_var(r#"VAR test ups.status "O"L""#, "test"), None);
        assert_eq!(parse_var("garbage", "test"), None);
    }

    #[test]
    fn readings_from_flags() {
        let vars: BTreeMap<String, String> = [("ups.status", "OB LB"), ("battery.charge", "9"), ("ups.realpower", "210.5")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = UpsReading::from_vars(&vars).unwrap();
        assert!(r.on_battery && r.low_battery && !r.on_line && !r.forced_shutdown);
        assert_eq!((r.charge, r.realpower_w, r.runtime_s), (Some(9.0), Some(210.5), None));
        assert_eq!(UpsReading::from_vars(&BTreeMap::new()), None);
    }
}
