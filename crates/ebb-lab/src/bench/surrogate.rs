//! The surrogate on a real guest: wake latency through ebb against a start
//! by hand, the awake paths' cost (`awake`), and 200 clients at once.

use crate::lab::{free_port, GuestSpec, Lab};
use ebb_backends::libvirt::LibvirtHypervisor;
use ebb_backends::Hypervisor;
use ebb_core::{Bytes, VmId};
use ebb_daemon::config::Config;
use ebb_daemon::run::{libvirt_connector, run_with};
use std::time::{Duration, Instant};
use tokio::task::block_in_place;

use super::awake::awake_overhead;
use super::{percentile, wait_path};

/// Sends one GET and returns the time to the first byte of the answer.
fn first_byte(port: u16, limit: Duration) -> Result<Duration, String> {
    use std::io::{Read, Write};
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: ebb-bench\r\n\r\n").map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(1) => Ok(t0.elapsed()),
        Ok(_) => Err("the connection closed with no answer".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// What became of a crowd's clients within its limit.
#[derive(Default)]
struct Crowd {
    /// Got their own answer; the last one after `last`.
    answered: usize,
    last: Duration,
    /// Told no, with a status line (ebb's 503 says why).
    refused: usize,
    /// Nothing, an empty close, or another client's answer.
    lost: usize,
}

/// `n` clients at once, each GETting its own `/cgi-bin/hit?i`, within `limit`.
fn crowd(port: u16, n: usize, limit: Duration) -> Crowd {
    let t0 = Instant::now();
    let clients: Vec<_> = (0..n)
        .map(|i| {
            std::thread::spawn(move || -> Option<(bool, Duration)> {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
                s.set_read_timeout(Some(limit.saturating_sub(t0.elapsed()).max(Duration::from_millis(1)))).ok()?;
                use std::io::{Read, Write};
                s.write_all(format!("GET /cgi-bin/hit?{i} HTTP/1.0\r\nHost: ebb-bench\r\n\r\n").as_bytes()).ok()?;
                let mut text = String::new();
                s.read_to_string(&mut text).ok()?;
                if text.contains(&format!(" hit {i}\n")) {
                    Some((true, t0.elapsed()))
                } else {
                    text.starts_with("HTTP/1.1 503").then(|| (false, t0.elapsed()))
                }
            })
        })
        .collect();
    let mut out = Crowd::default();
    for c in clients {
        match c.join().ok().flatten() {
            Some((true, at)) => {
                out.answered += 1;
                out.last = out.last.max(at);
            }
            Some((false, _)) => out.refused += 1,
            None => out.lost += 1,
        }
    }
    out
}

pub(super) async fn surrogate(uri: &str, rounds: usize) -> Result<(), String> {
    let prefix = "ebb-bench-wake-";
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let lab = block_in_place(|| Lab::connect(uri)).map_err(|e| e.to_string())?;
    block_in_place(|| lab.remove_leftovers(prefix)).map_err(|e| e.to_string())?;
    let mut spec = GuestSpec::new(format!("{prefix}a"), Bytes::from_mib(512));
    spec.http_port = Some(free_port());
    spec.console_log = dir.path().join("a.log");
    let g = block_in_place(|| lab.create(&spec)).map_err(|e| e.to_string())?;
    block_in_place(|| g.wait_ready(Duration::from_secs(180))).map_err(|e| e.to_string())?;
    let (vm, backend, listen) = (VmId::new(g.name()), spec.http_port.unwrap_or_default(), free_port());
    let mut hv = LibvirtHypervisor::connect(uri).map_err(|e| e.to_string())?;

    // Baseline: save, then start by hand and poll the service every 5 ms.
    let mut direct = vec![];
    for _ in 0..rounds {
        hv.save(&vm).map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        hv.start(&vm).map_err(|e| e.to_string())?;
        let answered = loop {
            // A short limit per attempt: a host forward may accept and hang while
            // the guest is not listening yet, which would flatter ebb.
            if first_byte(backend, Duration::from_millis(250)).is_ok() {
                break t0.elapsed();
            }
            if t0.elapsed() > Duration::from_secs(60) {
                return Err("the guest's service did not answer within 60 s of start".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        direct.push(answered);
    }

    // ebb: the agent holds the port; each round it sleeps the VM on request
    // and one client's first byte of answer is timed.
    let socket = dir.path().join("wake.sock");
    let cfg = Config::parse(&format!(
        "[agent]\nuri = \"{uri}\"\ndomains = [\"{vm}\"]\nsocket = \"{}\"\njournal = \"{}\"\n[memory]\nenabled = false\n\
         [surrogate]\nawake_path = \"splice\"\n\
         [[vm.{vm}.service]]\nname = \"http\"\nlisten = \"127.0.0.1:{listen}\"\nbackend = \"127.0.0.1:{backend}\"\nhttp = true\n",
        socket.display(),
        dir.path().join("wake.db").display()
    )).map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run_with(cfg, libvirt_connector(), async {
        let _ = stopped.await;
    }));
    wait_path(&socket, Duration::from_secs(10))?;
    let client = ebb_daemon::client::Client::new(&socket);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut through = vec![];
    for _ in 0..rounds {
        client.sleep(vm.as_str()).await.map_err(|e| e.to_string())?;
        through.push(block_in_place(|| first_byte(listen, Duration::from_secs(60)))?);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (d, t) = (percentile(&mut direct, 0.5), percentile(&mut through, 0.5));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("wake latency, 512 MiB guest, median of {rounds}:");
    println!("  start of the managed save by hand -> the service's first answer: {:.0} ms", ms(d));
    println!("  a request to the sleeping VM through ebb -> first byte of its answer: {:.0} ms", ms(t));
    println!("  ebb adds {:.0} ms (target < 50 ms)", ms(t) - ms(d));

    awake_overhead(uri, &g, &vm, backend, listen, dir.path()).await?;

    // 200 clients at once: to the sleeping VM through ebb, and straight to the
    // awake VM's host forward.
    let n = 200;
    // Past ebb's bound (wake_deadline + replay_deadline, 60 s by default):
    // whoever is neither answered nor refused by then was lost.
    let limit = Duration::from_secs(65);
    client.sleep(vm.as_str()).await.map_err(|e| e.to_string())?;
    let through = block_in_place(|| crowd(listen, n, limit));
    let direct = block_in_place(|| crowd(backend, n, limit));
    println!("{n} clients at once, each its own request, {}s limit:", limit.as_secs());
    for (path, c) in [("through ebb to the sleeping VM", through), ("straight to the awake VM's host forward", direct)] {
        println!(
            "  {path}: {} answered (the last after {:.1} s), {} refused with a reason, {} lost",
            c.answered,
            c.last.as_secs_f64(),
            c.refused,
            c.lost
        );
    }

    let _ = stop.send(());
    let _ = agent.await;
    drop(hv);
    let _ = block_in_place(|| g.remove());
    Ok(())
}
