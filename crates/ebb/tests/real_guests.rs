//! ebb against a real libvirtd with real (software-emulated) QEMU guests:
//! the agent is the real `ebb` binary, the guests run the project's image
//! and report their own view of memory over HTTP on a 127.0.0.1 forward.
//! These run one at a time (see .config/nextest.toml).

mod common;
use common::*;
use ebb_daemon::api_types::{Connection, Source, VmInfo};
use ebb_lab::lab::Lab;
use ebb_core::Bytes;
use std::process::Command;
use std::time::Duration;

/// The memory tests' guests: 512 MiB, room to reclaim from.
const MIB: u64 = 512;

fn agent_config(prefix: &str, memory: &str) -> (String, String) {
    (format!("uri = \"{URI}\"\ndomains = [\"{prefix}*\"]\ntick = \"1s\""), format!("[memory]\n{memory}"))
}

fn find<'a>(vms: &'a [VmInfo], name: &str) -> &'a VmInfo {
    vms.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("{name} not in ebb vms"))
}

fn settled(v: &VmInfo) -> bool {
    v.memory.actual.is_some() && v.memory.target == v.memory.actual
}

fn total(vms: &[VmInfo], names: &[&str]) -> Bytes {
    names.iter().filter_map(|n| find(vms, n).memory.actual).sum()
}

/// Waits until every named guest's balloon is where ebb wants it and they
/// fit the pool, or, when their floors (use plus headroom) outgrow the pool,
/// sit at their floors: the guarantee beats the pool.
fn fit_the_pool(agent: &AgentProc, what: &str, names: &[&str], pool: Bytes) -> Vec<VmInfo> {
    agent.wait(what, Duration::from_secs(90), |agent| {
        let vms = agent.vms();
        if !names.iter().all(|n| vms.iter().any(|v| &v.name == n && settled(v))) {
            return None;
        }
        let floors: Bytes = names.iter().filter_map(|n| find(&vms, n).memory.floor).sum();
        (total(&vms, names) <= pool.max(floors + Bytes::from_mib(1))).then_some(vms)
    })
}

#[test]
fn reclaims_idle_memory_honours_metadata_and_skips_a_guest_without_balloon() {
    let prefix = "ebb-test-reclaim-";
    let (a_name, b_name, nb_name) = (format!("{prefix}a"), format!("{prefix}b"), format!("{prefix}nb"));
    // a: the one stock balloon of these tests (its MemTotal shrinks, which
    // is read below; `ebb vms` flags it). nb: no balloon, no HTTP forward, 128 MiB.
    let (_lab, dir, [a, b, _nb]) = guests(prefix, ["a", "b", "nb"], MIB, |i, s| {
        if i == 0 {
            s.stock_balloon();
        }
        if i == 2 {
            s.balloon = false;
            s.http_port = None;
            s.max_memory = Bytes::from_mib(128);
            s.memory = Bytes::from_mib(128);
        }
    });
    let before = a.status().unwrap().mem_total;

    // b's minimum travels with the VM, set the way the README says.
    let out = Command::new("virsh")
        .args(["-c", URI, "metadata", &b_name, "https://ebb.dev/xmlns/vm/1", "--key", "ebb", "--live", "--config", "--set"])
        .arg(r#"<vm><memory min="384MiB" shares="500"/></vm>"#)
        .output()
        .unwrap();
    assert!(out.status.success(), "virsh metadata: {}", String::from_utf8_lossy(&out.stderr));

    let pool = Bytes::from_mib(700);
    let (agent_lines, rest) = agent_config(prefix, "pool = \"700MiB\"");
    let web_port = free_port();
    let agent = AgentProc::start(dir.path(), &agent_lines, &format!("{rest}\n{}", web_section(dir.path(), web_port)));
    let names = [a_name.as_str(), b_name.as_str()];
    let vms = fit_the_pool(&agent, "the guests to fit the pool", &names, pool);
    let (va, vb) = (find(&vms, &a_name), find(&vms, &b_name));
    assert_eq!(vb.settings.min, Some(Bytes::from_mib(384)));
    assert_eq!((vb.sources.min, vb.sources.shares), (Source::Metadata, Source::Metadata));
    assert!(vb.memory.actual.unwrap() >= Bytes::from_mib(384), "b below its minimum: {:?}", vb.memory);
    assert!(va.memory.actual.unwrap() < Bytes::from_mib(400), "a was not reclaimed: {:?}", va.memory);

    // The guest itself sees less memory: its balloon driver gave it up.
    let after = wait_for("a's MemTotal to drop", Duration::from_secs(20), || {
        let t = a.status().ok()?.mem_total;
        (t + Bytes::from_mib(100) < before).then_some(t)
    });
    assert!(after <= va.memory.actual.unwrap(), "guest MemTotal {after} above its balloon size");
    assert_eq!(a.status().unwrap().oom_kills, 0);
    assert_eq!(b.status().unwrap().oom_kills, 0);

    // Converged means quiet: a 5 s window comes with no balloon calls and
    // slow ticks (a last correction once the guests' stats settle is fine;
    // churn never goes quiet).
    agent.wait("a quiet 5 s window", Duration::from_secs(40), |a| {
        let before = a.status();
        std::thread::sleep(Duration::from_secs(5));
        let after = a.status();
        (after.actions_total == before.actions_total && after.ticks - before.ticks <= 8).then_some(())
    });

    // The guest without a balloon device is shown with the reason and left alone.
    let vnb = find(&vms, &nb_name);
    assert!(vnb.memory.skipped.as_deref().unwrap_or("").contains("no balloon device"), "{:?}", vnb.memory);
    let events = agent.events(Some(&a_name));
    let reclaims: Vec<_> = events.iter().filter(|e| e.kind == "set_balloon_target").collect();
    assert!(!reclaims.is_empty() && reclaims.iter().all(|e| e.outcome.as_deref() == Some("ok")));
    assert!(reclaims.iter().any(|e| e.rule.as_deref() == Some("reclaim") && e.text.contains("reclaim")), "{reclaims:?}");
    assert!(agent.events(Some(&nb_name)).iter().all(|e| e.kind != "set_balloon_target"));
    let explain = agent.text(&["explain", &nb_name]);
    assert!(explain.contains("no balloon device"), "{explain}");
    let explain = agent.text(&["explain", &b_name]);
    assert!(explain.contains("min 384 MiB (metadata)"), "{explain}");
    assert!(explain.contains("safety nets: deflate-on-oom+fpr"), "{explain}");
    // The stock guest is flagged, by `ebb vms` and by `ebb check`.
    let table = agent.text(&["vms"]);
    let flagged: Vec<&str> = table.lines().filter(|l| l.starts_with("warning:") && l.contains("neither deflate-on-OOM")).collect();
    assert!(flagged.len() == 1 && flagged[0].contains(&a_name), "{table}");
    let out = ebb(&["check", "--config", agent.config.to_str().unwrap()]);
    let check = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && check.contains(&format!("warning: {a_name}: its balloon has neither")) && !check.contains(&b_name), "{check}");
    let metrics = agent.text(&["metrics"]);
    assert!(metrics.contains(&format!("ebb_vm_memory_actual_bytes{{vm=\"{a_name}\"}}")), "{metrics}");
    // `ebb doctor` on real guests: the guest without a balloon blocks
    // memory management for it, the stock one gets advice, b is fine.
    let out = ebb(&["doctor", "--config", agent.config.to_str().unwrap()]);
    let doctor = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{doctor}");
    assert!(doctor.contains(&format!("BLOCKS {nb_name}: no balloon device")), "{doctor}");
    assert!(doctor.contains(&format!("advice {a_name}: its balloon has neither")), "{doctor}");
    assert!(doctor.contains(&format!("ok     {b_name}: balloon with statistics")), "{doctor}");

    the_web_view_shows_the_agent_in_a_browser(&agent, web_port, &b_name);
}

