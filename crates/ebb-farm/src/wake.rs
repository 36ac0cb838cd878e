//! Waking a sleeping host (farm research §4): IPMI, then Redfish, then
//! Wake-on-LAN, VMware DPM's order, each as the host's `[farm.wake]` sets it.
//!
//! - IPMI: Debian's `ipmitool` over LAN (`lanplus`), `chassis power on`, as
//!   Ironic and MAAS do: no pure-Rust IPMI client has the chassis commands.
//!   The password goes through ipmitool's environment (`-E`), never on its
//!   command line (which every local user can read) nor on a log line.
//! - Redfish: `POST {system}/Actions/ComputerSystem.Reset {"ResetType":"On"}`,
//!   HTTP/1.1 over TCP, TLS for `https://` (the system's CA store, or no
//!   certificate check when the credentials say `insecure_tls`).
//! - Wake-on-LAN: the 102-byte magic packet as UDP to the broadcast, port 9.
//!
//! Each send is bounded by its timeout and never hangs: a BMC that does not
//! answer gives [`WakeError::TimedOut`].

use base64::Engine as _;
use ebb_core::farm::WakeSettings;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// The user and password of a host's BMC (IPMI and Redfish), from the
/// coordinator's own config: never stored in etcd, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct BmcCredentials {
    pub user: String,
    pub password: String,
    /// Redfish over https: accept any certificate the BMC shows (most BMCs
    /// ship a self-signed one). Off, the certificate must chain to a CA of
    /// the system's store (/etc/ssl/certs).
    pub insecure_tls: bool,
}

impl fmt::Debug for BmcCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BmcCredentials").field("user", &self.user).field("password", &"…").field("insecure_tls", &self.insecure_tls).finish()
    }
}

/// A way to wake a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeMethod {
    Ipmi,
    Redfish,
    Wol,
}

impl WakeMethod {
    /// Its name in config and on screen: "ipmi", "redfish" or "wol".
    pub fn as_str(self) -> &'static str {
        match self {
            WakeMethod::Ipmi => "ipmi",
            WakeMethod::Redfish => "redfish",
            WakeMethod::Wol => "wol",
        }
    }

    /// The `[farm.wake]` field that gives its address.
    fn field(self) -> &'static str {
        match self {
            WakeMethod::Ipmi => "farm.wake.ipmi",
            WakeMethod::Redfish => "farm.wake.redfish",
            WakeMethod::Wol => "farm.wake.mac",
        }
    }
}

impl fmt::Display for WakeMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The methods `settings` has, in the order they are tried (IPMI, Redfish, WoL).
pub fn methods(settings: &WakeSettings) -> Vec<WakeMethod> {
    [(settings.ipmi.is_some(), WakeMethod::Ipmi), (settings.redfish.is_some(), WakeMethod::Redfish), (settings.mac.is_some(), WakeMethod::Wol)]
        .into_iter()
        .filter_map(|(set, m)| set.then_some(m))
        .collect()
}

/// Why a wake was not sent, or not taken: each message names the method,
/// the address and what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WakeError {
    #[error("{method}: this host has no {field} set: give it, or wake the host by another method", field = method.field())]
    NotConfigured { method: WakeMethod },
    #[error("{method}: no BMC user and password for {address}: give the coordinator the BMC's credentials")]
    NoCredentials { method: WakeMethod, address: String },
    #[error("{method} wake of {address} failed: {detail}")]
    Failed { method: WakeMethod, address: String, detail: String },
    #[error("{method} wake of {address} had no answer within {after:?}: check that the address is right and reachable from the coordinator, and that the BMC is powered (its own supply, not the host's)")]
    TimedOut { method: WakeMethod, address: String, after: Duration },
}

impl WakeError {
    /// The method it is about.
    pub fn method(&self) -> WakeMethod {
        match self {
            WakeError::NotConfigured { method } | WakeError::NoCredentials { method, .. } | WakeError::Failed { method, .. } | WakeError::TimedOut { method, .. } => *method,
        }
    }
}

