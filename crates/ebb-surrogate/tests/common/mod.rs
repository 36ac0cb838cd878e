//! Test fixtures on real loopback sockets: a tiny HTTP/1.1 backend that
//! stands in for the VM's service (started late to mimic a wake), a raw echo
//! backend, a client, and a driver playing the agent.
#![allow(dead_code)]

use ebb_core::VmId;
use ebb_surrogate::{Surrogate, SurrogateEvent, VmPower};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Every test body runs under this bound.
pub async fn bounded<F: Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test exceeded its time bound")
}

/// Ports handed out in this test binary: two `free_addr` calls never return
/// the same port, even though each probe socket is closed again.
static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

fn unique(probe: impl Fn() -> SocketAddr) -> SocketAddr {
    loop {
        let a = probe();
        let mut seen = HANDED_OUT.lock().unwrap();
        if !seen.contains(&a.port()) {
            seen.push(a.port());
            return a;
        }
    }
}

/// A loopback TCP address nobody listens on right now.
pub fn free_addr() -> SocketAddr {
    unique(|| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    })
}

/// A loopback UDP address nobody is bound to right now.
pub fn free_udp_addr() -> SocketAddr {
    unique(|| {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    })
}

fn listen(addr: SocketAddr) -> TcpListener {
    let s = TcpSocket::new_v4().unwrap();
    s.set_reuseaddr(true).unwrap();
    s.bind(addr).unwrap();
    s.listen(1024).unwrap()
}

/// The VM's HTTP service: answers each request `200` with a body naming
/// itself, the method and the path, then closes.
pub struct Backend {
    pub requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Backend {
    pub fn start(addr: SocketAddr, name: &str) -> Backend {
        Backend::start_counting(addr, name, Arc::new(AtomicUsize::new(0)))
    }

    pub fn start_counting(addr: SocketAddr, name: &str, requests: Arc<AtomicUsize>) -> Backend {
        let l = listen(addr);
        let name = name.to_string();
        let count = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                tokio::spawn(answer_one(s, name.clone(), count.clone()));
            }
        });
        Backend { requests, task }
    }

    /// What a QEMU host forward does to a guest that cannot keep up: every
    /// other connection is accepted and then dropped unread; the rest are
    /// answered as `start` does. `open_max` records the most connections
    /// open at once.
    pub fn start_flaky(addr: SocketAddr, name: &str, open_max: Arc<AtomicUsize>) -> Backend {
        let l = listen(addr);
        let name = name.to_string();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let open = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            for accepted in 0u64.. {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let now_open = open.fetch_add(1, Ordering::SeqCst) + 1;
                open_max.fetch_max(now_open, Ordering::SeqCst);
                let (name, count, open) = (name.clone(), count.clone(), open.clone());
                tokio::spawn(async move {
                    if accepted % 2 == 1 {
                        tokio::time::sleep(Duration::from_millis(15)).await;
                        drop(s);
                    } else {
                        answer_one(s, name, count).await;
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Backend { requests, task }
    }

    /// A service that answers each request after `delay`, many at once;
    /// `open_max` records the most connections open at once.
    pub fn start_slow(addr: SocketAddr, name: &str, delay: Duration, open_max: Arc<AtomicUsize>) -> Backend {
        let l = listen(addr);
        let name = name.to_string();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let open = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let now_open = open.fetch_add(1, Ordering::SeqCst) + 1;
                open_max.fetch_max(now_open, Ordering::SeqCst);
                let (name, count, open) = (name.clone(), count.clone(), open.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    answer_one(s, name, count).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Backend { requests, task }
    }

    /// What a guest's full listen backlog does behind QEMU's user-mode
    /// forward: the first `stalled` requests wait until `release` says
    /// true; the rest are answered at once, as `start` does.
    pub fn start_stalling(addr: SocketAddr, name: &str, stalled: usize, release: tokio::sync::watch::Receiver<bool>) -> Backend {
        let l = listen(addr);
        let name = name.to_string();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let arrived = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let (name, count, arrived, mut release) = (name.clone(), count.clone(), arrived.clone(), release.clone());
                tokio::spawn(async move {
                    // The prober's connection closes without a request.
                    let mut one = [0u8; 1];
                    if !matches!(s.peek(&mut one).await, Ok(1..)) {
                        return;
                    }
                    if arrived.fetch_add(1, Ordering::SeqCst) < stalled {
                        let _ = release.wait_for(|go| *go).await;
                    }
                    answer_one(s, name, count).await;
                });
            }
        });
        Backend { requests, task }
    }

    /// A service that reads each request head (counted) and never answers
    /// nor closes.
    pub fn start_silent(addr: SocketAddr) -> Backend {
        let l = listen(addr);
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let task = tokio::spawn(async move {
            let mut kept = Vec::new();
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    continue;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                kept.push(s);
            }
        });
        Backend { requests, task }
    }

    /// A raw TCP echo service.
    pub fn start_echo(addr: SocketAddr) -> Backend {
        let l = listen(addr);
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Backend { requests, task }
    }

    /// What a QEMU user-network forward does while nothing in the guest
    /// listens: accepts, then closes.
    pub fn start_closing(addr: SocketAddr) -> Backend {
        let l = listen(addr);
        let requests = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                drop(s);
            }
        });
        Backend { requests, task }
    }

    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request head and answers `200` with a body naming the backend,