/// The VMs' numbers as the page shows them (each row's data-value cells).
const PAGE_VMS: &str = "[...document.querySelectorAll('#vms tbody tr')].map(r => Object.assign({name: r.dataset.vm}, \
    Object.fromEntries([...r.querySelectorAll('td[data-value]')].map(td => [td.dataset.field, td.dataset.value]))))";

fn page_numbers(v: &VmInfo) -> serde_json::Value {
    let b = |x: Option<Bytes>| x.map_or(String::new(), |b| b.0.to_string());
    let m = &v.memory;
    let state = if v.sleeping.is_some() { "asleep".to_string() } else { serde_json::to_value(v.state).unwrap().as_str().unwrap().to_string() };
    serde_json::json!({"name": v.name, "state": state, "actual": b(m.actual), "target": b(m.target), "used": b(m.used), "entitlement": b(m.entitlement), "shares": v.settings.shares.to_string()})
}

/// The web view in headless Chromium against this agent (issue 14): a wrong
/// token is refused; the read token shows every VM with the numbers `ebb vms
/// --json` gives, the memory chart, and no actions; the write token's Sleep
/// button puts `sleeper` to sleep and the page shows it within 2 s of the
/// agent's answer, then Wake brings it back. Screenshots stay in
/// target/screenshots/ to look at.
fn the_web_view_shows_the_agent_in_a_browser(agent: &AgentProc, port: u16, sleeper: &str) {
    use ebb_lab::browser::{screenshot_dir, Browser};
    let shots = screenshot_dir();
    let url = |token: &str| format!("http://127.0.0.1:{port}/?token={token}");
    let mut browser = Browser::launch().expect("chromium (scripts/setup-host.sh installs it)");

    let mut page = browser.open(&url("read-token-0123456789abcdeX")).unwrap();
    page.wait_for("!document.getElementById('login').hidden", Duration::from_secs(10)).unwrap();
    let why = page.eval("document.getElementById('login-why').textContent").unwrap();
    assert!(why.as_str().unwrap_or("").contains("not accepted"), "{why}");
    page.screenshot(&shots.join("web-wrong-token.png")).unwrap();

    let mut page = browser.open(&url(READ_TOKEN)).unwrap();
    assert_eq!(page.status(), Some(200));
    page.wait_for("document.querySelectorAll('#vms tbody tr').length === 3", Duration::from_secs(20)).unwrap();
    // The page and the CLI read the same snapshot type; they agree once
    // both have read the same tick.
    let mut seen = serde_json::Value::Null;
    let agreed = (0..40).any(|_| {
        let cli: Vec<serde_json::Value> = agent.json::<Vec<VmInfo>>(&["vms"]).iter().map(page_numbers).collect();
        seen = page.eval(&format!("JSON.stringify({PAGE_VMS})")).unwrap();
        let shown: Vec<serde_json::Value> = serde_json::from_str(seen.as_str().unwrap()).unwrap();
        if shown == cli {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
        false
    });
    assert!(agreed, "the page's numbers never matched `ebb vms --json`; the page: {seen}");
    assert_eq!(page.eval("document.querySelectorAll('button[data-action]').length").unwrap(), 0, "a read token shows no actions");
    page.wait_for("Number(document.getElementById('memory-chart').dataset.points) >= 1 && document.querySelectorAll('#memory-chart polygon').length >= 2", Duration::from_secs(15)).unwrap();
    page.wait_for("document.querySelectorAll('#journal tbody tr[data-kind=set_balloon_target]').length >= 1", Duration::from_secs(5)).unwrap();
    page.screenshot(&shots.join("web-vms.png")).unwrap();

    let mut page = browser.open(&url(WRITE_TOKEN)).unwrap();
    let row = format!("document.querySelector('#vms tr[data-vm=\"{sleeper}\"]')");
    page.wait_for(&format!("{row} && {row}.querySelector('button[data-action=sleep]')"), Duration::from_secs(20)).unwrap();
    page.eval(&format!("{row}.querySelector('button[data-action=sleep]').click()")).unwrap();
    // The answer comes once the VM is saved; the page shows it asleep within 2 s of that.
    page.wait_for("/: done/.test(document.getElementById('action-result').textContent)", Duration::from_secs(90)).unwrap();
    let shown = page.wait_for(&format!("{row}.querySelector('[data-field=state]').dataset.value === 'asleep'"), Duration::from_secs(2));
    let took = shown.unwrap_or_else(|e| panic!("the page did not show the sleep within 2 s: {e}"));
    println!("the page showed the sleep {} ms after the agent's answer", took.as_millis());
    assert!(agent.vm(sleeper).unwrap().sleeping.is_some());
    page.wait_for(&format!("document.querySelector('#timeline rect[data-vm=\"{sleeper}\"]') !== null"), Duration::from_secs(5)).unwrap();
    page.screenshot(&shots.join("web-asleep.png")).unwrap();
    page.eval(&format!("{row}.querySelector('button[data-action=wake]').click()")).unwrap();
    page.wait_for(&format!("document.querySelector('#vms tr[data-vm=\"{sleeper}\"] [data-field=state]').dataset.value === 'running'"), Duration::from_secs(60)).unwrap();
    assert!(agent.vm(sleeper).unwrap().sleeping.is_none());
    assert_eq!(page.console_errors(), Vec::<String>::new(), "the page threw");
    println!("screenshots in {}", shots.display());
}

#[test]
fn a_busy_guest_gets_memory_from_an_idle_one_with_no_oom_kill() {
    let prefix = "ebb-test-giveback-";
    let (busy_name, idle_name) = (format!("{prefix}busy"), format!("{prefix}idle"));
    let (_lab, dir, [busy, idle]) = guests(prefix, ["busy", "idle"], MIB, |_, _| {});

    let pool = Bytes::from_mib(640);
    let (agent_lines, rest) = agent_config(prefix, "pool = \"640MiB\"");
    let agent = AgentProc::start(dir.path(), &agent_lines, &rest);
    let names = [busy_name.as_str(), idle_name.as_str()];
    let vms = fit_the_pool(&agent, "the guests to fit the pool", &names, pool);
    let busy_before = find(&vms, &busy_name).memory.actual.unwrap();
    let idle_before = find(&vms, &idle_name).memory.actual.unwrap();

    // Far more than the busy guest has free (about 240 MiB at its share of
    // 320 MiB): it can only finish with memory taken from the idle one.
    let want = 340;
    busy.start_mem_workload(want, 8, 250, 0).unwrap();
    let status = wait_for("the workload to hold its memory", Duration::from_secs(120), || {
        let s = busy.status().ok()?;
        assert_ne!(s.workload_state, "failed", "the workload failed: {:?}", s.raw);
        (s.workload_state == "holding" && s.workload_mib >= want).then_some(s)
    });
    assert_eq!(status.oom_kills, 0, "ebb let the busy guest run out of memory: {}", busy.console_log());
    let vms = fit_the_pool(&agent, "the pool to settle again", &names, pool);
    let (vb, vi) = (find(&vms, &busy_name), find(&vms, &idle_name));
    let grown = vb.memory.actual.unwrap();
    assert!(grown > busy_before + Bytes::from_mib(100), "busy did not grow: {busy_before} → {grown}");
    assert!(grown >= Bytes::from_mib(want), "busy holds {want} MiB in {grown}?");
    assert!(vi.memory.actual.unwrap() < idle_before, "idle did not give: {idle_before} → {:?}", vi.memory.actual);
    let grows = agent.events(Some(&busy_name));
    assert!(
        grows.iter().any(|e| matches!(e.rule.as_deref(), Some("give_back") | Some("grow")) && e.outcome.as_deref() == Some("ok")),
        "{grows:?}"
    );
    assert_eq!(busy.status().unwrap().oom_kills, 0);
    assert_eq!(idle.status().unwrap().oom_kills, 0);
    assert!(!busy.console_log().contains("Out of memory"), "{}", busy.console_log());

    // The workload ends: its memory goes back to the pool for the idle guest.
    busy.release_mem_workload().unwrap();
    agent.wait("the idle guest to get memory back", Duration::from_secs(60), |agent| {
        let vms = agent.vms();
        (find(&vms, &idle_name).memory.actual? > vi.memory.actual.unwrap() + Bytes::from_mib(64)).then_some(())
    });

    // A burst faster than any tick: 300 MiB in one write, more than the
    // guest has available at its share. Its balloon's deflate-on-OOM is the
    // safety net; ebb follows it and makes the pool up from the idle guest.
    fit_the_pool(&agent, "the pool to settle before the burst", &names, pool);
    // What the workload gave back is reclaimed at ebb's pace: wait until the
    // guest is back near its share, where 300 MiB is more than it has.
    let (available, at_burst) = agent.wait("the busy guest back near its share", Duration::from_secs(90), |agent| {
        let available = busy.status().ok()?.mem_available;
        let at = find(&agent.vms(), &busy_name).memory.actual?;
        (available < Bytes::from_mib(300)).then_some((available, at))
    });
    assert!(available < Bytes::from_mib(300), "no burst: {available} available at {at_burst}");
    let idle_at_burst = find(&agent.vms(), &idle_name).memory.actual.unwrap();
    let t0 = std::time::Instant::now();
    busy.start_mem_workload(300, 300, 0, 0).unwrap();
    // The pool is to be back within its limit while the guest holds the
    // memory, taken from the idle guest, within 15 ticks of 1 s: generous
    // for a loaded 2-core machine (measured: 1.4–4 s). Before, a stale
    // reading of the guest's old size was taken for a deflation, and in
    // some runs held the pool over for good.
    let bound = Duration::from_secs(15);
    let (mut answered, mut probes, mut over, mut back, mut at_bound) = (0, 0, false, None, None);
    while t0.elapsed() < Duration::from_secs(45) {
        probes += 1;
        let st = busy.status();
        answered += st.is_ok() as u32;
        let holding = st.as_ref().is_ok_and(|s| s.workload_state == "holding");
        let vms = agent.vms();
        let sum = total(&vms, &names);
        let within = sum <= pool + Bytes::from_mib(1);
        over |= !within;
        if holding && over && back.is_none() && within {
            back = Some(t0.elapsed());
        }
        if holding && t0.elapsed() >= bound {
            at_bound = Some((sum, find(&vms, &idle_name).memory.actual.unwrap()));
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let status = busy.status().unwrap();
    eprintln!(
        "burst: {at_burst} guest, {available} available, 300 MiB at once; the pool seen over: {over}, back within it after {back:?}; \
         {answered}/{probes} probes answered; oom kills {}",
        status.oom_kills
    );
    assert_eq!(status.workload_state, "holding", "the burst did not complete: {:?}", status.raw);
    assert_eq!(status.oom_kills, 0, "the burst got something OOM-killed: {}", busy.console_log());
    assert!(!busy.console_log().contains("Killed process"), "{}", busy.console_log());
    assert_eq!(answered, probes, "the guest's service missed probes during the burst");
    let (sum, idle_now) = at_bound.expect("the burst never held its memory");
    assert!(sum <= pool + Bytes::from_mib(1), "the guests hold {sum} of the {pool} pool {bound:?} after the burst\n{}", agent.text(&["vms"]));
    assert!(idle_now < idle_at_burst, "the idle guest gave nothing: {idle_at_burst} → {idle_now}");
    let vms = agent.vms();
    assert!(find(&vms, &busy_name).memory.actual.unwrap() >= Bytes::from_mib(300), "{:?}", find(&vms, &busy_name).memory);
    // The guest deflated itself (ebb saw it), or ebb's give-back outran it.
    let deflated = find(&vms, &busy_name).memory.deflated.is_some();
    let gave = agent.events(Some(&busy_name)).iter().rev().take(20).any(|e| matches!(e.rule.as_deref(), Some("give_back" | "back_off" | "grow")));
    assert!(deflated || gave || !over, "ebb neither saw the guest deflate itself nor gave it memory");
    let explain = agent.text(&["explain", &busy_name]);
    assert!(!deflated || explain.contains("back from its balloon itself"), "{explain}");
    for g in [&busy, &idle] {
        for _ in 0..3 {
            assert!(g.status().is_ok(), "{} stopped answering after the burst", g.name());
        }
    }
}

#[test]
fn sigkill_mid_reclaim_then_libvirtd_restart_loses_nothing() {
    let prefix = "ebb-test-crash-";
    let (a_name, b_name) = (format!("{prefix}a"), format!("{prefix}b"));
    let (_lab, dir, [a, b]) = guests(prefix, ["a", "b"], MIB, |_, _| {});

    // Small fixed steps so the reclaim takes many ticks and the kill lands inside it.
    let pool = Bytes::from_mib(600);
    let (agent_lines, rest) = agent_config(prefix, "pool = \"600MiB\"\nstep_min = \"16MiB\"\nstep_max = \"16MiB\"");
    let mut agent = AgentProc::start(dir.path(), &agent_lines, &rest);
    agent.wait("the reclaim to begin", Duration::from_secs(60), |agent| {
        let n = agent.events(None).iter().filter(|e| e.kind == "set_balloon_target" && e.outcome.as_deref() == Some("ok")).count();
        (n >= 2).then_some(())
    });
    agent.kill9();
    let names = [a_name.as_str(), b_name.as_str()];
    for g in [&a, &b] {
        assert!(g.domain().is_active().unwrap(), "{} stopped when ebb was killed", g.name());
        assert!(g.status().is_ok(), "{} does not answer after ebb was killed", g.name());
    }

    // Restarted on the same journal: it resumes and converges.
    let mut agent = agent.start_again();
    let vms = fit_the_pool(&agent, "convergence after the restart", &names, pool);
    let events = agent.events(None);
    assert_eq!(events.iter().filter(|e| e.kind == "started").count(), 2, "one journal across both runs");
    assert!(vms.iter().all(|v| v.memory.step == Bytes::from_mib(16)));

    // libvirtd restarts under the agent: it shows the loss, reconnects, goes on.
    assert!(Command::new("pkill").args(["-x", "libvirtd"]).status().unwrap().success());
    agent.wait("ebb to notice libvirtd is gone", Duration::from_secs(30), |agent| {
        matches!(agent.status().connection, Connection::Disconnected { .. }).then_some(())
    });
    let text = agent.text(&["status"]);
    assert!(text.contains("DISCONNECTED"), "{text}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(Command::new("libvirtd").arg("-d").status().unwrap().success());
    agent.wait("ebb to reconnect", Duration::from_secs(60), |agent| {
        let s = agent.status();
        (matches!(s.connection, Connection::Connected { .. }) && s.vms >= 2).then_some(())
    });
    let kinds: Vec<String> = agent.events(None).into_iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&"disconnected".into()), "{kinds:?}");
    agent.stop();

    // The guests ran through all of it. The old connection died with
    // libvirtd: check and clean up through a new one.
    let lab = Lab::connect(URI).unwrap();
    for name in names {
        let dom = lab.connection().lookup_domain_by_name(name).unwrap();
        assert!(dom.is_active().unwrap(), "{name} is not running");
    }
    assert_eq!(a.status().unwrap().oom_kills + b.status().unwrap().oom_kills, 0);
    drop((a, b));
    lab.remove_leftovers(prefix).unwrap();
}

fn qemu_running(name: &str) -> bool {
    Command::new("pgrep").args(["-f", &format!("guest={name},")]).output().map(|o| o.status.success()).unwrap_or(false)
}

#[test]
fn an_idle_guest_sleeps_and_wakes_across_an_agent_restart_and_virsh_start() {
    let prefix = "ebb-test-sleep-";
    let name = format!("{prefix}a");
    // The sleep opt-in travels with the domain, in its metadata. TCG guests
    // idle at a few % of a vCPU: a generous CPU threshold.
    let (lab, dir, [g]) = guests(prefix, ["a"], MIB, |_, spec| {
        spec.metadata = Some(
            "<ebb:vm xmlns:ebb='https://ebb.dev/xmlns/vm/1'><ebb:sleep idle_after='3s' cpu_threshold='0.3'/></ebb:vm>".into(),
        )
    });
    assert!(qemu_running(&name), "cannot find the guest's QEMU process");

    let (agent_lines, _) = agent_config(prefix, "");
    let mut agent = AgentProc::start(dir.path(), &agent_lines, "");
    let vm = agent.wait("the idle guest to sleep", Duration::from_secs(90), |a| a.vm(&name).filter(|v| v.sleeping.is_some()));
    assert!(vm.sleeping.unwrap().reason.contains("idle for"));
    let dom = lab.connection().lookup_domain_by_name(&name).unwrap();
    assert!(!dom.is_active().unwrap(), "still running after sleep");
    assert!(dom.has_managed_save(0).unwrap(), "no saved image");
    assert!(!qemu_running(&name), "the QEMU process (its memory) is still there");
    assert!(agent.text(&["vms"]).contains("asleep (save)"));
    let explain = agent.text(&["explain", &name]);
    assert!(explain.contains("saved to disk"), "{explain}");
    assert!(explain.contains("the domain's ebb metadata says so"), "{explain}");

    // Restarted, ebb still knows it holds the VM asleep (from its journal).
    agent.stop();
    let agent = agent.start_again();
    let vm = agent.wait("the restarted agent to see the guest", Duration::from_secs(30), |a| a.vm(&name));
    assert!(vm.sleeping.is_some(), "forgotten across a restart");

    // Started behind ebb's back: noticed, no longer held asleep.
    let out = Command::new("virsh").args(["-c", URI, "start", &name]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    agent.wait("ebb to notice the start", Duration::from_secs(30), |a| a.vm(&name).filter(|v| v.sleeping.is_none()));
    assert!(agent.events(Some(&name)).iter().any(|e| e.kind == "woke_outside"));

    // Sleep and wake on request; the guest's service answers after the wake.
    g.wait_ready(Duration::from_secs(60)).unwrap();
    let out = agent.cli(&["sleep", &name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dom.is_active().unwrap());
    let out = agent.cli(&["wake", &name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dom.is_active().unwrap());
    let status = g.status().or_else(|_| {
        g.wait_ready(Duration::from_secs(30))?;
        g.status()
    });
    assert!(status.is_ok(), "the guest's service does not answer after the wake: {status:?}");
    let events = agent.events(Some(&name));
    assert!(events.iter().any(|e| e.kind == "wake" && e.outcome.as_deref() == Some("ok")));
    let metrics = agent.text(&["metrics"]);
    assert!(metrics.contains("ebb_wakes_total 1"), "{metrics}");
}

/// One HTTP/1.0 GET to 127.0.0.1:port: (status line, body).
fn http_get(port: u16, path: &str, timeout: Duration) -> std::io::Result<(String, String)> {
    http_get_at(std::net::SocketAddr::from(([127, 0, 0, 1], port)), path, timeout)
}

fn http_get_at(addr: std::net::SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: ebb-test\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((head.lines().next().unwrap_or("").to_string(), body.to_string()))
}

/// The guest sits on the lab's bridge, as a production guest on a tap: its
/// requests do not go through QEMU's user-mode forward, which under load
/// lost one of 200 (a capture showed the 48 bytes ebb replayed taken by
/// QEMU's socket at once, and the guest's httpd answering "408: no request
/// within 60 s" a minute later).
#[test]
fn a_sleeping_guest_behind_the_surrogate_answers_every_client() {
    use ebb_lab::lab::{LabNet, LAB_NETNS, LAB_NET_HOST};
    let prefix = "ebb-test-surrogate-";
    let name = format!("{prefix}a");
    let net = LabNet::ensure().unwrap();
    let lab = net.lab().unwrap();
    lab.remove_leftovers(prefix).unwrap();
    let ip = LabNet::guest_ip(3);
    let (lab, dir, [g]) = guests_on(lab, prefix, ["a"], MIB, |_, s| {
        s.http_port = None;
        s.lab_net = Some(ip);
    });
    let listen = std::net::SocketAddr::from((LAB_NET_HOST, 8081));
    let get = |path: &str, timeout: Duration| net.run(|| http_get_at(listen, path, timeout)).unwrap();
    // A client the guest's full accept queue dropped waits out TCP's SYN
    // backoff (1, 3, 7, 15, 31 s…): on a loaded machine a few of 200 have
    // taken past the default 60 s bound. Their answers are what this test
    // asks for; the tail is printed.
    let rest = format!(
        "[surrogate]\nreplay_deadline = \"90s\"\n\
         [vm.{name}.sleep]\nidle_after = \"3s\"\ncpu_threshold = 0.3\n\
         [[vm.{name}.service]]\nname = \"http\"\nlisten = \"{listen}\"\nbackend = \"{ip}:80\"\nhttp = true\n\
         [[vm.{name}.service.canned]]\nmethod = \"GET\"\npath = \"/healthz\"\nstatus = 200\nbody = \"ok from ebb\"\n"
    );
    let agent_lines = format!("uri = \"{}\"\ndomains = [\"{prefix}*\"]\ntick = \"1s\"", net.uri());
    let through = ["nsenter".to_string(), format!("--net=/var/run/netns/{LAB_NETNS}"), "--".into()];
    let mut agent = AgentProc::start_through(dir.path(), &agent_lines, &rest, &through);
    let guest_says = format!("ebb guest {name}");

    // Awake: the surrogate splices through to the guest.
    let (status, body) = get("/", Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}; the agent's log:\n{}", agent.log_text()));
    assert!(status.contains("200") && body.contains(&guest_says), "{status} {body}");

    // Asleep: the health check is answered without waking the VM.
    agent.wait("the guest to sleep", Duration::from_secs(90), |a| a.vm(&name).filter(|v| v.sleeping.is_some()));
    let dom = lab.connection().lookup_domain_by_name(&name).unwrap();
    assert!(!qemu_running(&name));
    let (status, body) = get("/healthz", Duration::from_secs(5)).unwrap();
    assert!(status.contains("200") && body == "ok from ebb", "{status} {body}");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!dom.is_active().unwrap(), "a health check woke the VM");

    // 200 clients at once: one wake; each gets the guest's own answer to its
    // own request, and the guest's log shows every request exactly once.
    // (Sent straight to the guest at once, most of them stall: its httpd
    // listens with a backlog of 9. The surrogate paces them.)
    let n = 200;
    let started = std::time::Instant::now();
    let (answers, mut took): (Vec<_>, Vec<_>) = net
        .run(|| {
            // Threads made here are in the namespace too.
            let clients: Vec<_> = (0..n)
                .map(|i| {
                    std::thread::spawn(move || {
                        let r = http_get_at(listen, &format!("/cgi-bin/hit?{i}"), Duration::from_secs(150));
                        (r, started.elapsed())
                    })
                })
                .collect();
            clients.into_iter().map(|c| c.join().unwrap()).unzip()
        })
        .unwrap();
    took.sort();
    let at = |p: f64| took[((took.len() as f64 * p) as usize).min(took.len() - 1)].as_secs_f64();
    eprintln!("{n} clients of a sleeping guest answered in {:.1} s (median {:.1} s, p99 {:.1} s)", at(1.0), at(0.5), at(0.99));
    let wrong: Vec<_> = answers
        .iter()
        .enumerate()
        .filter(|(i, r)| !matches!(r, Ok((s, b)) if s.contains("200") && b.contains(&format!("ebb guest {name} hit {i}\n"))))
        .collect();
    let hits = g.http_get("/cgi-bin/hits").unwrap();
    if !wrong.is_empty() {
        // Whether the guest ever ran the unanswered requests tells a request
        // lost on the way in from an answer lost on the way out.
        let served: Vec<&str> = hits.lines().collect();
        let fate: Vec<_> = wrong.iter().map(|(i, _)| (i, served.iter().position(|h| *h == i.to_string()))).collect();
        let console = g.console_log();
        let tail: Vec<&str> = console.lines().rev().take(30).collect();
        let why = format!(
            "{} of {n} did not get their own answer; e.g. {:?}\n(client, its place in the guest's log of {} served): {fate:?}\nguest console, last lines:\n{}",
            wrong.len(),
            &wrong[..wrong.len().min(3)],
            served.len(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        // The reason first: CI keeps the head of a long output.
        eprintln!("{why}\nagent log:\n{}", agent.log_text());
        panic!("{why}");
    }
    let mut served: Vec<usize> = hits.lines().map(|l| l.parse().unwrap()).collect();
    served.sort();
    assert_eq!(served, (0..n).collect::<Vec<_>>(), "the guest served some request twice or never");
    assert!(dom.is_active().unwrap());
    let wakes: Vec<_> = agent.events(Some(&name)).into_iter().filter(|e| e.kind == "wake").collect();
    assert_eq!(wakes.len(), 1, "{wakes:?}");
    assert!(wakes[0].text.contains("client") && wakes[0].outcome.as_deref() == Some("ok"), "{:?}", wakes[0]);
    let vm = agent.vm(&name).unwrap();
    let sur = vm.surrogate.unwrap();
    assert!(sur.answered_locally >= 1 && sur.refused == 0, "{sur:?}");

    // Restarted while the VM sleeps: the port is served again and a request wakes it.
    agent.wait("the guest to sleep again", Duration::from_secs(90), |a| a.vm(&name).filter(|v| v.sleeping.is_some()));
    agent.stop();
    let agent = agent.start_again();
    let (status, body) = get("/", Duration::from_secs(60)).unwrap();
    assert!(status.contains("200") && body.contains(&guest_says), "{status} {body}");
    assert!(dom.is_active().unwrap());
    assert!(agent.text(&["explain", &name]).contains("serves its services"));
}

#[test]
fn the_surrogate_bounds_hold_on_a_real_guest_slow_client_overflow_failed_wake() {
    let prefix = "ebb-test-bounds-";
    let name = format!("{prefix}a");
    let (_lab, dir, [g]) = guests(prefix, ["a"], MIB, |_, _| {});
    let (backend, listen) = (g.http_port().unwrap(), free_port());
    let rest = format!(
        "[surrogate]\nqueue_depth = 5\nwake_deadline = \"20s\"\n\
         [[vm.{name}.service]]\nname = \"http\"\nlisten = \"127.0.0.1:{listen}\"\nbackend = \"127.0.0.1:{backend}\"\nhttp = true\n"
    );
    // A slow tick: sleep and wake here are event-driven, and no tick may
    // notice the VM vanishing before the failed wake below.
    let agent_lines = format!("uri = \"{URI}\"\ndomains = [\"{prefix}*\"]\ntick = \"30s\"");
    let agent = AgentProc::start(dir.path(), &agent_lines, &rest);
    let guest_says = format!("ebb guest {name}");
    let sleep = || {
        let out = agent.cli(&["sleep", &name]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };

    // A client that sends its request a byte at a time while the VM wakes.
    sleep();
    let slow = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", listen)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        for b in b"GET / HTTP/1.0\r\nHost: slow\r\n\r\n" {
            s.write_all(&[*b]).unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    assert!(slow.starts_with("HTTP/1.1 200") && slow.contains(&guest_says), "{slow}");

    // Past the queue depth: refused at once with a 503 that says why; the queued ones succeed.
    g.wait_ready(Duration::from_secs(60)).unwrap();
    sleep();
    let clients: Vec<_> = (0..15)
        .map(|_| std::thread::spawn(move || http_get(listen, "/", Duration::from_secs(60))))
        .collect();
    let answers: Vec<_> = clients.into_iter().map(|c| c.join().unwrap().unwrap()).collect();
    let served = answers.iter().filter(|(s, b)| s.contains("200") && b.contains(&guest_says)).count();
    let refused: Vec<_> = answers.iter().filter(|(s, _)| s.contains("503")).collect();
    assert_eq!(served + refused.len(), 15, "{answers:?}");
    assert!(served >= 5, "the queued clients must succeed: {answers:?}");
    assert!(!refused.is_empty() && refused.iter().all(|(_, b)| b.contains("queue")), "{refused:?}");

    // A wake libvirt refuses (the domain was undefined while it slept) ends
    // every held client with a refusal, and is reported. (A corrupt image
    // is no such case: libvirt drops it and boots the VM afresh.)
    g.wait_ready(Duration::from_secs(60)).unwrap();
    sleep();
    let out = Command::new("virsh").args(["-c", URI, "undefine", &name, "--managed-save"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t0 = std::time::Instant::now();
    let (status, body) = http_get(listen, "/", Duration::from_secs(30)).unwrap();
    assert!(status.contains("503") && body.contains("wake failed"), "{status} {body}");
    assert!(t0.elapsed() < Duration::from_secs(20), "refused only after {:?}", t0.elapsed());
    let failed = agent.events(Some(&name)).into_iter().find(|e| e.kind == "wake" && e.failed);
    assert!(failed.is_some(), "the failed wake is not journaled");
    assert!(agent.text(&["explain", &name]).contains("wake failed"));
}

/// The surrogate's promise at scale, on a realistic network path: the
/// guest's virtio-net on a tap on the bridge of the lab's own network
/// namespace, with ebb and its clients in that namespace (QEMU's user-mode
/// forward loses clients of its own under such crowds). One guest serves a
/// crowd of 10,000 clients at once, `ab -n 2000 -c 1000`, and 1,000 clients
/// of its request log, each while it sleeps. Every client gets the service's
/// answer or ebb's 503 saying why, none is lost, none waits past the bound
/// (wake_deadline + replay_deadline, measured per client from its connect,
/// with slack for its SYN retries while ebb's own backlog is full), and the
/// guest serves every answered request once and never one refused unsent.
#[test]
fn crowds_at_a_sleeping_guest_on_a_real_network_are_answered_or_refused_within_the_bound() {
    use ebb_lab::crowd::{self, Outcome};
    use ebb_lab::lab::{LabNet, LAB_NETNS, LAB_NET_HOST};
    let prefix = "ebb-test-crowd-";
    let net = LabNet::ensure().unwrap();
    let lab = net.lab().unwrap();
    lab.remove_leftovers(prefix).unwrap();
    let name = format!("{prefix}a");
    let ip = LabNet::guest_ip(1);
    let (lab, dir, [g]) = guests_on(lab, prefix, ["a"], 256, |_, s| {
        s.http_port = None;
        s.lab_net = Some(ip);
    });
    let listen = std::net::SocketAddr::from((LAB_NET_HOST, 8080));
    let rest = format!(
        "[surrogate]\nwake_deadline = \"30s\"\nreplay_deadline = \"30s\"\n\
         [[vm.{name}.service]]\nname = \"http\"\nlisten = \"{listen}\"\nbackend = \"{ip}:80\"\nhttp = true\n"
    );
    let bound = Duration::from_secs(60);
    // Event-driven sleeps and wakes. The agent raises its own soft limit
    // on descriptors to the hard one (20,000 here).
    let agent_lines = format!("uri = \"{}\"\ndomains = [\"{prefix}*\"]\ntick = \"30s\"", net.uri());
    let through = ["nsenter".to_string(), format!("--net=/var/run/netns/{LAB_NETNS}"), "--".into()];
    let agent = AgentProc::start_through(dir.path(), &agent_lines, &rest, &through);
    let sleep = || {
        let out = agent.cli(&["sleep", &name]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!g.domain().is_active().unwrap(), "still running after sleep");
    };
    let within_bound = |c: &crowd::Crowd, what: &str| {
        let tally = c.tally();
        eprintln!("{what}: {tally:?}, slowest {:?}, answered p50 {:?} p99 {:?}", c.slowest(), c.answer_time(0.5), c.answer_time(0.99));
        assert_eq!(c.lost(), 0, "{what}: lost clients: {tally:?}");
        assert!(tally.keys().all(|k| !k.starts_with("reset")), "{what}: an HTTP client was reset: {tally:?}");
        assert!(c.slowest() <= bound + Duration::from_secs(15), "{what}: a client waited {:?}, past the bound of {bound:?}", c.slowest());
    };

    // 10,000 at once at the sleeping VM.
    sleep();
    let big = net.run(|| crowd::run(listen, 10_000, |_| "/".into(), Duration::from_secs(120))).unwrap().unwrap();
    within_bound(&big, "10,000 clients");
    // How many the guest answers in the bound depends on the CPU it gets
    // (it is emulated, and shares two cores): some, at least.
    assert!(big.answered() >= 100, "{:?}", big.tally());
    let wakes = agent.events(Some(&name)).into_iter().filter(|e| e.kind == "wake").count();
    assert_eq!(wakes, 1, "one wake serves the crowd");

    // ab, a standard load tool: every request completes, non-2xx only ebb's
    // 503 (whose length differs from the page's: ab's "Length" failures).
    g.wait_ready(Duration::from_secs(60)).unwrap();
    sleep();
    let out = net.command("ab").args(["-n", "2000", "-c", "1000", "-s", "90", &format!("http://{listen}/")]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("ab -n 2000 -c 1000 at the sleeping VM:\n{text}");
    if !out.status.success() {
        let log = agent.log_text();
        let refusals: Vec<&str> = log.lines().filter(|l| l.contains("refused")).take(5).collect();
        let console = g.console_log();
        panic!(
            "ab failed: {}\n{text}\nagent refusals: {refusals:#?}\nguest console tail: {}",
            String::from_utf8_lossy(&out.stderr),
            &console[console.len().saturating_sub(2000)..]
        );
    }
    let field = |key: &str| -> usize {
        text.split(key).nth(1).and_then(|r| r.trim_start().split([' ', ',', ')', '\n']).next()?.parse().ok()).unwrap_or(0)
    };
    assert_eq!(field("Complete requests:"), 2000, "{text}");
    assert_eq!((field("(Connect:"), field("Receive:"), field("Exceptions:")), (0, 0, 0), "{text}");
    // ab takes a body of another length than the first for a failure: that
    // is ebb's 503, a non-2xx answer, and nothing else.
    assert!(field(", Length:") <= field("Non-2xx responses:"), "{text}");

    // Exactly once: 1,000 clients of the guest's request log.
    g.wait_ready(Duration::from_secs(60)).unwrap();
    let _ = g.http_get("/cgi-bin/hits");
    sleep();
    let hits = net.run(|| crowd::run(listen, 1000, |i| format!("/cgi-bin/hit?{i}"), Duration::from_secs(120))).unwrap().unwrap();
    within_bound(&hits, "1,000 request-log clients");
    let log = g.http_get("/cgi-bin/hits").unwrap();
    let mut served = vec![0usize; 1000];
    for l in log.lines() {
        served[l.trim().parse::<usize>().unwrap()] += 1;
    }
    for (i, (o, _)) in hits.outcomes.iter().enumerate() {
        match o {
            Outcome::Answered { status: 200, body } => {
                assert!(body.contains(&format!("hit {i}\n")), "client {i} got another's answer: {body}");
                assert_eq!(served[i], 1, "client {i} answered, its request served {} times", served[i]);
            }
            Outcome::Refused(why) if why.contains("it was not sent,") => assert_eq!(served[i], 0, "client {i}: {why}"),
            _ => assert!(served[i] <= 1, "client {i} ({o:?}) served {} times", served[i]),
        }
    }
    assert!(hits.answered() >= 100, "{:?}", hits.tally());
    drop(agent);
    drop(g);
    lab.remove_leftovers(prefix).unwrap();
}

/// A VNC viewer's handshake as RFB 3.8 has it: version, security None,
/// ClientInit (shared), ServerInit. Returns the connection, kept open.
fn rfb_session(port: u16) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut version = [0u8; 12];
    s.read_exact(&mut version).unwrap();
    assert!(version.starts_with(b"RFB 003."), "{version:?}");
    s.write_all(b"RFB 003.008\n").unwrap();
    let mut n = [0u8; 1];
    s.read_exact(&mut n).unwrap();
    let mut types = vec![0u8; n[0] as usize];
    s.read_exact(&mut types).unwrap();
    assert!(types.contains(&1), "no security type None: {types:?}");
    s.write_all(&[1]).unwrap();
    let mut result = [0u8; 4];
    s.read_exact(&mut result).unwrap();
    assert_eq!(result, [0; 4], "security result");
    s.write_all(&[1]).unwrap();
    // ServerInit: width, height, pixel format (16), name length, name.
    let mut init = [0u8; 24];
    s.read_exact(&mut init).unwrap();
    let mut name = vec![0u8; u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize];
    s.read_exact(&mut name).unwrap();
    s
}

/// Seed 002's console sessions, from libvirt's graphics events on a real
/// guest: a viewer counts once through its handshake, its disconnect
/// starts its timer, an agent started while it is connected finds it
/// (events are not replayed), and a save ends it (libvirt says nothing).
#[test]
fn a_vnc_session_is_a_client_until_it_disconnects_and_a_save_ends_it() {
    use ebb_core::clients::{ClientKind, ClientView};
    let prefix = "ebb-test-console-";
    let name = format!("{prefix}a");
    let (_lab, dir, [_g]) = guests(prefix, ["a"], 128, |_, s| s.vnc = true);
    let out = Command::new("virsh").args(["-c", URI, "vncdisplay", &name]).output().unwrap();
    let display = String::from_utf8_lossy(&out.stdout);
    let port = 5900 + display.trim().trim_start_matches("127.0.0.1").trim_start_matches(':').parse::<u16>().unwrap_or_else(|_| panic!("vncdisplay: {display:?}"));
    let agent_lines = format!("uri = \"{URI}\"\ndomains = [\"{prefix}*\"]\ntick = \"500ms\"");
    let rest = "[memory]\nenabled = false\n[clients]\nconsole_idle = \"10m\"\n";
    let mut agent = AgentProc::start(dir.path(), &agent_lines, rest);
    agent.wait("the guest", Duration::from_secs(30), |a| a.vm(&name));
    let consoles = |a: &AgentProc| -> Vec<ClientView> { a.json::<Vec<ClientView>>(&["clients"]).into_iter().filter(|c| c.kind == ClientKind::Console).collect() };

    // A bare probe of the port is no session.
    drop(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
    let viewer = rfb_session(port);
    let me = viewer.local_addr().unwrap().to_string();
    let c = agent.wait("the console session", Duration::from_secs(10), |a| consoles(a).into_iter().find(|c| c.id == me));
    assert_eq!((c.vm.as_str(), c.open, c.expires_at), (name.as_str(), 1, None));
    assert_eq!(consoles(&agent).len(), 1, "the probe counted: {:?}", consoles(&agent));
    assert!(agent.text(&["clients"]).contains("console"));

    // The viewer leaves: its timer runs for console_idle.
    drop(viewer);
    let c = agent.wait("the disconnect", Duration::from_secs(10), |a| consoles(a).into_iter().find(|c| c.id == me && c.open == 0));
    assert_eq!(c.expires_at.map(|t| t.since(c.last_activity)), Some(600_000));

    // A viewer that connects while no agent runs is found by the next one.
    agent.stop();
    let viewer = rfb_session(port);
    let me2 = viewer.local_addr().unwrap().to_string();
    let agent = AgentProc::start(dir.path(), &agent_lines, rest);
    let c = agent.wait("the session found at start", Duration::from_secs(15), |a| consoles(a).into_iter().find(|c| c.id == me2));
    assert_eq!((c.vm.as_str(), c.open), (name.as_str(), 1));

    // A save closes the viewer with no disconnect event: the VM's stop ends it.
    let out = Command::new("virsh").args(["-c", URI, "managedsave", &name]).output().unwrap();
    assert!(out.status.success(), "managedsave: {}", String::from_utf8_lossy(&out.stderr));
    agent.wait("the save to end the session", Duration::from_secs(15), |a| consoles(a).is_empty().then_some(()));
    assert_eq!(agent.status().active_clients, 0);
    drop(viewer);
}

/// The seed's host sleep on a real guest: a farm host (real etcd) whose
/// only client is a VNC viewer (a real RFB session) stays awake while it
/// watches; when the viewer leaves and its timer and the grace period run
/// out, the guest is saved and the host's sleep recorded; a client's
/// heartbeat wakes the host and the guest is restored and serves again.
#[test]
fn a_farm_host_sleeps_when_its_last_viewer_leaves_and_a_heartbeat_wakes_it_with_its_guest() {
    let prefix = "ebb-test-hostsleep-";
    let name = format!("{prefix}a");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = rt.block_on(ebb_lab::etcd::LocalEtcd::start()).unwrap();
    let (_lab, dir, [g]) = guests(prefix, ["a"], 128, |_, s| s.vnc = true);
    let out = Command::new("virsh").args(["-c", URI, "vncdisplay", &name]).output().unwrap();
    let display = String::from_utf8_lossy(&out.stdout);
    let port = 5900 + display.trim().trim_start_matches("127.0.0.1").trim_start_matches(':').parse::<u16>().unwrap_or_else(|_| panic!("vncdisplay: {display:?}"));
    let agent_lines = format!("uri = \"{URI}\"\ndomains = [\"{prefix}*\"]\ntick = \"500ms\"");
    let rest = format!(
        "[memory]\nenabled = false\n[clients]\nconsole_idle = \"2s\"\n\
         [farm]\nendpoints = [\"{}\"]\nhost = \"h1\"\nlease_ttl = \"2s\"\ntimeout = \"500ms\"\n\
         [farm.wake]\nmac = \"52:54:00:12:34:58\"\nbroadcast = \"127.0.0.1:1\"\n\
         [farm.sleep]\nafter = \"2s\"\nmin_awake = \"1s\"\n",
        etcd.url()
    );
    let agent = AgentProc::start(dir.path(), &agent_lines, &rest);
    let viewer = rfb_session(port);
    agent.wait("the viewer counted", Duration::from_secs(15), |a| a.status().host_sleep.filter(|h| h.why == "1 client is active"));
    // Well past the grace period, the viewer holds the host awake.
    std::thread::sleep(Duration::from_secs(5));
    let h = agent.status().host_sleep.unwrap();
    assert_eq!((h.state.as_str(), h.sleeps_total), ("awake", 0), "{h:?}");
    assert!(qemu_running(&name));

    // The viewer leaves: console_idle (2 s), the grace (2 s), then the sleep.
    drop(viewer);
    let left = std::time::Instant::now();
    agent.wait("the host asleep", Duration::from_secs(60), |a| a.status().host_sleep.filter(|h| h.state == "asleep (recorded)"));
    assert!(left.elapsed() >= Duration::from_secs(4), "slept {:?} after the viewer left", left.elapsed());
    assert!(!qemu_running(&name), "the guest is saved before the host sleeps");
    assert!(agent.vm(&name).unwrap().sleeping.is_some());
    let explained = agent.text(&["explain", "--host"]);
    assert!(explained.contains("1 VM(s) saved"), "{explained}");

    // A client's heartbeat: the host wakes and restores its guest.
    let beat = agent.heartbeat("kiosk", &format!(r#"{{"vm": "{name}", "ttl": "1m"}}"#));
    assert!(beat.status.success(), "{}", String::from_utf8_lossy(&beat.stderr));
    agent.wait("the host awake", Duration::from_secs(60), |a| a.status().host_sleep.filter(|h| h.state == "awake" && h.wakes_total == 1));
    agent.wait("the guest restored", Duration::from_secs(60), |a| a.vm(&name).filter(|v| v.sleeping.is_none()));
    assert!(qemu_running(&name));
    wait_for("the guest's service", Duration::from_secs(30), || g.http_get("/").ok());
    drop(etcd);
}