/// Sends one wake by `method`; Ok(what was done, in words) or why not.
/// Bounded by `timeout`; never hangs.
pub async fn send(method: WakeMethod, settings: &WakeSettings, creds: Option<&BmcCredentials>, timeout: Duration) -> Result<String, WakeError> {
    let address = match method {
        WakeMethod::Ipmi => settings.ipmi.clone(),
        WakeMethod::Redfish => settings.redfish.clone(),
        WakeMethod::Wol => settings.mac.clone(),
    }
    .ok_or(WakeError::NotConfigured { method })?;
    let failed = |detail: String| WakeError::Failed { method, address: address.clone(), detail };
    let sent = async {
        match method {
            WakeMethod::Ipmi => ipmi(&address, creds.ok_or_else(|| WakeError::NoCredentials { method, address: address.clone() })?).await.map_err(failed),
            WakeMethod::Redfish => redfish(&address, creds).await.map_err(failed),
            WakeMethod::Wol => wol(&address, settings.broadcast.as_deref()).await.map_err(failed),
        }
    };
    match tokio::time::timeout(timeout, sent).await {
        Ok(done) => {
            match &done {
                Ok(what) => tracing::info!(method = method.as_str(), %address, "wake sent: {what}"),
                Err(e) => tracing::warn!(method = method.as_str(), "{e}"),
            }
            done
        }
        Err(_) => {
            let e = WakeError::TimedOut { method, address, after: timeout };
            tracing::warn!(method = method.as_str(), "{e}");
            Err(e)
        }
    }
}

// ---------------------------------------------------------------- IPMI

/// IPMI over LAN's port unless the address gives one.
pub const IPMI_PORT: u16 = 623;

/// A BMC address, `host` or `host:port` (`[v6]:port`), as host and port.
fn ipmi_target(address: &str) -> Result<(String, u16), String> {
    let bad = || format!("{address:?} is not a BMC address: give its host or host:port, e.g. 10.0.0.21 or 10.0.0.21:623");
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else if address.matches(':').count() == 1 {
        let (h, p) = address.split_once(':').ok_or_else(bad)?;
        (h, Some(p))
    } else {
        (address, None)
    };
    let port = port.map(|p| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)).transpose()?.unwrap_or(IPMI_PORT);
    if host.is_empty() || host.starts_with('-') || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// ipmitool's arguments for `chassis power on` (the password is not among
/// them: `-E` reads it from IPMI_PASSWORD).
fn ipmitool_args(host: &str, port: u16, user: &str) -> Vec<String> {
    ["-I", "lanplus", "-H", host, "-p", &port.to_string(), "-U", user, "-E", "chassis", "power", "on"].into_iter().map(String::from).collect()
}

async fn ipmi(address: &str, creds: &BmcCredentials) -> Result<String, String> {
    let (host, port) = ipmi_target(address)?;
    let mut cmd = tokio::process::Command::new("ipmitool");
    cmd.args(ipmitool_args(&host, port, &creds.user))
        .env("IPMI_PASSWORD", &creds.password)
        .stdin(std::process::Stdio::null())
        // ipmitool retries within limits of its own: killed when `send` times out.
        .kill_on_drop(true);
    let out = cmd.output().await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "ipmitool is not installed on the coordinator: install Debian's ipmitool package (scripts/setup-host.sh)".to_string(),
        _ => format!("cannot run ipmitool: {e}"),
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ipmitool_outcome(out.status.success(), &stdout, &stderr, &creds.password)
}

/// What ipmitool's exit and output say: done, or the failure's detail with
/// what to check. `password` is blanked from anything quoted.
fn ipmitool_outcome(success: bool, stdout: &str, stderr: &str, password: &str) -> Result<String, String> {
    let clean = |s: &str| {
        let s = s.trim();
        let s = if password.is_empty() { s.to_string() } else { s.replace(password, "…") };
        s.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("; ")
    };
    if success && stdout.contains("Up/On") {
        return Ok(format!("IPMI chassis power on: {}", clean(stdout)));
    }
    let said = match (clean(stderr), clean(stdout)) {
        (e, o) if e.is_empty() && o.is_empty() => "no output".to_string(),
        (e, o) if e.is_empty() => o,
        (e, _) => e,
    };
    let hint = if said.contains("RMCP+ session") || said.contains("nauthorized") || said.contains("password") {
        "check the BMC's user and password, and that IPMI over LAN (lanplus) is enabled on it"
    } else if said.contains("Insufficient privilege") {
        "the BMC's user needs the operator or administrator privilege for chassis control"
    } else {
        "check the BMC's address and port, and that IPMI over LAN (lanplus) is enabled on it"
    };
    Err(format!("ipmitool said: {said} ({hint})"))
}

