//! A client for NUT's network protocol (upsd, TCP 3493), written against the
//! protocol text (NUT's docs/net-protocol.txt): one request per line;
//! `LIST VAR <ups>` answers `BEGIN LIST VAR <ups>`, lines
//! `VAR <ups> <name> "<value>"` and `END LIST VAR <ups>`; `GET VAR <ups>
//! <name>` answers one `VAR` line; any request may answer `ERR <code>`.
//!
//! Each reading opens its own connection: a UPS is polled once a tick, and a
//! fresh connection is the simplest recovery from upsd restarting or the
//! network dropping in between. A reading is bounded as a whole, not per
//! read: one deadline covers the name lookup, the connect and every line, and
//! the answer is capped in line length, bytes and variables, so neither a
//! slow nor an endless upsd can hold a reading or grow ebb's memory. The
//! answer is parsed by [`ListVarReply`], a pure parser over the bytes as they
//! arrive (fuzzed: `fuzz/fuzz_targets/nut_reply.rs`).
//!
//! Plain, the reading is unauthenticated: whatever answers on the address
//! can report low battery, and ebb then saves every VM and powers the host
//! off. Given a CA ([`NutTls`]), every reading starts with `STARTTLS` (upsd
//! answers `OK STARTTLS`, then a TLS handshake on the same connection, as
//! net-protocol.txt has it) and goes on only once upsd's certificate chains
//! to that CA and holds the expected name; a upsd that does not take up TLS
//! is refused, never read in the clear. The STARTTLS exchange and the
//! handshake count against the reading's one deadline.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConnection, StreamOwned};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The longest line of an answer. NUT caps a value at 256 bytes
/// (`ST_MAX_VALUE_LEN`), so a `VAR` line stays under 1 KiB even with every
/// character of its value escaped; 4 KiB leaves room for long UPS and
/// variable names.
pub const MAX_LINE: usize = 4096;
/// The most variables one UPS may list. Real ones list 20 to a few hundred
/// (the largest are SNMP units with per-outlet variables).
pub const MAX_VARS: usize = 1024;
/// The most bytes one answer may take: about ten times a large real one
/// (300 variables with 256-byte values is under 100 KB).
pub const MAX_REPLY_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, thiserror::Error)]
pub enum NutError {
    #[error("the host name in {addr} does not resolve ({detail}): check power.ups")]
    Resolve { addr: String, detail: String },
    #[error("upsd at {addr} is not reachable ({detail}): is upsd running and listening there?")]
    Connect { addr: String, detail: String },
    #[error("upsd at {addr} accepted the connection but sent nothing within {timeout:?}")]
    Silent { addr: String, timeout: Duration },
    #[error("upsd at {addr} did not finish its answer within {timeout:?}")]
    Unfinished { addr: String, timeout: Duration },
    #[error("upsd at {addr} closed the connection before its answer was complete")]
    Closed { addr: String },
    #[error("the connection to upsd at {addr} failed: {detail}")]
    Io { addr: String, detail: String },
    #[error("upsd at {addr} {problem}")]
    Reply { addr: String, problem: ReplyError },
    #[error("UPS {ups} at {addr} reports no ups.status")]
    NoStatus { addr: String, ups: String },
    #[error(
        "upsd at {addr} did not take up TLS (it answered STARTTLS with {answer:?}): power.ups_ca is set, so ebb reads this UPS \
         only over TLS; give upsd a certificate (CERTPATH and CERTIDENT in upsd.conf)"
    )]
    NoTls { addr: String, answer: String },
    #[error("upsd at {addr} presented a certificate ebb does not trust ({detail}): {hint}")]
    Untrusted { addr: String, detail: String, hint: String },
    #[error("the TLS handshake with upsd at {addr} failed: {detail}")]
    Handshake { addr: String, detail: String },
}

