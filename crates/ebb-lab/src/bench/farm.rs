//! The farm's costs, on a real etcd and the real `ebb coord` and `ebb run`.
//!
//! Wake: a client's request at the coordinator's gateway for a VM whose
//! host sleeps, to the service's answer, against the same request sent
//! straight to the service. The host's sleep is recorded (it stays up, its
//! VM is on libvirt's test driver), so the difference is ebb's own part of
//! a wake: the gateway's client key, the leader's transaction and send
//! (Wake-on-LAN to loopback's broadcast), the agent's wake and restore, its
//! `awake` in etcd, the gateway's replay. A real host adds its resume and
//! its VM's restore.
//!
//! Coordinator: `hosts` simulated agents with `clients` active clients
//! each, their keys in etcd as the agents keep them (a lease per member
//! and per client): the time to read the whole farm (what the leader does
//! at each change), the leader's reaction to a client of a sleeping host
//! at that size, and what the farm costs etcd in writes per second at the
//! default timers.

use crate::etcd::LocalEtcd;
use ebb_core::clients::ClientKind;
use ebb_core::farm::HostState;
use ebb_farm::{ClientEntry, Member, Store};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn farm(rounds: usize, hosts: usize, clients: usize, lab_rounds: usize) -> Result<(), String> {
    wake(rounds).await?;
    if lab_rounds > 0 {
        wake_by_method(lab_rounds).await?;
    }
    scale(hosts, clients).await
}

/// Wake by each method on the lab's farm (`farm_lab`): three hosts that
/// sleep for real as the lab has it (VM saved, powered off for the BMC,
/// the host's processes frozen), woken by Wake-on-LAN, IPMI (virtualbmc)
/// and Redfish (sushy-tools); a VNC client at the gateway, from its connect
/// to the VM's first byte (the RFB banner: QEMU answers while the restore
/// loads). The VMs are routed by the farm's `vms` keys.
async fn wake_by_method(rounds: usize) -> Result<(), String> {
    use crate::bmc::{Sushy, VirtualBmc, BMC_PASSWORD};
    use crate::farm_lab::{self, FarmLab, COORD_IP, COORD_NS, VNC_PORT};
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let farm = FarmLab::start(&["h1", "h2", "h3"])?;
    let (h1, h2, h3) = (farm.host("h1"), farm.host("h2"), farm.host("h3"));
    let etcd = LocalEtcd::start_in(COORD_NS, COORD_IP).await?;
    let ipmi = VirtualBmc::start_in(&h2.power, Some(COORD_NS)).await?;
    let redfish = Sushy::start_in(&h3.power, COORD_NS).await?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let password = dir.path().join("bmc-password");
    std::fs::write(&password, BMC_PASSWORD).map_err(|e| e.to_string())?;
    let cases = [
        (h1, VNC_PORT, "wol", format!("mac = \"{}\"\nbroadcast = \"{}\"", h1.mac, farm_lab::BROADCAST)),
        (h2, VNC_PORT + 1, "ipmi", format!("ipmi = \"{}\"", ipmi.address())),
        (h3, VNC_PORT + 2, "redfish", format!("redfish = \"{}\"", redfish.system_url())),
    ];
    let gateways: String = cases.iter().map(|(h, port, _, _)| farm_lab::gateway_section(h, None, *port)).collect();
    let coord_config = dir.path().join("coord.toml");
    std::fs::write(&coord_config, farm_lab::coord_config(etcd.url(), &password, &gateways)).map_err(|e| e.to_string())?;
    let spawn = |mut cmd: Command| cmd.env("EBB_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::null()).spawn().map(Proc).map_err(|e| format!("cannot start ebb: {e}"));
    let mut coord = FarmLab::command(COORD_NS, &exe);
    coord.args(["coord", "--name", "bench", "--config"]).arg(&coord_config);
    let _coord = spawn(coord)?;
    let mut agents = Vec::new();
    for (h, _, _, wake) in &cases {
        let (lines, rest) = farm_lab::agent_config(h, etcd.url(), wake);
        let config = dir.path().join(format!("{}.toml", h.name));
        let (socket, journal) = (dir.path().join(format!("{}.sock", h.name)), dir.path().join(format!("{}.db", h.name)));
        std::fs::write(&config, crate::lab::agent_config_text(&socket, &journal, &lines, &rest)).map_err(|e| e.to_string())?;
        let wrapper = h.wrapper();
        let mut cmd = Command::new(&wrapper[0]);
        cmd.args(&wrapper[1..]).arg(&exe).args(["run", "--config"]).arg(&config);
        agents.push(spawn(cmd)?);
    }
    // Dropped before the agents: a frozen agent cannot be stopped.
    let _thaw = farm.thaw_guard();
    let mut took: Vec<(&str, Vec<Duration>)> = cases.iter().map(|c| (c.2, Vec::new())).collect();
    let mut to_sleep = Vec::new();
    for _ in 0..rounds {
        for (i, (h, port, method, _)) in cases.iter().enumerate() {
            // Asleep: frozen (seen within 20 ms) and `sleeping` in etcd,
            // whose `slept` says when the agent decided.
            let started = Instant::now();
            let slept = loop {
                if started.elapsed() > Duration::from_secs(60) {
                    return Err(format!("{} did not sleep within 60 s", h.name));
                }
                if h.freezer_state() != "FROZEN" {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let frozen_at = ebb_core::Millis(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64);
                let view = farm_lab::farm_view(&exe, etcd.url())?;
                let host = view.hosts.into_iter().find(|v| v.name == h.name);
                match host.filter(|v| v.state == Some(HostState::Sleeping)).and_then(|v| v.slept) {
                    Some(s) => break frozen_at.since(s.at),
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            to_sleep.push(Duration::from_millis(slept));
            let (session, banner) = tokio::task::block_in_place(|| farm_lab::rfb_session(COORD_IP, *port)).map_err(|e| format!("a client of {} by {method}: {e}", h.name))?;
            took[i].1.push(banner);
            drop(session);
        }
    }
    let line = |what: &str, mut t: Vec<Duration>| {
        t.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!("  {what:<8} median {:>6.0} ms   min {:>6.0} ms   max {:>6.0} ms", ms(t[t.len() / 2]), ms(t[0]), ms(t[t.len() - 1]));
    };
    println!("wake by method on the lab's farm ({rounds} rounds; a VNC client at the gateway, connect to the VM's first byte):");
    for (method, t) in took {
        line(method, t);
    }
    println!("the sleep decision (slept.at in etcd) to the host frozen, its VM saved and `sleeping` in etcd ({} sleeps):", to_sleep.len());
    line("sleep", to_sleep);
    Ok(())
}

/// Kills a child process on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ebb(args: &[&str], config: &Path) -> Result<Proc, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    Command::new(exe)
        .args(args)
        .arg("--config")
        .arg(config)
        .env("EBB_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Proc)
        .map_err(|e| format!("cannot start ebb {args:?}: {e}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// A service answering each line with `ECHO line`.
fn echo_service() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut w) = s.try_clone() else { return };
                for line in BufReader::new(s).lines().map_while(Result::ok) {
                    let _ = w.write_all(format!("ECHO {line}\n").as_bytes());
                }
            });
        }
    });
    Ok(port)
}