// ---------------------------------------------------------------- Redfish

/// Where a Redfish System's reset action is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RedfishTarget {
    tls: bool,
    /// As written in the URL (a v6 literal without its brackets).
    host: String,
    port: u16,
    /// `Host:` header value.
    authority: String,
    /// `{system path}/Actions/ComputerSystem.Reset`.
    path: String,
}

/// The reset action of the Redfish System at `url` (`http(s)://host[:port]/redfish/v1/Systems/ID`).
fn redfish_target(url: &str) -> Result<RedfishTarget, String> {
    let bad = |why: &str| format!("{url:?} is not a Redfish System's URL ({why}): give one like https://10.0.0.21/redfish/v1/Systems/1");
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad("http:// or https:// expected"));
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        return Err(bad("no host, or credentials in it"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
        None if tls => 443,
        None => 80,
    };
    let path = path.split(['?', '#']).next().unwrap_or("").trim_end_matches('/');
    if path.is_empty() {
        return Err(bad("no System path"));
    }
    Ok(RedfishTarget { tls, host: host.to_string(), port, authority: authority.to_string(), path: format!("{path}/Actions/ComputerSystem.Reset") })
}

/// The body of a reset that powers the system on.
const RESET_ON: &str = r#"{"ResetType":"On"}"#;

fn redfish_request(target: &RedfishTarget, creds: Option<&BmcCredentials>) -> Result<hyper::Request<Full<Bytes>>, String> {
    let mut req = hyper::Request::post(target.path.as_str())
        .header(hyper::header::HOST, target.authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::ACCEPT, "application/json")
        .header(hyper::header::CONNECTION, "close");
    if let Some(c) = creds {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.user, c.password));
        req = req.header(hyper::header::AUTHORIZATION, format!("Basic {token}"));
    }
    req.body(Full::new(Bytes::from_static(RESET_ON.as_bytes()))).map_err(|e| format!("cannot build the request: {e}"))
}

async fn redfish(url: &str, creds: Option<&BmcCredentials>) -> Result<String, String> {
    let target = redfish_target(url)?;
    let req = redfish_request(&target, creds)?;
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot connect to {}:{} ({e}): check the URL and that the BMC's Redfish service is on", target.host, target.port))?;
    let (status, body) = if target.tls {
        let config = tls_config(creds.is_some_and(|c| c.insecure_tls))?;
        let name = rustls::pki_types::ServerName::try_from(target.host.clone()).map_err(|e| format!("{:?} cannot be a TLS server name: {e}", target.host))?;
        let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| {
            let hint = if e.to_string().contains("certificate") {
                ": the BMC's certificate is not trusted; add its CA to the system's store, or accept it with the credentials' insecure_tls"
            } else {
                ""
            };
            format!("TLS with {}:{} failed ({e}){hint}", target.host, target.port)
        })?;
        exchange(tls, req).await?
    } else {
        exchange(tcp, req).await?
    };
    if status.is_success() {
        return Ok(format!("Redfish ComputerSystem.Reset On accepted ({status})"));
    }
    let hint = match status.as_u16() {
        401 | 403 => "check the BMC's user and password and its privilege to reset",
        404 | 500 => "check the System URL (sushy-tools wants the System's UUID) and that it has ComputerSystem.Reset",
        400 => "the BMC refused ResetType On: check the System's allowed reset types",
        _ => "check the System URL and the BMC",
    };
    Err(format!("the BMC answered {status}: {} ({hint})", redfish_message(&body)))
}

