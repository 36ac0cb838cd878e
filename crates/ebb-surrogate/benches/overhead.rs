//! What the surrogate costs an awake VM's clients, on both awake paths (the
//! surrogate's own splice, and the kernel path's nftables DNAT, which needs
//! root and nft), and what it costs the host to stand in for sleeping VMs.
//! Loopback only, std `Instant`, ~40 s.
//!
//! Targets (SPEC §2: the wake path and the awake path must add almost
//! nothing): bulk throughput and the rate of 50 concurrent small requests
//! ≥ 90 % of direct; p99 added latency per small round trip < 1 ms;
//! < 10 MiB of RSS for 100 sleeping VMs' services.

use ebb_core::VmId;
use ebb_surrogate::{AwakePath, CannedReply, Limits, ServiceSpec, Surrogate, VmPower};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BULK_BYTES: usize = 1 << 30;
const BULK_RUNS: usize = 5;
const ROUND_TRIPS: usize = 20_000;
const CONNECTS: usize = 2_000;
/// Concurrent clients, each making requests one after another on a new
/// connection each, and the requests in all.
const CONCURRENT: usize = 50;
const CONCURRENT_REQUESTS: usize = 4_000;
/// Rounds of (direct, splice, kernel), alternating so drift and the other
/// load on the host hit all three alike.
const CONCURRENT_ROUNDS: usize = 3;
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