/// Connects, sends a line, and times until the answer's first line.
fn ask(port: u16) -> Result<Duration, String> {
    let started = Instant::now();
    let mut c = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    c.write_all(b"hello\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(c).read_line(&mut answer).map_err(|e| e.to_string())?;
    if answer != "ECHO hello\n" {
        return Err(format!("the service answered {answer:?}"));
    }
    Ok(started.elapsed())
}

async fn until(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) -> Result<Duration, String> {
    let started = Instant::now();
    while !f().await {
        if started.elapsed() > limit {
            return Err(format!("{what}: not within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(started.elapsed())
}

async fn state(store: &Store, host: &str) -> Option<HostState> {
    store.state(host).await.ok().flatten()
}

fn farm_section(url: &str, host: &str) -> String {
    format!("[farm]\nendpoints = [\"{url}\"]\nhost = \"{host}\"\nlease_ttl = \"2s\"\ntimeout = \"1s\"\nwake_resend = \"5s\"\nwake_give_up = \"30s\"\n")
}

async fn wake(rounds: usize) -> Result<(), String> {
    let etcd = LocalEtcd::start().await?;
    let store = Store::connect(&[etcd.url().to_string()], TIMEOUT).await.map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (service, gateway) = (echo_service()?, free_port());
    let coord_config = dir.path().join("coord.toml");
    std::fs::write(
        &coord_config,
        format!(
            "{}[clients]\nsurrogate_idle = \"1s\"\n[gateway.web]\nhost = \"h1\"\n[[gateway.web.service]]\nname = \"echo\"\nlisten = \"127.0.0.1:{gateway}\"\nbackend = \"127.0.0.1:{service}\"\n",
            farm_section(etcd.url(), "coord")
        ),
    )
    .map_err(|e| e.to_string())?;
    let agent_config = dir.path().join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "[agent]\nuri = \"test:///default\"\ntick = \"200ms\"\nsocket = \"{}\"\njournal = \"{}\"\n{}[farm.wake]\nmac = \"52:54:00:12:34:56\"\nbroadcast = \"127.255.255.255\"\n[farm.sleep]\nafter = \"1s\"\nmin_awake = \"1s\"\nmax_per_hour = 1000\n",
            dir.path().join("ebb.sock").display(),
            dir.path().join("journal.db").display(),
            farm_section(etcd.url(), "h1")
        ),
    )
    .map_err(|e| e.to_string())?;
    let _coord = ebb(&["coord"], &coord_config)?;
    let _agent = ebb(&["run"], &agent_config)?;
    let mut direct = Vec::new();
    let mut through = Vec::new();
    for _ in 0..rounds {
        until("h1 asleep", Duration::from_secs(30), async || state(&store, "h1").await == Some(HostState::Sleeping)).await?;
        // The gateway follows the farm through its own watch: let it see the sleep.
        tokio::time::sleep(Duration::from_millis(300)).await;
        direct.push(ask(service)?);
        through.push(ask(gateway)?);
    }
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let show = |v: &mut Vec<Duration>| format!("median {:.1} ms (min {:.1}, max {:.1})", ms(&super::percentile(v, 0.5)), ms(&v[0]), ms(&v[v.len() - 1]));
    println!("farm wake ({rounds} rounds; the host's sleep recorded, its VM on the test driver, Wake-on-LAN to loopback):");
    println!("  a request straight to the service:                 {}", show(&mut direct));
    println!("  the same through the gateway to the sleeping host: {}", show(&mut through));
    let ebb_part = super::percentile(&mut through, 0.5).saturating_sub(super::percentile(&mut direct, 0.5));
    println!("  ebb's part of a wake (median difference):          {:.1} ms (target: < 100 ms beside the host's resume and the VM's restore)", ms(&ebb_part));
    Ok(())
}

async fn scale(hosts: usize, clients: usize) -> Result<(), String> {
    let etcd = LocalEtcd::start().await?;
    let store = Store::connect(&[etcd.url().to_string()], TIMEOUT).await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    // The agents' keys as they keep them: a membership lease per host, a
    // lease per client (its timer). Written a few hundred at a time.
    let entry = ClientEntry { vm: "vm".into(), kind: ClientKind::Console, remote: None };
    let member = Member { version: "bench".into(), since: ebb_core::Millis(0) };
    for chunk in (0..hosts).collect::<Vec<_>>().chunks(50) {
        let mut joins = Vec::new();
        for &h in chunk {
            let (store, entry, member) = (store.clone(), entry.clone(), member.clone());
            joins.push(tokio::spawn(async move {
                let name = format!("h{h:04}");
                let lease = store.grant(Duration::from_secs(600)).await?;
                store.join(&name, &member, &Default::default(), lease.id).await?;
                for c in 0..clients {
                    store.put_client(&name, &format!("console:10.0.{}.{}", c / 250, c % 250), &entry, Duration::from_secs(600)).await?;
                }
                Ok::<_, ebb_farm::FarmError>(())
            }));
        }
        for j in joins {
            j.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        }
    }
    let keys = hosts * (clients + 3);
    println!("farm at {hosts} hosts × {clients} clients ({keys} keys, {} leases) written in {:.1} s", hosts * (clients + 1), started.elapsed().as_secs_f64());
    let mut reads = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let view = store.farm().await.map_err(|e| e.to_string())?;
        reads.push(t.elapsed());
        if view.hosts.len() != hosts {
            return Err(format!("read {} hosts, wrote {hosts}", view.hosts.len()));
        }
    }
    println!("  the leader's read of the whole farm: median {:.1} ms", super::percentile(&mut reads, 0.5).as_secs_f64() * 1000.0);

    // The leader at that size: a client of a sleeping host, to `waking`.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = dir.path().join("coord.toml");
    std::fs::write(&config, farm_section(etcd.url(), "coord")).map_err(|e| e.to_string())?;
    let lease = store.grant(Duration::from_secs(600)).await.map_err(|e| e.to_string())?;
    let wake = ebb_core::farm::WakeSettings { mac: Some("52:54:00:12:34:56".into()), broadcast: Some("127.255.255.255".into()), ..Default::default() };
    store.join("sleeper", &member, &wake, lease.id).await.map_err(|e| e.to_string())?;
    store.set_state("sleeper", HostState::Sleeping).await.map_err(|e| e.to_string())?;
    let _coord = ebb(&["coord"], &config)?;
    until("a leader", Duration::from_secs(30), async || store.leader().await.ok().flatten().is_some()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let put = Instant::now();
    store.put_client("sleeper", "gateway:10.9.9.9", &entry, Duration::from_secs(60)).await.map_err(|e| e.to_string())?;
    until("the leader marks the host waking", Duration::from_secs(30), async || state(&store, "sleeper").await == Some(HostState::Waking)).await?;
    println!("  the leader's reaction to a client of a sleeping host: {:.1} ms from the client's key to `waking`", put.elapsed().as_secs_f64() * 1000.0);

    // What the farm costs etcd, at the default timers (the mirror renews a
    // client's lease every third of its TTL, however often it shows life;
    // a member's every third of lease_ttl).
    let client_ttl = 300.0; // console_idle and surrogate_idle: 5 min
    let member_ttl = 10.0;
    let per_s = (hosts * clients) as f64 / (client_ttl / 3.0) + hosts as f64 / (member_ttl / 3.0);
    println!(
        "  etcd writes the farm costs at steady state: {per_s:.0} lease renewals a second ({:.0} for clients, {:.0} for memberships), \
         plus a put and a revoke per client that comes and goes",
        (hosts * clients) as f64 / (client_ttl / 3.0),
        hosts as f64 / (member_ttl / 3.0)
    );
    Ok(())
}