/// Why a CA file or a name cannot be used for TLS to upsd: a sentence that
/// follows the setting's name and value.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot be read ({0}): give the PEM file of the CA that signed upsd's certificate")]
    Unreadable(String),
    #[error("is not a PEM file ({0}): give the CA certificate in PEM (-----BEGIN CERTIFICATE-----)")]
    NotPem(String),
    #[error("holds no certificate: give the CA certificate in PEM (-----BEGIN CERTIFICATE-----)")]
    NoCertificate,
    #[error("is larger than {MAX_CA_BYTES} bytes: give the PEM file of the CA that signed upsd's certificate")]
    TooLarge,
    #[error("is not a file: give the PEM file of the CA that signed upsd's certificate")]
    NotAFile,
    #[error("certificate {index} in it cannot be a CA ({detail})")]
    BadCertificate { index: usize, detail: String },
    #[error("is neither a host name nor an IP address: give the name upsd's certificate is issued for")]
    BadName,
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

/// How a reading authenticates upsd: the CA its certificate must chain to
/// and the name the certificate must hold.
#[derive(Clone, Debug)]
pub struct NutTls {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    /// The CA file, named when a certificate is refused.
    ca: PathBuf,
}

impl NutTls {
    /// `ca`: a PEM file with the CA certificate(s) upsd's certificate must
    /// chain to; `name`: the host name or IP address it must be issued for.
    pub fn new(ca: &Path, name: &str) -> Result<NutTls, TlsSetupError> {
        let name = ServerName::try_from(name.to_string()).map_err(|_| TlsSetupError::BadName)?;
        let mut roots = rustls::RootCertStore::empty();
        for (i, cert) in load_ca(ca)?.into_iter().enumerate() {
            roots.add(cert).map_err(|e| TlsSetupError::BadCertificate { index: i + 1, detail: e.to_string() })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(NutTls { config: Arc::new(config), name, ca: ca.to_path_buf() })
    }
}

/// The most bytes a CA file may hold: a whole system bundle of public CAs
/// is about 220 KB. The bound keeps a wrong path (a disk image) from
/// growing ebb's memory.
pub const MAX_CA_BYTES: u64 = 1 << 20;

/// The certificates of a PEM file (other sections, such as keys, skipped).
fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let unreadable = |e: io::Error| TlsSetupError::Unreadable(e.to_string());
    // Looked at before it is opened: opening a FIFO waits for a writer.
    if !std::fs::metadata(path).map_err(unreadable)?.is_file() {
        return Err(TlsSetupError::NotAFile);
    }
    let mut pem = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(MAX_CA_BYTES + 1).read_to_end(&mut pem)).map_err(unreadable)?;
    if pem.len() as u64 > MAX_CA_BYTES {
        return Err(TlsSetupError::TooLarge);
    }
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().map_err(|e| TlsSetupError::NotPem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate);
    }
    Ok(certs)
}

/// What is wrong with an answer, whoever sent it: a sentence that follows
/// "upsd at ADDR".
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ReplyError {
    #[error("knows no UPS named {ups:?}: check the name (`upsc -l HOST` lists the UPSes upsd serves)")]
    UnknownUps { ups: String },
    #[error("refused access (ERR ACCESS-DENIED): allow this host in upsd.conf / upsd.users")]
    AccessDenied,
    #[error("answered ERR {code}")]
    Err { code: String },
    #[error("sent a line ebb cannot read: {line:?}")]
    Malformed { line: String },
    #[error("sent bytes that are not text (byte {byte:#04x} in line {line}): is it upsd that listens there?")]
    Undecodable { byte: u8, line: usize },
    #[error("sent a line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("sent more than {MAX_REPLY_BYTES} bytes in one answer")]
    TooManyBytes,
    #[error("sent more than {MAX_VARS} variables")]
    TooManyVars,
    #[error("stopped before the end of its answer")]
    Unfinished,
}

/// The answer to `LIST VAR <ups>`, parsed as its bytes arrive, within the
/// bounds above. No I/O: the client feeds what it reads; the fuzzer feeds
/// anything.
#[derive(Debug)]
pub struct ListVarReply {
    begin: String,
    end: String,
    ups: String,
    begun: bool,
    /// The line so far, without its newline…
    line: Vec<u8>,
    /// …and how much of it is known to be UTF-8.
    valid: usize,
    lines: usize,
    received: usize,
    var_lines: usize,
    vars: BTreeMap<String, String>,
}

