//! A crowd at a guest on the lab's network namespace, straight at it awake
//! and through ebb at it asleep.

use crate::lab::GuestSpec;
use ebb_core::Bytes;
use super::spawn_ebb_run;
use std::time::Duration;
use tokio::task::block_in_place;

use super::wait_path;

/// `n` clients at once at a guest on the lab's network namespace (its
/// virtio-net on a tap, ebb and the clients in the namespace): straight at
/// the awake guest, then through ebb at the same guest asleep. Per outcome:
/// answered, refused (ebb's 503 with its reason), lost; and the answered
/// clients' time from connect to the end of the answer.
pub(super) async fn surrogate_crowd(n: usize) -> Result<(), String> {
    use crate::crowd;
    use crate::lab::{LabNet, LAB_NETNS, LAB_NET_HOST};
    let prefix = "ebb-bench-crowd-";
    let e = |e: crate::lab::LabError| e.to_string();
    let net = block_in_place(LabNet::ensure).map_err(e)?;
    let lab = block_in_place(|| net.lab()).map_err(e)?;
    block_in_place(|| lab.remove_leftovers(prefix)).map_err(e)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ip = LabNet::guest_ip(2);
    let mut spec = GuestSpec::new(format!("{prefix}a"), Bytes::from_mib(256));
    spec.lab_net = Some(ip);
    spec.console_log = dir.path().join("crowd.log");
    let g = block_in_place(|| lab.create(&spec)).map_err(e)?;
    block_in_place(|| g.wait_ready(Duration::from_secs(180))).map_err(e)?;
    let (direct_addr, listen) = (std::net::SocketAddr::from((ip, 80)), std::net::SocketAddr::from((LAB_NET_HOST, 8081)));
    let limit = Duration::from_secs(120);
    let run_crowd = |addr| block_in_place(|| net.run(|| crowd::run(addr, n, |_| "/".into(), limit)));
    let direct = run_crowd(direct_addr).map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;

    // ebb in the namespace, a child process: its listener must be there.
    let socket = dir.path().join("crowd.sock");
    let config = dir.path().join("crowd.toml");
    let (wake, replay) = (30, 30);
    std::fs::write(
        &config,
        format!(
            "[agent]\nuri = \"{}\"\ndomains = [\"{}\"]\ntick = \"30s\"\nsocket = \"{}\"\njournal = \"{}\"\n[memory]\nenabled = false\n\
             [surrogate]\nwake_deadline = \"{wake}s\"\nreplay_deadline = \"{replay}s\"\n\
             [[vm.{}.service]]\nname = \"http\"\nlisten = \"{listen}\"\nbackend = \"{direct_addr}\"\nhttp = true\n",
            net.uri(),
            g.name(),
            socket.display(),
            dir.path().join("crowd.db").display(),
            g.name()
        ),
    )
    .map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut agent = spawn_ebb_run(net.command(exe), &config).map_err(|e| format!("cannot start ebb run in {LAB_NETNS}: {e}"))?;
    let through = async {
        wait_path(&socket, Duration::from_secs(10))?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let client = ebb_daemon::client::Client::new(&socket);
        client.sleep(g.name()).await.map_err(|e| e.to_string())?;
        run_crowd(listen).map_err(|e| e.to_string())?.map_err(|e| e.to_string())
    }
    .await;
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = block_in_place(|| g.remove());
    let through = through?;

    let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0));
    println!("{n} clients at once, GET / on a guest's busybox httpd on a tap in netns {LAB_NETNS} (ebb and clients there too):");
    for (what, c) in [("straight at the awake guest", &direct), ("through ebb to the sleeping guest", &through)] {
        println!(
            "  {what}: {} answered, {} refused, {} lost; answered in p50 {}, p99 {}; slowest client {:.1} s",
            c.answered(),
            c.refused(),
            c.lost(),
            ms(c.answer_time(0.5)),
            ms(c.answer_time(0.99)),
            c.slowest().as_secs_f64()
        );
        println!("    {:?}", c.tally());
    }
    let ratio = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) if !b.is_zero() => format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64()),
        _ => "-".into(),
    };
    println!(
        "  through ebb asleep vs straight awake: answered {:.2}x, p50 {}, p99 {} (ebb's bound per client: wake_deadline {wake} s + replay_deadline {replay} s)",
        through.answered() as f64 / direct.answered().max(1) as f64,
        ratio(through.answer_time(0.5), direct.answer_time(0.5)),
        ratio(through.answer_time(0.99), direct.answer_time(0.99))
    );
    Ok(())
}
