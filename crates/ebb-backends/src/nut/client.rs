//! One reading from upsd: the connection (TLS after STARTTLS when a CA is
//! given), each read and write bounded by the reading's one deadline.

use rustls::{CertificateError, ClientConnection, StreamOwned};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{ListVarReply, NutError, NutTls, ReplyError, UpsReading, MAX_LINE};

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
