//! Power events on real guests and a real upsd: low battery to the last
//! guest saved, mains power back to all restored.

use crate::lab::{free_port, GuestSpec, Lab};
use ebb_core::Bytes;
use ebb_daemon::config::Config;
use ebb_daemon::run::{libvirt_connector, run_with};
use std::time::{Duration, Instant};
use tokio::task::block_in_place;

pub(super) async fn power(uri: &str, rounds: usize) -> Result<(), String> {
    let prefix = "ebb-bench-power-";
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let lab = block_in_place(|| Lab::connect(uri)).map_err(|e| e.to_string())?;
    block_in_place(|| lab.remove_leftovers(prefix)).map_err(|e| e.to_string())?;
    let mut guests = vec![];
    for i in 0..3 {
        let mut spec = GuestSpec::new(format!("{prefix}{i}"), Bytes::from_mib(256));
        spec.http_port = Some(free_port());
        spec.console_log = dir.path().join(format!("{i}.log"));
        guests.push(block_in_place(|| lab.create(&spec)).map_err(|e| e.to_string())?);
    }
    for g in &guests {
        block_in_place(|| g.wait_ready(Duration::from_secs(180))).map_err(|e| e.to_string())?;
    }
    let upsd = crate::lab::Upsd::start("OL").map_err(|e| e.to_string())?;
    let cfg_text = format!(
        "[agent]\nuri = \"{uri}\"\ndomains = [\"{prefix}*\"]\ntick = \"1s\"\nsocket = \"{}\"\njournal = \"{}\"\n\
         [memory]\nenabled = false\n[power]\nups = \"{}\"\n",
        dir.path().join("power.sock").display(),
        dir.path().join("power.db").display(),
        upsd.ups()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run_with(Config::parse(&cfg_text).map_err(|e| e.to_string())?, libvirt_connector(), async {
        let _ = stopped.await;
    }));
    let active = |want: bool| guests.iter().all(|g| g.domain().is_active().unwrap_or(!want) == want);
    let wait = |want: bool, what: &str| -> Result<Duration, String> {
        let t0 = Instant::now();
        while !active(want) {
            if t0.elapsed() > Duration::from_secs(120) {
                return Err(format!("{what} did not happen within 120 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(t0.elapsed())
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut down, mut up) = (vec![], vec![]);
    for _ in 0..rounds {
        upsd.set("OB LB").map_err(|e| e.to_string())?;
        down.push(block_in_place(|| wait(false, "saving the 3 guests"))?);
        upsd.set("OL").map_err(|e| e.to_string())?;
        up.push(block_in_place(|| wait(true, "restoring the 3 guests"))?);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let _ = stop.send(());
    let _ = agent.await;
    for g in guests {
        let _ = block_in_place(|| g.remove());
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    println!("power events, 3 guests of 256 MiB, a real upsd (dummy-ups), 1 s tick, median of {rounds}:");
    println!("  the UPS says OB LB -> the last guest saved: {:.1} s (includes up to 1 s of tick and the UPS driver's own poll)", med(&mut down));
    println!("  the UPS says OL -> every guest restored: {:.1} s", med(&mut up));
    Ok(())
}