impl ListVarReply {
    pub fn new(ups: &str) -> ListVarReply {
        ListVarReply {
            begin: format!("BEGIN LIST VAR {ups}"),
            end: format!("END LIST VAR {ups}"),
            ups: ups.to_string(),
            begun: false,
            line: Vec::new(),
            valid: 0,
            lines: 0,
            received: 0,
            var_lines: 0,
            vars: BTreeMap::new(),
        }
    }

    /// Takes the next bytes of the answer: the variables once `END LIST VAR`
    /// has arrived (what follows it is not read), None while more is to come.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<Option<BTreeMap<String, String>>, ReplyError> {
        while !bytes.is_empty() {
            let (part, rest, complete) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            self.received += part.len() + usize::from(complete);
            if self.received > MAX_REPLY_BYTES {
                return Err(ReplyError::TooManyBytes);
            }
            if self.line.len() + part.len() > MAX_LINE {
                return Err(ReplyError::LineTooLong);
            }
            self.line.extend_from_slice(part);
            bytes = rest;
            match std::str::from_utf8(&self.line[self.valid..]) {
                Ok(_) => self.valid = self.line.len(),
                // Not text whatever follows: said now, not once the line ends.
                Err(e) if e.error_len().is_some() => {
                    return Err(ReplyError::Undecodable { byte: self.line[self.valid + e.valid_up_to()], line: self.lines + 1 });
                }
                // A character cut by the read: its rest comes with the next bytes.
                Err(e) => self.valid += e.valid_up_to(),
            }
            if complete {
                self.valid = 0;
                let line = std::mem::take(&mut self.line);
                if self.take_line(&line)? {
                    return Ok(Some(std::mem::take(&mut self.vars)));
                }
            }
        }
        Ok(None)
    }

    /// One whole line; true at the end of the list.
    fn take_line(&mut self, raw: &[u8]) -> Result<bool, ReplyError> {
        self.lines += 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw)
            .map_err(|e| ReplyError::Undecodable { byte: raw.get(e.valid_up_to()).copied().unwrap_or_default(), line: self.lines })?;
        let text = line.trim();
        if let Some(code) = text.strip_prefix("ERR ") {
            let code = code.split_whitespace().next().unwrap_or("");
            return Err(match code {
                "UNKNOWN-UPS" => ReplyError::UnknownUps { ups: self.ups.clone() },
                "ACCESS-DENIED" => ReplyError::AccessDenied,
                _ => ReplyError::Err { code: code.to_string() },
            });
        }
        let malformed = || ReplyError::Malformed { line: line.chars().take(200).collect() };
        if !self.begun {
            self.begun = text == self.begin;
            return if self.begun { Ok(false) } else { Err(malformed()) };
        }
        if text == self.end {
            return Ok(true);
        }
        let (name, value) = parse_var(line, &self.ups).ok_or_else(malformed)?;
        self.var_lines += 1;
        if self.var_lines > MAX_VARS {
            return Err(ReplyError::TooManyVars);
        }
        self.vars.insert(name, value);
        Ok(false)
    }
}

/// A whole answer to `LIST VAR <ups>` at once.
pub fn parse_list_var(ups: &str, bytes: &[u8]) -> Result<BTreeMap<String, String>, ReplyError> {
    ListVarReply::new(ups).feed(bytes)?.ok_or(ReplyError::Unfinished)
}

/// Talks to one upsd.
#[derive(Clone, Debug)]
pub struct NutClient {
    addr: String,
    timeout: Duration,
    /// Set: every reading is over TLS, upsd authenticated.
    tls: Option<NutTls>,
    /// A name lookup that outlived its reading. The next reading waits on it
    /// rather than starting another, so a hung resolver holds one thread,
    /// not one more per reading.
    lookup: Arc<Mutex<Option<Lookup>>>,
}

/// Where a name lookup's first address comes.
type Lookup = mpsc::Receiver<std::io::Result<Option<SocketAddr>>>;

