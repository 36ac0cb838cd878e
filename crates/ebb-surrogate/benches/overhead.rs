//! What the surrogate costs an awake VM's clients, and what it costs the host
//! to stand in for sleeping VMs. Loopback only, std `Instant`, ~30 s.
//!
//! Targets (SPEC §2: the wake path and the awake path must add almost
//! nothing): bulk throughput through the surrogate ≥ 90 % of direct; p99
//! added latency per small round trip < 1 ms; < 10 MiB of RSS for 100
//! sleeping VMs' services.

use ebb_core::VmId;
use ebb_surrogate::{CannedReply, Limits, ServiceSpec, Surrogate, VmPower};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BULK_BYTES: usize = 1 << 30;
const BULK_RUNS: usize = 5;
const ROUND_TRIPS: usize = 20_000;
const CONNECTS: usize = 2_000;
const VMS: usize = 100;
const HELD: usize = 2_000;

/// A loopback port nobody listens on, never the same twice in this run.
fn free_addr() -> SocketAddr {
    static SEEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let a = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut seen = SEEN.lock().unwrap();
        if !seen.contains(&a.port()) {
            seen.push(a.port());
            return a;
        }
    }
}

/// This process's user + system CPU time, in seconds (clock ticks of 10 ms).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_comm.split(' ').collect();
    // Fields 14 and 15 of stat(5); after the command name they are 11 and 12.
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Reads everything, then answers one byte: the sender's clock stops when
/// the last byte has crossed.
async fn sink(addr: SocketAddr) {
    let l = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    let _ = n;
                }
                let _ = s.write_all(b"k").await;
            });
        }
    });
}

async fn echo(addr: SocketAddr) {
    let l = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

/// Answers each request with a fixed small response, then closes.
async fn http(addr: SocketAddr) {
    let l = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n @ 1..) => got.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
}

async fn bulk(addr: SocketAddr) -> f64 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let chunk = vec![7u8; 256 * 1024];
    let t = Instant::now();
    let mut sent = 0;
    while sent < BULK_BYTES {
        s.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
    s.shutdown().await.unwrap();
    let mut k = [0u8; 1];
    s.read_exact(&mut k).await.unwrap();
    BULK_BYTES as f64 / t.elapsed().as_secs_f64() / (1u64 << 30) as f64
}

async fn round_trips(addr: SocketAddr) -> Vec<Duration> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let msg = [1u8; 64];
    let mut back = [0u8; 64];
    let mut lat = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let t = Instant::now();
        s.write_all(&msg).await.unwrap();
        s.read_exact(&mut back).await.unwrap();
        lat.push(t.elapsed());
    }
    lat
}