/// One request and its answer on `io` (HTTP/1.1): the status and the body.
async fn exchange<S>(io: S, req: hyper::Request<Full<Bytes>>) -> Result<(hyper::StatusCode, Vec<u8>), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| format!("HTTP failed: {e}"))?;
    let conn = tokio::spawn(conn);
    let answer = async {
        let resp = sender.send_request(req).await.map_err(|e| format!("HTTP failed: {e}"))?;
        let status = resp.status();
        // An error's body is kept short: it is quoted, not read in full.
        let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024).collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
        Ok((status, body))
    }
    .await;
    conn.abort();
    answer
}

/// A Redfish error's words: `error.message` and each extended message, else
/// the body's start.
fn redfish_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let e = &v["error"];
        let mut words: Vec<String> = e["message"].as_str().map(String::from).into_iter().collect();
        if let Some(infos) = e["@Message.ExtendedInfo"].as_array() {
            words.extend(infos.iter().filter_map(|i| i["Message"].as_str().map(String::from)));
        }
        if !words.is_empty() {
            return words.join("; ");
        }
    }
    let text = text.trim();
    if text.is_empty() {
        return "no message".to_string();
    }
    let short: String = text.chars().take(300).collect();
    short.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The TLS set-up for a BMC: made once per kind (reading the system's CA
/// store takes a moment), then shared.
fn tls_config(insecure: bool) -> Result<Arc<rustls::ClientConfig>, String> {
    static CHECKED: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    static ANY: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    let cell = if insecure { &ANY } else { &CHECKED };
    cell.get_or_init(|| make_tls_config(insecure)).clone()
}

fn make_tls_config(insecure: bool) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| format!("cannot set up TLS: {e}"))?;
    let config = if insecure {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))).with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err("the system has no CA certificates to check the BMC's with (install ca-certificates), or accept its certificate with the credentials' insecure_tls".to_string());
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// Accepts whatever certificate the BMC shows (asked for with
/// `insecure_tls`); the handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------- Wake-on-LAN

/// Where a magic packet goes unless `[farm.wake] broadcast` says otherwise.
pub const WOL_BROADCAST: Ipv4Addr = Ipv4Addr::BROADCAST;
/// The discard port, where magic packets are sent by custom.
pub const WOL_PORT: u16 = 9;

/// The magic packet for `mac`: six 0xff then the MAC sixteen times.
pub fn magic_packet(mac: [u8; 6]) -> [u8; 102] {
    let mut p = [0xff; 102];
    for chunk in p[6..].chunks_exact_mut(6) {
        chunk.copy_from_slice(&mac);
    }
    p
}

/// Where to send: `broadcast` (an address, or address:port), else
/// 255.255.255.255, port 9 unless given.
fn wol_destination(broadcast: Option<&str>) -> Result<SocketAddr, String> {
    let Some(b) = broadcast else {
        return Ok(SocketAddr::new(IpAddr::V4(WOL_BROADCAST), WOL_PORT));
    };
    if let Ok(ip) = b.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, WOL_PORT));
    }
    b.parse::<SocketAddr>()
        .map_err(|_| format!("farm.wake.broadcast = {b:?} is not an address: give the host's subnet broadcast, e.g. 10.0.0.255 (or 10.0.0.255:9)"))
}