impl NutClient {
    /// `addr` is `host:port` (upsd listens on 3493 by default); `timeout`
    /// bounds each reading as a whole.
    pub fn new(addr: impl Into<String>, timeout: Duration) -> NutClient {
        NutClient { addr: addr.into(), timeout, tls: None, lookup: Arc::default() }
    }

    /// Reads over TLS only, upsd authenticated by `tls`.
    pub fn with_tls(self, tls: NutTls) -> NutClient {
        NutClient { tls: Some(tls), ..self }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn tls(&self) -> Option<&NutTls> {
        self.tls.as_ref()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The time left before `deadline`, None once it has passed.
    fn left(deadline: Instant) -> Option<Duration> {
        Some(deadline.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero())
    }

    /// The address to connect to. A host name is looked up on a thread of
    /// its own, as the system resolver cannot be given a deadline.
    fn resolve(&self, deadline: Instant) -> Result<SocketAddr, NutError> {
        if let Ok(a) = self.addr.parse::<SocketAddr>() {
            return Ok(a);
        }
        let fail = |detail: String| NutError::Resolve { addr: self.addr.clone(), detail };
        let pending = self.lookup.lock().unwrap_or_else(PoisonError::into_inner).take();
        let rx = match pending {
            Some(rx) => rx,
            None => {
                let (tx, rx) = mpsc::channel();
                let addr = self.addr.clone();
                std::thread::Builder::new()
                    .name("ebb-ups-lookup".into())
                    .spawn(move || {
                        let _ = tx.send(addr.to_socket_addrs().map(|mut a| a.next()));
                    })
                    .map_err(|e| fail(format!("the lookup could not start: {e}")))?;
                rx
            }
        };
        let late = || fail(format!("the lookup did not finish within {:?}", self.timeout));
        let left = NutClient::left(deadline).ok_or_else(late)?;
        match rx.recv_timeout(left) {
            Ok(Ok(Some(a))) => Ok(a),
            Ok(Ok(None)) => Err(fail("the name resolves to no address".into())),
            Ok(Err(e)) => Err(fail(e.to_string())),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                *self.lookup.lock().unwrap_or_else(PoisonError::into_inner) = Some(rx);
                Err(late())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(fail("the lookup ended without an answer".into())),
        }
    }

    fn connect(&self, deadline: Instant) -> Result<TcpStream, NutError> {
        let sock = self.resolve(deadline)?;
        let fail = |detail: String| NutError::Connect { addr: self.addr.clone(), detail };
        let left = NutClient::left(deadline).ok_or_else(|| fail(format!("no time was left of {:?} after the name lookup", self.timeout)))?;
        TcpStream::connect_timeout(&sock, left).map_err(|e| fail(e.to_string()))
    }

    /// Every variable of `ups` (`LIST VAR`), read within the client's timeout.
    pub fn list_vars(&self, ups: &str) -> Result<BTreeMap<String, String>, NutError> {
        // Far beyond any sensible timeout; it keeps `Instant + timeout` from overflowing.
        let deadline = Instant::now() + self.timeout.min(Duration::from_secs(86_400));
        let tcp = self.connect(deadline)?;
        let bounded = Bounded { tcp, deadline, received: 0 };
        let mut s = match &self.tls {
            None => Transport::Plain(bounded),
            Some(tls) => Transport::Tls(Box::new(self.start_tls(bounded, tls)?)),
        };
        s.write_all(format!("LIST VAR {ups}\n").as_bytes()).map_err(|e| self.failed(e, s.received()))?;
        let mut reply = ListVarReply::new(ups);
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Err(NutError::Closed { addr: self.addr.clone() }),
                Ok(n) => {
                    let done = reply.feed(&buf[..n]).map_err(|problem| NutError::Reply { addr: self.addr.clone(), problem })?;
                    if let Some(vars) = done {
                        let _ = s.write_all(b"LOGOUT\n");
                        return Ok(vars);
                    }
                }
                Err(e) if retry(&e, deadline) => {}
                Err(e) => return Err(self.failed(e, s.received())),
            }
        }
    }

