//! The awake overhead: ebb's splice and the kernel path against the
//! guest's host forward directly, in bulk, under concurrency and one at a time.

use crate::lab::{free_port, Guest};
use ebb_core::VmId;
use ebb_daemon::config::Config;
use ebb_daemon::run::{libvirt_connector, run_with};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::task::block_in_place;

use super::{percentile, wait_path};

/// GETs `path` and reads the whole answer: (time, bytes read).
fn get_all(port: u16, path: &str, limit: Duration) -> Result<(Duration, usize), String> {
    use std::io::{Read, Write};
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: ebb-bench\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok((t0.elapsed(), total)),
            Ok(n) => total += n,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// `clients` at once, each GETting `/` `per_client` times on a
/// new connection each: the time it took, each answered request's time, and
/// how many got no answer within 10 s.
fn concurrent(port: u16, clients: usize, per_client: usize) -> (Duration, Vec<Duration>, usize) {
    let t0 = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                let mut times = Vec::with_capacity(per_client);
                let mut failed = 0;
                for _ in 0..per_client {
                    match get_all(port, "/", Duration::from_secs(10)) {
                        Ok((took, n)) if n > 0 => times.push(took),
                        _ => failed += 1,
                    }
                }
                (times, failed)
            })
        })
        .collect();
    let (mut times, mut failed) = (vec![], 0);
    for t in threads {
        let (t, f) = t.join().unwrap_or_default();
        times.extend(t);
        failed += f;
    }
    (t0.elapsed(), times, failed)
}

/// The awake overhead on both awake paths against the guest's host forward
/// directly, all in the same run: the agent already running serves `listen`
/// on the splice; a second agent serves another port on the kernel path
/// (it has no sleep settings, so it leaves the VM alone). Each figure
/// alternates direct, splice and kernel so drift and the host's other load
/// hit all three alike.
pub(super) async fn awake_overhead(uri: &str, g: &Guest, vm: &VmId, backend: u16, listen: u16, dir: &Path) -> Result<(), String> {
    let kernel_listen = free_port();
    let socket = dir.join("kernel.sock");
    let cfg = Config::parse(&format!(
        "[agent]\nuri = \"{uri}\"\ndomains = [\"{vm}\"]\nsocket = \"{}\"\njournal = \"{}\"\n[memory]\nenabled = false\n\
         [surrogate]\nawake_path = \"kernel\"\n\
         [[vm.{vm}.service]]\nname = \"http\"\nlisten = \"127.0.0.1:{kernel_listen}\"\nbackend = \"127.0.0.1:{backend}\"\nhttp = true\n",
        socket.display(),
        dir.join("kernel.db").display()
    )).map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run_with(cfg, libvirt_connector(), async {
        let _ = stopped.await;
    }));
    let result = async {
        wait_path(&socket, Duration::from_secs(10))?;
        let client = ebb_daemon::client::Client::new(&socket);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = client.vm(vm.as_str()).await;
            let paths = info.ok().and_then(|v| v.surrogate).map(|s| s.awake_paths).unwrap_or_default();
            if paths.iter().any(|p| p.contains("kernel, forwarding now")) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("the kernel path did not take over within 30 s: {paths:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ports = [("direct to the host forward", backend), ("through ebb, splice", listen), ("through ebb, kernel path", kernel_listen)];
        block_in_place(|| awake_figures(g, &ports))
    }
    .await;
    let _ = stop.send(());
    let _ = agent.await;
    result
}

/// Bulk throughput, the request rate of 50 concurrent clients, and the p99
/// of small requests one at a time, on each of `ports` (the first is direct).
fn awake_figures(g: &Guest, ports: &[(&str, u16); 3]) -> Result<(), String> {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mib = 32;
    g.http_get(&format!("/cgi-bin/bulk?mib={mib}")).map_err(|e| e.to_string())?;
    let mut bulk = [Duration::ZERO; 3];
    for _ in 0..3 {
        for (i, (_, port)) in ports.iter().enumerate() {
            let (took, bytes) = get_all(*port, "/bulk.bin", Duration::from_secs(60))?;
            if bytes < mib << 20 {
                return Err(format!("the bulk transfer read {bytes} bytes, fewer than {mib} MiB"));
            }
            bulk[i] += took;
        }
    }
    let rates = bulk.map(|sum| 3.0 * mib as f64 / sum.as_secs_f64());
    println!("awake, {mib} MiB GET x3 (the guest's httpd, sendfile), target >= 90 % of direct:");
    for (i, (what, _)) in ports.iter().enumerate() {
        println!("  {what}: {:.1} MiB/s = {:.0} %", rates[i], 100.0 * rates[i] / rates[0]);
    }

    // 50 clients at once overflow the test guest (busybox httpd's listen
    // backlog is 9, behind QEMU's host forward): that figure shows how each
    // path copes with the guest's collapse; 8 at once stay under the
    // backlog and show the paths' own cost.
    for (clients, per_client, rounds) in [(50, 2, 2), (8, 20, 2)] {
        let mut took = [Duration::ZERO; 3];
        let mut answered = [0usize; 3];
        let mut lost = [0usize; 3];
        let mut lat: [Vec<Duration>; 3] = Default::default();
        for _ in 0..rounds {
            for (i, (_, port)) in ports.iter().enumerate() {
                let (t, times, failed) = concurrent(*port, clients, per_client);
                took[i] += t;
                answered[i] += times.len();
                lost[i] += failed;
                lat[i].extend(times);
            }
        }
        let rate = |i: usize| answered[i] as f64 / took[i].as_secs_f64();
        println!(
            "awake, {clients} clients at once, {rounds} x {} small GETs, a connection each, target >= 90 % of direct:",
            clients * per_client
        );
        for (i, (what, _)) in ports.iter().enumerate() {
            let p99 = if lat[i].is_empty() { Duration::ZERO } else { percentile(&mut lat[i], 0.99) };
            println!(
                "  {what}: {:.0} requests/s = {:.0} %, p99 {:.0} ms, {} unanswered within 10 s",
                rate(i),
                100.0 * rate(i) / rate(0),
                ms(p99),
                lost[i]
            );
        }
    }

    let n = 300;
    let mut one: [Vec<Duration>; 3] = Default::default();
    for _ in 0..n {
        for (i, (_, port)) in ports.iter().enumerate() {
            one[i].push(get_all(*port, "/", Duration::from_secs(10))?.0);
        }
    }
    let p50 = one.clone().map(|mut v| percentile(&mut v, 0.5));
    let p99 = one.map(|mut v| percentile(&mut v, 0.99));
    println!("awake, {n} small GETs one at a time, target p99 added < 1 ms:");
    for (i, (what, _)) in ports.iter().enumerate() {
        println!(
            "  {what}: p50 {:.2} ms, p99 {:.2} ms; added p50 {:.2} ms, p99 {:.2} ms",
            ms(p50[i]),
            ms(p99[i]),
            ms(p50[i]) - ms(p50[0]),
            ms(p99[i]) - ms(p99[0])
        );
    }
    Ok(())
}