/// the method and the path, then closes.
async fn answer_one(mut s: TcpStream, name: String, count: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    count.fetch_add(1, Ordering::SeqCst);
    let line = String::from_utf8_lossy(&buf);
    let mut parts = line.split(' ');
    let (m, p) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let body = format!("{name} {m} {p}");
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// One HTTP/1.1 request; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await?;
    read_response(&mut s).await
}

pub async fn read_response(s: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// What the driver does when the surrogate asks for a wake.
#[derive(Clone)]
pub enum Wake {
    /// Start the HTTP backend after `delay`, then set `Awake`.
    Http {
        addr: SocketAddr,
        name: String,
        delay: Duration,
    },
    /// Start an echo backend after `delay`, then set `Awake`.
    Echo { addr: SocketAddr, delay: Duration },
    /// Set `Awake` after `delay` without any backend.
    AwakeOnly { delay: Duration },
    /// Set `WakeFailed(reason)` after `delay`.
    Fail { reason: String, delay: Duration },
    /// Do nothing.
    Never,
}

/// The agent's part: records events, and on `WakeNeeded` plays `Wake`.
pub struct Driver {
    pub surrogate: Arc<Mutex<Surrogate>>,
    pub events: Arc<Mutex<Vec<SurrogateEvent>>>,
    /// The client connections opened and closed, apart from the other
    /// events: they come with every spliced or held client.
    pub clients: Arc<Mutex<Vec<SurrogateEvent>>>,
    pub backend: Arc<Mutex<Option<Backend>>>,
    pub backend_requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Driver {
    pub fn spawn(
        surrogate: Surrogate,
        mut rx: mpsc::Receiver<SurrogateEvent>,
        vm: VmId,
        wake: Wake,
    ) -> Driver {
        let surrogate = Arc::new(Mutex::new(surrogate));
        let events = Arc::new(Mutex::new(Vec::new()));
        let clients = Arc::new(Mutex::new(Vec::new()));
        let backend = Arc::new(Mutex::new(None));
        let backend_requests = Arc::new(AtomicUsize::new(0));
        let cl = clients.clone();
        let (s, e, b, c) = (
            surrogate.clone(),
            events.clone(),
            backend.clone(),
            backend_requests.clone(),
        );
        let task = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if matches!(ev, SurrogateEvent::ClientOpened { .. } | SurrogateEvent::ClientClosed { .. }) {
                    cl.lock().unwrap().push(ev);
                    continue;
                }
                let wake_needed = matches!(ev, SurrogateEvent::WakeNeeded { .. });
                e.lock().unwrap().push(ev);
                if !wake_needed {
                    continue;
                }
                s.lock().unwrap().set_state(&vm, VmPower::Waking).unwrap();
                let (s, b, c, vm, wake) =
                    (s.clone(), b.clone(), c.clone(), vm.clone(), wake.clone());
                tokio::spawn(async move {
                    match wake {
                        Wake::Http { addr, name, delay } => {
                            tokio::time::sleep(delay).await;
                            *b.lock().unwrap() = Some(Backend::start_counting(addr, &name, c));
                            s.lock().unwrap().set_state(&vm, VmPower::Awake).unwrap();
                        }
                        Wake::Echo { addr, delay } => {
                            tokio::time::sleep(delay).await;
                            *b.lock().unwrap() = Some(Backend::start_echo(addr));
                            s.lock().unwrap().set_state(&vm, VmPower::Awake).unwrap();
                        }
                        Wake::AwakeOnly { delay } => {
                            tokio::time::sleep(delay).await;
                            s.lock().unwrap().set_state(&vm, VmPower::Awake).unwrap();
                        }
                        Wake::Fail { reason, delay } => {
                            tokio::time::sleep(delay).await;
                            s.lock()
                                .unwrap()
                                .set_state(&vm, VmPower::WakeFailed(reason))
                                .unwrap();
                        }
                        Wake::Never => {}
                    }
                });
            }
        });
        Driver {
            surrogate,
            events,
            clients,
            backend,
            backend_requests,
            task,
        }
    }

    pub fn wake_requests(&self) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, SurrogateEvent::WakeNeeded { .. }))
            .count()
    }

    pub fn refusals(&self) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, SurrogateEvent::Refused { .. }))
            .count()
    }

    pub fn stats(&self, vm: &VmId) -> ebb_surrogate::TrafficStats {
        self.surrogate.lock().unwrap().stats(vm).unwrap()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