    /// What an I/O error that ends the reading means, once `received` bytes have come.
    fn failed(&self, e: io::Error, received: usize) -> NutError {
        let addr = self.addr.clone();
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut if received == 0 => NutError::Silent { addr, timeout: self.timeout },
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => NutError::Unfinished { addr, timeout: self.timeout },
            // A TLS connection closed without its close_notify.
            io::ErrorKind::UnexpectedEof => NutError::Closed { addr },
            _ => NutError::Io { addr, detail: e.to_string() },
        }
    }

    /// `STARTTLS`, then the handshake: the connection over TLS once upsd
    /// has shown a certificate that `tls` trusts.
    fn start_tls(&self, mut s: Bounded, tls: &NutTls) -> Result<StreamOwned<ClientConnection, Bounded>, NutError> {
        s.write_all(b"STARTTLS\n").map_err(|e| self.failed(e, s.received))?;
        let answer = self.answer_line(&mut s)?;
        if answer != "OK STARTTLS" {
            return Err(NutError::NoTls { addr: self.addr.clone(), answer });
        }
        let handshake = |detail: String| NutError::Handshake { addr: self.addr.clone(), detail };
        let mut conn = ClientConnection::new(tls.config.clone(), tls.name.clone()).map_err(|e| handshake(e.to_string()))?;
        while conn.is_handshaking() {
            match conn.complete_io(&mut s) {
                Ok(_) => {}
                Err(e) if retry(&e, s.deadline) => {}
                Err(e) => {
                    return Err(match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                        Some(rustls::Error::InvalidCertificate(c)) => self.untrusted(c, tls),
                        Some(other) => handshake(other.to_string()),
                        None => match e.kind() {
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => handshake(format!("it did not finish within {:?}", self.timeout)),
                            io::ErrorKind::UnexpectedEof => handshake("upsd closed the connection".into()),
                            _ => handshake(e.to_string()),
                        },
                    });
                }
            }
        }
        Ok(StreamOwned::new(conn, s))
    }

    /// The one-line answer to STARTTLS. Read a byte at a time: the TLS
    /// handshake follows on the same connection, and no byte of it may be
    /// taken for the answer.
    fn answer_line(&self, s: &mut Bounded) -> Result<String, NutError> {
        let mut line = Vec::new();
        let mut byte = [0u8];
        loop {
            match s.read(&mut byte) {
                Ok(0) => return Err(NutError::Closed { addr: self.addr.clone() }),
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) if line.len() == MAX_LINE => {
                    return Err(NutError::Reply { addr: self.addr.clone(), problem: ReplyError::LineTooLong });
                }
                Ok(_) => line.push(byte[0]),
                Err(e) if retry(&e, s.deadline) => {}
                Err(e) => return Err(self.failed(e, s.received)),
            }
        }
        let line = String::from_utf8_lossy(&line);
        Ok(line.trim_end_matches('\r').chars().take(200).collect())
    }

    /// Why upsd's certificate was refused, and what to do about it.
    fn untrusted(&self, e: &CertificateError, tls: &NutTls) -> NutError {
        let name = tls.name.to_str();
        let ca = tls.ca.display();
        let hint = match e {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                format!("it is not signed by a CA in power.ups_ca ({ca}): put the CA that signed upsd's certificate there")
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                "it is not issued for {name}: set power.ups_tls_name to a name it is issued for, or give upsd a certificate for {name}"
            ),
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => "renew upsd's certificate, or check this host's clock".into(),
            _ => format!("check upsd's certificate against power.ups_ca ({ca})"),
        };
        NutError::Untrusted { addr: self.addr.clone(), detail: e.to_string(), hint }
    }

    /// The UPS's state, from its variables.
    pub fn read(&self, ups: &str) -> Result<UpsReading, NutError> {
        let vars = self.list_vars(ups)?;
        UpsReading::from_vars(&vars).ok_or_else(|| NutError::NoStatus { addr: self.addr.clone(), ups: ups.into() })
    }
}