/// `CONCURRENT` clients making `CONCURRENT_REQUESTS` requests in all:
/// the time it took, and each request's latency.
async fn concurrent(addr: SocketAddr) -> (Duration, Vec<Duration>) {
    let t = Instant::now();
    let clients: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            tokio::spawn(async move {
                let mut lat = Vec::new();
                for _ in 0..CONCURRENT_REQUESTS / CONCURRENT {
                    let t = Instant::now();
                    let mut s = TcpStream::connect(addr).await.unwrap();
                    s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n").await.unwrap();
                    let mut resp = Vec::new();
                    s.read_to_end(&mut resp).await.unwrap();
                    assert!(resp.ends_with(b"ok"));
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(CONCURRENT_REQUESTS);
    for c in clients {
        lat.extend(c.await.unwrap());
    }
    (t.elapsed(), lat)
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
    // The same services through a second surrogate on the kernel path.
    let (mut kern, _kevents) = Surrogate::new(Limits::default());
    let owner = format!("ebb-surrogate-bench-{}", std::process::id());
    if let Err(e) = kern.set_awake_path(AwakePath::Kernel, "nft", &owner) {
        println!("the kernel path cannot be measured here: {e}");
        return;
    }
    println!(
        "ebb-surrogate overhead ({} CPUs, loopback); each figure beside direct, same run",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // Each path has a backend of its own: one that closes first keeps its
    // side of every connection in TIME_WAIT, and a client on another path
    // reusing that port pair (which it cannot see) would stall on a SYN
    // retransmit, an artefact of one host playing every part.
    let mut add = |name: &str, http: bool, backends: [SocketAddr; 2]| {
        let (via, kvia) = (free_addr(), free_addr());
        let spec = |listen, backend| ServiceSpec { http, ..ServiceSpec::tcp(name, listen, backend) };
        sur.add_vm(VmId::new(name), vec![spec(via, backends[0])], VmPower::Awake).unwrap();
        kern.add_vm(VmId::new(name), vec![spec(kvia, backends[1])], VmPower::Awake).unwrap();
        (via, kvia)
    };
    let (sink_addr, echo_addr) = (free_addr(), free_addr());
    let http_addrs = [free_addr(), free_addr(), free_addr()];
    sink(sink_addr).await;
    echo(echo_addr).await;
    for a in http_addrs {
        http(a).await;
    }
    let (sink_via, sink_kernel) = add("bulk", false, [sink_addr; 2]);
    let (echo_via, echo_kernel) = add("echo", false, [echo_addr; 2]);
    let (http_via, http_kernel) = add("http", true, [http_addrs[1], http_addrs[2]]);
    let http_addr = http_addrs[0];
    // The kernel takes over once each backend answered a probe.
    for vm in ["bulk", "echo", "http"] {
        while !kern.awake_routes(&VmId::new(vm)).iter().all(|r| r.active) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // 1. Bulk throughput, awake, alternating so drift hits all three alike.
    let mut runs: [Vec<f64>; 3] = Default::default();
    let mut cpu = [0.0; 3];
    for _ in 0..BULK_RUNS {
        for (i, addr) in [sink_addr, sink_via, sink_kernel].into_iter().enumerate() {
            let c = cpu_secs();
            runs[i].push(bulk(addr).await);
            cpu[i] += cpu_secs() - c;
        }
    }
    let [d, v, k] = runs.map(|mut r| {
        r.sort_by(f64::total_cmp);
        r[BULK_RUNS / 2]
    });
    println!("bulk transfer (median of {BULK_RUNS} × 1 GiB), target ≥ 90 % of direct:");
    println!("  direct {d:.2} GiB/s");
    println!("  splice {v:.2} GiB/s = {:.0} % ({})", 100.0 * v / d, verdict(v / d >= 0.9));
    println!("  kernel {k:.2} GiB/s = {:.0} % ({})", 100.0 * k / d, verdict(k / d >= 0.9));
    let per = |c: f64| c / BULK_RUNS as f64;
    println!(
        "  CPU per GiB (client + sink + surrogate, whole process): direct {:.2} s, splice {:.2} s, kernel {:.2} s",
        per(cpu[0]),
        per(cpu[1]),
        per(cpu[2])
    );

    // 2a. Small round trips on one connection, awake.
    let _ = round_trips(echo_addr).await; // warm up
    let d = round_trips(echo_addr).await;
    let v = round_trips(echo_via).await;
    let k = round_trips(echo_kernel).await;
    report_latency(&format!("64-byte round trips ({ROUND_TRIPS}, one connection)"), d, v, k);

    // 2b. Connection per request (accept + backend connect on every request).
    let _ = connects(http_addr).await;
    let d = connects(http_addr).await;
    let v = connects(http_via).await;
    let k = connects(http_kernel).await;
    report_latency(&format!("HTTP request per connection ({CONNECTS})"), d, v, k);

    // 2c. 50 clients at once, a connection per request.
    let _ = concurrent(http_addr).await;
    let mut took = [Duration::ZERO; 3];
    let mut lat: [Vec<Duration>; 3] = Default::default();
    for _ in 0..CONCURRENT_ROUNDS {
        for (i, addr) in [http_addr, http_via, http_kernel].into_iter().enumerate() {
            let (t, l) = concurrent(addr).await;
            took[i] += t;
            lat[i].extend(l);
        }
    }
    let [d, v, k] = took.map(|t| (CONCURRENT_ROUNDS * CONCURRENT_REQUESTS) as f64 / t.as_secs_f64());
    let [dl, vl, kl] = lat;
    println!(
        "{CONCURRENT} concurrent clients, {CONCURRENT_ROUNDS} × {CONCURRENT_REQUESTS} HTTP requests, a connection each, target ≥ 90 % of direct:"
    );
    println!("  direct {d:.0} requests/s");
    println!("  splice {v:.0} requests/s = {:.0} % ({})", 100.0 * v / d, verdict(v / d >= 0.9));
    println!("  kernel {k:.0} requests/s = {:.0} % ({})", 100.0 * k / d, verdict(k / d >= 0.9));
    report_latency("  their latencies", dl, vl, kl);
    drop(sur);
    drop(kern);
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

/// Prints p50/p99 direct and on each path, and what each path adds.
fn report_latency(label: &str, mut d: Vec<Duration>, v: Vec<Duration>, k: Vec<Duration>) {
    let (d50, d99) = (pct(&mut d, 0.5), pct(&mut d, 0.99));
    println!("{label}, target p99 added < 1000 µs: direct p50 {:.0} µs p99 {:.0} µs", us(d50), us(d99));
    for (path, mut v) in [("splice", v), ("kernel", k)] {
        let (v50, v99) = (pct(&mut v, 0.5), pct(&mut v, 0.99));
        println!(
            "  {path} p50 {:.0} µs p99 {:.0} µs: added p50 {:.0} µs p99 {:.0} µs ({})",
            us(v50),
            us(v99),
            us(v50.saturating_sub(d50)),
            us(v99.saturating_sub(d99)),
            verdict(v99.saturating_sub(d99) < Duration::from_millis(1))
        );
    }
}