async fn wol(mac: &str, broadcast: Option<&str>) -> Result<String, String> {
    let bytes = ebb_core::farm::mac(mac).map_err(|why| format!("farm.wake.mac = {mac:?} {why}"))?;
    let to = wol_destination(broadcast)?;
    let local: SocketAddr = if to.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = tokio::net::UdpSocket::bind(local).await.map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    socket.set_broadcast(true).map_err(|e| format!("cannot allow broadcast on the socket: {e}"))?;
    let packet = magic_packet(bytes);
    let n = socket
        .send_to(&packet, to)
        .await
        .map_err(|e| format!("cannot send the magic packet to {to} ({e}): check that {to} is the host's subnet broadcast and the coordinator has a route to it"))?;
    Ok(format!("Wake-on-LAN magic packet for {mac} sent to {to} ({n} bytes); it wakes the host only if its NIC is armed (ethtool -s IF wol g) and the broadcast reaches its segment"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> BmcCredentials {
        BmcCredentials { user: "admin".into(), password: "s3cret-pw".into(), insecure_tls: false }
    }

    #[test]
    fn magic_packet_is_six_ff_then_sixteen_macs() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let p = magic_packet(mac);
        assert_eq!(p.len(), 102);
        assert_eq!(&p[..6], &[0xff; 6]);
        for i in 0..16 {
            assert_eq!(&p[6 + 6 * i..12 + 6 * i], &mac, "repeat {i}");
        }
    }

    #[test]
    fn wol_destination_defaults_to_the_limited_broadcast_port_9() {
        assert_eq!(wol_destination(None).unwrap().to_string(), "255.255.255.255:9");
        assert_eq!(wol_destination(Some("10.0.0.255")).unwrap().to_string(), "10.0.0.255:9");
        assert_eq!(wol_destination(Some("10.0.0.255:7")).unwrap().to_string(), "10.0.0.255:7");
        let e = wol_destination(Some("lan")).unwrap_err();
        assert!(e.contains("farm.wake.broadcast") && e.contains("\"lan\""), "{e}");
    }

    #[test]
    fn methods_follow_dpm_order() {
        let all = WakeSettings { ipmi: Some("10.0.0.21".into()), redfish: Some("https://b/redfish/v1/Systems/1".into()), mac: Some("52:54:00:12:34:56".into()), broadcast: None };
        assert_eq!(methods(&all), [WakeMethod::Ipmi, WakeMethod::Redfish, WakeMethod::Wol]);
        let names: Vec<&str> = methods(&all).into_iter().map(WakeMethod::as_str).collect();
        assert_eq!(names, all.methods(), "the same order as ebb_core's");
        let wol_only = WakeSettings { mac: Some("52:54:00:12:34:56".into()), ..Default::default() };
        assert_eq!(methods(&wol_only), [WakeMethod::Wol]);
        assert!(methods(&WakeSettings::default()).is_empty());
    }

    #[test]
    fn ipmi_targets() {
        assert_eq!(ipmi_target("10.0.0.21").unwrap(), ("10.0.0.21".into(), 623));
        assert_eq!(ipmi_target("bmc-7.lan:6230").unwrap(), ("bmc-7.lan".into(), 6230));
        assert_eq!(ipmi_target("fd00::21").unwrap(), ("fd00::21".into(), 623));
        assert_eq!(ipmi_target("[fd00::21]:624").unwrap(), ("fd00::21".into(), 624));
        for bad in ["", "h:", "h:0", "h:99999", "-oops", "[fd00::1", "a b"] {
            assert!(ipmi_target(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ipmitool_argv_has_no_password() {
        let argv = ipmitool_args("10.0.0.21", 6230, "admin");
        assert_eq!(argv.join(" "), "-I lanplus -H 10.0.0.21 -p 6230 -U admin -E chassis power on");
    }

    #[test]
    fn ipmitool_outcomes() {
        assert_eq!(ipmitool_outcome(true, "Chassis Power Control: Up/On\n", "", "pw").unwrap(), "IPMI chassis power on: Chassis Power Control: Up/On");
        let e = ipmitool_outcome(false, "", "Error: Unable to establish IPMI v2 / RMCP+ session\n", "pw").unwrap_err();
        assert!(e.contains("Unable to establish") && e.contains("user and password"), "{e}");
        // A password quoted back is blanked.
        let e = ipmitool_outcome(false, "", "bad pass s3cret-pw\n", "s3cret-pw").unwrap_err();
        assert!(!e.contains("s3cret-pw"), "{e}");
        // Exit 0 without the answer is not taken as done.
        assert!(ipmitool_outcome(true, "", "", "pw").unwrap_err().contains("no output"));
    }

    #[test]
    fn redfish_targets() {
        let t = redfish_target("http://127.0.0.1:8000/redfish/v1/Systems/abc/").unwrap();
        assert_eq!(t, RedfishTarget { tls: false, host: "127.0.0.1".into(), port: 8000, authority: "127.0.0.1:8000".into(), path: "/redfish/v1/Systems/abc/Actions/ComputerSystem.Reset".into() });
        let t = redfish_target("https://bmc.lan/redfish/v1/Systems/1").unwrap();
        assert_eq!((t.tls, t.port, t.host.as_str()), (true, 443, "bmc.lan"));
        let t = redfish_target("https://[fd00::5]:8443/redfish/v1/Systems/1").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.authority.as_str()), ("fd00::5", 8443, "[fd00::5]:8443"));
        for bad in ["ftp://x/y", "http://", "http://host", "http://u:p@host/r", "http://host:x/r"] {
            assert!(redfish_target(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn redfish_request_posts_reset_on_with_basic_auth() {
        let t = redfish_target("http://127.0.0.1:8000/redfish/v1/Systems/abc").unwrap();
        let req = redfish_request(&t, Some(&creds())).unwrap();
        assert_eq!(req.method(), hyper::Method::POST);
        assert_eq!(req.uri(), "/redfish/v1/Systems/abc/Actions/ComputerSystem.Reset");
        assert_eq!(req.headers()["host"], "127.0.0.1:8000");
        assert_eq!(req.headers()["content-type"], "application/json");
        // base64("admin:s3cret-pw")
        assert_eq!(req.headers()["authorization"], "Basic YWRtaW46czNjcmV0LXB3");
        let body: serde_json::Value = serde_json::from_str(RESET_ON).unwrap();
        assert_eq!(body["ResetType"], "On");
        let anonymous = redfish_request(&t, None).unwrap();
        assert!(!anonymous.headers().contains_key("authorization"));
    }

    #[test]
    fn redfish_error_messages() {
        let body = br#"{"error":{"code":"Base.1.0.GeneralError","message":"A general error has occurred.","@Message.ExtendedInfo":[{"Message":"ResetType Off not supported"}]}}"#;
        assert_eq!(redfish_message(body), "A general error has occurred.; ResetType Off not supported");
        assert_eq!(redfish_message(b"<html>\n  Not   Found</html>"), "<html> Not Found</html>");
        assert_eq!(redfish_message(b""), "no message");
    }

    #[test]
    fn errors_name_the_method_the_address_and_what_to_check() {
        let e = WakeError::NotConfigured { method: WakeMethod::Redfish };
        assert_eq!(e.to_string(), "redfish: this host has no farm.wake.redfish set: give it, or wake the host by another method");
        let e = WakeError::NoCredentials { method: WakeMethod::Ipmi, address: "10.0.0.21".into() };
        assert_eq!(e.to_string(), "ipmi: no BMC user and password for 10.0.0.21: give the coordinator the BMC's credentials");
        let e = WakeError::TimedOut { method: WakeMethod::Ipmi, address: "10.0.0.21:623".into(), after: Duration::from_secs(2) };
        let s = e.to_string();
        assert!(s.starts_with("ipmi wake of 10.0.0.21:623 had no answer within 2s: check"), "{s}");
        assert_eq!(e.method(), WakeMethod::Ipmi);
        assert!(!format!("{:?}", creds()).contains("s3cret"), "Debug never shows the password");
    }

    #[tokio::test]
    async fn send_refuses_what_is_not_set() {
        let none = WakeSettings::default();
        for m in [WakeMethod::Ipmi, WakeMethod::Redfish, WakeMethod::Wol] {
            assert_eq!(send(m, &none, Some(&creds()), Duration::from_secs(1)).await, Err(WakeError::NotConfigured { method: m }));
        }
        let ipmi = WakeSettings { ipmi: Some("127.0.0.1:1".into()), ..Default::default() };
        assert_eq!(send(WakeMethod::Ipmi, &ipmi, None, Duration::from_secs(1)).await, Err(WakeError::NoCredentials { method: WakeMethod::Ipmi, address: "127.0.0.1:1".into() }));
    }

    #[tokio::test]
    async fn redfish_to_a_closed_port_fails_at_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/redfish/v1/Systems/x");
        let s = WakeSettings { redfish: Some(url.clone()), ..Default::default() };
        match send(WakeMethod::Redfish, &s, None, Duration::from_secs(5)).await {
            Err(WakeError::Failed { method: WakeMethod::Redfish, address, detail }) => {
                assert_eq!(address, url);
                assert!(detail.contains("cannot connect"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }
}