/// Whether a read or write that failed may be tried again: it was cut
/// short, or hit a socket timeout before the reading's deadline.
fn retry(e: &io::Error, deadline: Instant) -> bool {
    match e.kind() {
        io::ErrorKind::Interrupted => true,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => NutClient::left(deadline).is_some(),
        _ => false,
    }
}

/// The connection to upsd, each read and write bounded by what is left of
/// the reading's deadline (so is the TLS handshake, which runs over it),
/// counting the bytes that came.
struct Bounded {
    tcp: TcpStream,
    deadline: Instant,
    received: usize,
}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = NutClient::left(self.deadline).ok_or(io::ErrorKind::TimedOut)?;
        self.tcp.set_read_timeout(Some(left))?;
        let n = self.tcp.read(buf)?;
        self.received += n;
        Ok(n)
    }
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = NutClient::left(self.deadline).ok_or(io::ErrorKind::TimedOut)?;
        self.tcp.set_write_timeout(Some(left))?;
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// A reading's connection: plain, or TLS after STARTTLS.
enum Transport {
    Plain(Bounded),
    Tls(Box<StreamOwned<ClientConnection, Bounded>>),
}

impl Transport {
    /// Bytes that came over the wire, TLS records included.
    fn received(&self) -> usize {
        match self {
            Transport::Plain(s) => s.received,
            Transport::Tls(s) => s.sock.received,
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
        }
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

/// The fuzz target's checks (`fuzz/fuzz_targets/nut_reply.rs`), here so the
/// inputs it found run as unit tests too: `data` is an answer from upsd,
/// parsed for the UPS `test`.
#[doc(hidden)]
pub fn fuzz_reply(data: &[u8]) {
    let whole = parse_list_var("test", data);
    if let Ok(vars) = &whole {
        assert!(vars.len() <= MAX_VARS, "{} variables", vars.len());
        assert!(vars.keys().all(|k| !k.is_empty()));
    }
    // The same bytes cut into reads of any size parse the same.
    let cut = data.len() % 7 + 1;
    let mut reply = ListVarReply::new("test");
    let chunked = data
        .chunks(cut)
        .find_map(|c| reply.feed(c).transpose())
        .unwrap_or(Err(ReplyError::Unfinished));
    assert_eq!(whole.as_ref().ok(), chunked.as_ref().ok(), "whole: {whole:?}, in reads of {cut}: {chunked:?}");
    // The same bytes sent without end: the parser gives up within its byte bound.
    if data.is_empty() {
        return;
    }
    let mut reply = ListVarReply::new("test");
    let mut fed = 0;
    while reply.feed(data) == Ok(None) {
        fed += data.len();
        assert!(fed <= MAX_REPLY_BYTES, "took {fed} bytes of an endless answer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the dummy-ups driver's upsd (NUT 2.8.0) answered here.
    const REAL: &[u8] = include_bytes!("../../../fuzz/seeds/nut_reply/dummy-ups.txt");

    #[test]
    fn a_real_answer_parses_in_one_read_or_byte_by_byte() {
        let vars = parse_list_var("test", REAL).unwrap();
        assert_eq!((vars.len(), vars["ups.status"].as_str(), vars["driver.parameter.port"].as_str()), (17, "OL", "/tmp/nutx/ups.dev"));
        let mut reply = ListVarReply::new("test");
        let (last, first) = REAL.split_last().unwrap();
        assert!(first.iter().all(|b| reply.feed(&[*b]) == Ok(None)));
        assert_eq!(reply.feed(&[*last]), Ok(Some(vars)));
        fuzz_reply(REAL);
    }

    fn list(lines: &[String]) -> Vec<u8> {
        let mut out = b"BEGIN LIST VAR test\n".to_vec();
        for l in lines {
            out.extend_from_slice(l.as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(b"END LIST VAR test\n");
        out
    }

    #[test]
    fn each_bound_holds_at_its_limit_and_fails_past_it() {
        let value = |len: usize| format!("VAR test v \"{}\"", "x".repeat(len - 13));
        assert!(parse_list_var("test", &list(&[value(MAX_LINE)])).is_ok());
        assert_eq!(parse_list_var("test", &list(&[value(MAX_LINE + 1)])), Err(ReplyError::LineTooLong));
        let vars = |n: usize| (0..n).map(|i| format!("VAR test v{i} \"1\"")).collect::<Vec<_>>();
        assert_eq!(parse_list_var("test", &list(&vars(MAX_VARS))).unwrap().len(), MAX_VARS);
        assert_eq!(parse_list_var("test", &list(&vars(MAX_VARS + 1))), Err(ReplyError::TooManyVars));
        // Long lines under every other bound: the answer's own bound.
        let long = vec![value(MAX_LINE); MAX_REPLY_BYTES / MAX_LINE + 1];
        assert_eq!(parse_list_var("test", &list(&long)), Err(ReplyError::TooManyBytes));
        let e = NutError::Reply { addr: "h:1".into(), problem: ReplyError::TooManyVars };
        assert_eq!(e.to_string(), "upsd at h:1 sent more than 1024 variables");
    }

    #[test]
    fn errors_garbage_and_a_cut_answer_are_told_apart() {
        let p = |bytes: &[u8]| parse_list_var("test", bytes);
        assert_eq!(p(b"ERR UNKNOWN-UPS\n"), Err(ReplyError::UnknownUps { ups: "test".into() }));
        assert_eq!(p(b"ERR ACCESS-DENIED\n"), Err(ReplyError::AccessDenied));
        assert_eq!(p(b"BEGIN LIST VAR test\r\nERR DATA-STALE\r\n"), Err(ReplyError::Err { code: "DATA-STALE".into() }));
        assert_eq!(p(b"\x16\x03\x01\xff\xfe\n"), Err(ReplyError::Undecodable { byte: 0xff, line: 1 }));
        assert_eq!(p(b"BEGIN LIST VAR test\nVAR test ups.status \"O\xe9L\"\n"), Err(ReplyError::Undecodable { byte: 0xe9, line: 2 }));
        // Bytes that are not text are named as soon as they come, not when (or if) their line ends…
        assert_eq!(ListVarReply::new("test").feed(b"\x16\x03\x01\xfc"), Err(ReplyError::Undecodable { byte: 0xfc, line: 1 }));
        // …while a character cut between two reads is text.
        let mut r = ListVarReply::new("test");
        assert_eq!(r.feed(b"BEGIN LIST VAR test\nVAR test ups.mfr \"\xc3"), Ok(None));
        assert_eq!(r.feed(b"\xa9\"\nEND LIST VAR test\n").unwrap().unwrap()["ups.mfr"], "\u{e9}");
        assert!(matches!(p(b"hello\n"), Err(ReplyError::Malformed { line }) if line == "hello"));
        assert_eq!(p(b"BEGIN LIST VAR test\nVAR test ups.status \"OL\"\n"), Err(ReplyError::Unfinished));
        let e = NutError::Reply { addr: "h:1".into(), problem: ReplyError::Undecodable { byte: 0xff, line: 1 } };
        assert!(e.to_string().starts_with("upsd at h:1 sent bytes that are not text (byte 0xff in line 1)"), "{e}");
    }

    /// Every input of the fuzz target `target`: its seeds (`fuzz/seeds/`) and
    /// the inputs it found, kept in this crate's `fuzz-regressions/` once fixed.
    fn fuzz_inputs(target: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let seeds = std::fs::read_dir(crate_dir.join("../../fuzz/seeds").join(target)).expect("the target's seeds");
        let found = std::fs::read_dir(crate_dir.join("fuzz-regressions").join(target)).into_iter().flatten();
        seeds.chain(found).map(|e| e.unwrap().path()).map(|p| (p.clone(), std::fs::read(p).unwrap())).collect()
    }

    #[test]
    fn fuzz_inputs_keep_their_properties() {
        for (path, data) in fuzz_inputs("nut_reply") {
            println!("{}", path.display());
            fuzz_reply(&data);
        }
    }

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