async fn connects(addr: SocketAddr) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(CONNECTS);
    for _ in 0..CONNECTS {
        let t = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
            .await
            .unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.unwrap();
        assert!(resp.ends_with(b"ok"));
        lat.push(t.elapsed());
    }
    lat
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "meets target"
    } else {
        "MISSES target"
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let (mut sur, _events) = Surrogate::new(Limits::default());
    println!(
        "ebb-surrogate overhead ({} CPUs, loopback)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // 1. Bulk throughput, awake.
    let (sink_addr, sink_via) = (free_addr(), free_addr());
    sink(sink_addr).await;
    sur.add_vm(
        VmId::new("bulk"),
        vec![ServiceSpec::tcp("sink", sink_via, sink_addr)],
        VmPower::Awake,
    )
    .unwrap();
    let (mut direct, mut via) = (Vec::new(), Vec::new());
    let (mut cpu_direct, mut cpu_via) = (0.0, 0.0);
    for _ in 0..BULK_RUNS {
        let c = cpu_secs();
        direct.push(bulk(sink_addr).await);
        let m = cpu_secs();
        via.push(bulk(sink_via).await);
        cpu_direct += m - c;
        cpu_via += cpu_secs() - m;
    }
    direct.sort_by(f64::total_cmp);
    via.sort_by(f64::total_cmp);
    let (d, v) = (direct[BULK_RUNS / 2], via[BULK_RUNS / 2]);
    println!(
        "bulk transfer (median of {BULK_RUNS} × 1 GiB): direct {d:.2} GiB/s, through surrogate {v:.2} GiB/s = {:.0} % of direct (target ≥ 90 %: {})",
        100.0 * v / d,
        verdict(v / d >= 0.9)
    );
    println!(
        "  CPU per GiB (client + sink + surrogate, whole process): direct {:.2} s, through surrogate {:.2} s: the splice costs {:.2} CPU-s per GiB",
        cpu_direct / BULK_RUNS as f64,
        cpu_via / BULK_RUNS as f64,
        (cpu_via - cpu_direct) / BULK_RUNS as f64
    );

    // 2a. Small round trips on one connection, awake.
    let (echo_addr, echo_via) = (free_addr(), free_addr());
    echo(echo_addr).await;
    sur.add_vm(
        VmId::new("echo"),
        vec![ServiceSpec::tcp("echo", echo_via, echo_addr)],
        VmPower::Awake,
    )
    .unwrap();
    let _ = round_trips(echo_addr).await; // warm up
    let d = round_trips(echo_addr).await;
    let v = round_trips(echo_via).await;
    report_latency(&format!("64-byte round trips ({ROUND_TRIPS}, one connection)"), d, v);

    // 2b. Connection per request (accept + backend connect on every request).
    let (http_addr, http_via) = (free_addr(), free_addr());
    http(http_addr).await;
    sur.add_vm(
        VmId::new("http"),
        vec![ServiceSpec::http("web", http_via, http_addr)],
        VmPower::Awake,
    )
    .unwrap();
    let _ = connects(http_addr).await;
    let d = connects(http_addr).await;
    let v = connects(http_via).await;
    report_latency(&format!("HTTP request per connection ({CONNECTS})"), d, v);
    drop(sur);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 3. Memory for 100 sleeping VMs, three services each.
    let (mut sur, _events) = Surrogate::new(Limits::default());
    let before = rss_kib();
    for i in 0..VMS {
        let health = CannedReply {
            method: "GET".into(),
            path: "/healthz".into(),
            status: 200,
            content_type: "text/plain".into(),
            body: "ok".into(),
        };
        let services = vec![
            ServiceSpec {
                canned: vec![health],
                ..ServiceSpec::http("web", free_addr(), free_addr())
            },
            ServiceSpec::tcp("ssh", free_addr(), free_addr()),
            ServiceSpec::udp("dns", free_addr(), free_addr()),
        ];
        sur.add_vm(VmId::new(format!("vm{i}")), services, VmPower::Asleep)
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rss_kib();
    let mib = (after.saturating_sub(before)) as f64 / 1024.0;
    println!(
        "RSS for {VMS} sleeping VMs × 3 services (http+canned, tcp, udp): +{mib:.2} MiB (target < 10 MiB: {})",
        verdict(mib < 10.0)
    );

    // 3b. Memory per held connection while a VM wakes (informational).
    let held_addr = free_addr();
    sur.add_vm(
        VmId::new("held"),
        vec![ServiceSpec::http("web", held_addr, free_addr())],
        VmPower::Waking,
    )
    .unwrap();
    let before = rss_kib();
    let mut clients = Vec::with_capacity(HELD);
    for i in 0..HELD {
        let mut s = TcpStream::connect(held_addr).await.unwrap();
        s.write_all(
            format!("GET /item/{i} HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        clients.push(s);
    }
    while sur.stats(&VmId::new("held")).unwrap().held_connections < HELD {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = rss_kib();
    println!(
        "RSS for {HELD} held HTTP connections (client sockets included): +{:.2} MiB, {:.1} KiB each",
        (after.saturating_sub(before)) as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / HELD as f64
    );
}

/// Prints p50/p99 direct and through the surrogate, and what the surrogate adds.
fn report_latency(label: &str, mut d: Vec<Duration>, mut v: Vec<Duration>) {
    let (d50, d99, v50, v99) = (pct(&mut d, 0.5), pct(&mut d, 0.99), pct(&mut v, 0.5), pct(&mut v, 0.99));
    println!(
        "{label}: direct p50 {:.0} µs p99 {:.0} µs; through surrogate p50 {:.0} µs p99 {:.0} µs; added p50 {:.0} µs p99 {:.0} µs (target p99 added < 1000 µs: {})",
        us(d50), us(d99), us(v50), us(v99), us(v50.saturating_sub(d50)), us(v99.saturating_sub(d99)),
        verdict(v99.saturating_sub(d99) < Duration::from_millis(1))
    );
}
