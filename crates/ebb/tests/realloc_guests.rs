//! Activity-based reallocation on real (software-emulated) QEMU guests: the
//! guests burn CPU with busy loops, the real `ebb` binary watches them, and
//! the tests read each domain's live CPU weight and cap back from libvirt.
//! These run one at a time with the other real-guest tests (.config/nextest.toml).

mod common;
use common::*;
use ebb_lab::lab::Guest;
use std::time::Duration;

/// The guests' memory.
const MIB: u64 = 256;

/// The domain's live blkio weight, as `virsh blkiotune` reports it.
fn io_weight(g: &Guest) -> u32 {
    let out = std::process::Command::new("virsh").args(["-c", URI, "blkiotune", g.name()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.trim_start().starts_with("weight")).unwrap_or_else(|| panic!("no weight in {text}"));
    line.split(':').nth(1).unwrap().trim().parse().unwrap()
}

/// The domain's live (cpu_shares, vcpu_quota) as libvirt reports them.
fn live(g: &Guest) -> (u64, i64) {
    let info = g.domain().scheduler_parameters_flags(virt::sys::VIR_DOMAIN_AFFECT_LIVE).unwrap();
    (info.cpu_shares.unwrap(), info.vcpu_bw.quota.unwrap_or(-1))
}

/// Memory management off (these tests are about the CPU), a short class
/// window, and an idle threshold above what an idle TCG guest burns.
fn agent_lines(prefix: &str) -> String {
    format!("uri = \"{URI}\"\ndomains = [\"{prefix}*\"]\ntick = \"1s\"")
}

const REALLOC: &str = "[memory]\nenabled = false\n[realloc]\nclass_after = \"3s\"\nidle_cpu = 0.25\n";

#[test]
fn a_busy_guest_at_its_cap_gains_the_idle_one_yields_critical_goes_first_and_a_restart_keeps_it() {
    let prefix = "ebb-test-cpu-";
    let (busy_name, idle_name) = (format!("{prefix}busy"), format!("{prefix}idle"));
    // The busy guest's own cap: 30% of a CPU; the idle one has none.
    let (_lab, dir, [busy, idle]) = guests(prefix, ["busy", "idle"], MIB, |i, spec| {
        if i == 0 {
            spec.cpu_cap = Some((100_000, 30_000));
        }
    });
    let own_busy = live(&busy);
    let own_idle = live(&idle);
    assert_eq!(own_busy.1, 30_000);
    let rest = format!("{REALLOC}[vm.{busy_name}.realloc]\ncpu_cap_max = 1.0\n");
    let mut agent = AgentProc::start(dir.path(), &agent_lines(prefix), &rest);

    // Quiet at first: nobody gains, nothing changes.
    agent.wait("both guests classified", Duration::from_secs(60), |a| {
        let vms = a.vms();
        vms.iter().all(|v| v.realloc.as_ref().is_some_and(|r| r.class.is_some())).then_some(())
    });
    assert_eq!((live(&busy), live(&idle)), (own_busy, own_idle), "changed with nobody busy");

    // The busy guest sits at its cap: its weight and cap rise; the idle one's weight is cut.
    busy.cpu_workload(1, 300).unwrap();
    wait_for("the busy guest raised and the idle one cut", Duration::from_secs(60), || {
        (live(&busy) == (own_busy.0 * 4, 100_000) && live(&idle).0 == own_idle.0 / 4).then_some(())
    });
    let vm = agent.vm(&busy_name).unwrap();
    let r = vm.realloc.unwrap();
    assert_eq!(r.class.map(|c| c.as_str()), Some("cpu-bound"));
    let explain = agent.text(&["explain", &busy_name]);
    assert!(explain.contains("at its cap") && explain.contains("set by ebb"), "{explain}");
    assert!(agent.text(&["vms"]).contains("cpu-bound"));
    let events = agent.events(Some(&busy_name));
    assert!(events.iter().any(|e| e.kind == "set_tune" && e.rule.as_deref() == Some("boost") && e.outcome.as_deref() == Some("ok")));

    // The needs history has this hour's samples (one a tick), busy ones among them.
    let needs: ebb_daemon::api_types::Needs = wait_for("five samples in the needs history", Duration::from_secs(30), || {
        let needs: ebb_daemon::api_types::Needs = agent.json(&["needs", &busy_name]);
        needs.hours.last().is_some_and(|h| h.samples >= 5).then_some(needs)
    });
    let hour = needs.hours.last().unwrap();
    assert!(hour.cpu_p90 >= 0.8, "{needs:?}");
    assert!(agent.text(&["needs", &busy_name]).contains("CPU p90"));

    // Restarted: ebb knows the change is its own (the journal) and neither
    // undoes nor redoes it.
    agent.stop();
    let agent = agent.start_again();
    let r = agent.wait("the restarted agent to see the busy guest", Duration::from_secs(30), |a| {
        a.vm(&busy_name).and_then(|v| v.realloc).filter(|r| r.current.is_some())
    });
    assert_eq!(r.base.map(|b| (b.shares, b.quota_us)), Some((own_busy.0, Some(30_000))), "its own values, from the journal");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(live(&busy), (own_busy.0 * 4, 100_000));
    let kept: ebb_daemon::api_types::Needs = agent.json(&["needs", &busy_name]);
    assert!(kept.hours.last().unwrap().samples >= hour.samples, "the needs history was lost: {kept:?}");
    let sets_after_restart = agent
        .events(Some(&busy_name))
        .iter()
        .filter(|e| e.kind == "set_tune")
        .count();
    assert_eq!(sets_after_restart, 1, "re-applied after the restart");

    // The load stops: both go back to their own values.
    busy.cpu_workload(0, 1).unwrap();
    wait_for("both back to their own values", Duration::from_secs(60), || {
        (live(&busy) == own_busy && live(&idle) == own_idle).then_some(())
    });

    // Time-critical: put first at once, back when cleared.
    let out = agent.cli(&["critical", &idle_name, "on"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the critical guest first", Duration::from_secs(20), || (live(&idle).0 == own_idle.0 * 4).then_some(()));
    assert!(agent.text(&["vms"]).contains("critical"));
    let out = agent.cli(&["critical", &idle_name, "off"]);
    assert!(out.status.success());
    wait_for("the flag cleared", Duration::from_secs(20), || (live(&idle) == own_idle).then_some(()));
    let out = agent.cli(&["needs", "no-such-vm"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no VM named no-such-vm"));
    let out = agent.cli(&["critical", "no-such-vm", "on"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no VM named no-such-vm"));
    for g in [busy, idle] {
        g.remove().unwrap();
    }
}

/// vCPU 0's live affinity as `virsh vcpupin` lists it ("0", "0-1").
fn pinned(g: &Guest) -> String {
    let out = std::process::Command::new("virsh").args(["-c", URI, "vcpupin", g.name(), "--live"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().map(str::trim).find(|l| l.starts_with("0 ")).unwrap_or_else(|| panic!("no vCPU 0 in {text}"));
    line.split_whitespace().nth(1).unwrap().to_string()
}

fn pin(g: &Guest, cpus: &str) {
    let out = std::process::Command::new("virsh").args(["-c", URI, "vcpupin", g.name(), "0", cpus, "--live"]).output().unwrap();
    assert!(out.status.success(), "vcpupin: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn two_cpu_bound_guests_conflict_and_the_one_ebb_may_pin_moves_off_their_busy_cpu_and_back() {
    let prefix = "ebb-test-cpu2-";
    let names = [format!("{prefix}a"), format!("{prefix}b")];
    let (_lab, dir, guests) = guests(prefix, ["a", "b"], MIB, |_, _| {});
    for g in &guests {
        // Both on CPU 0: they wait on each other there.
        pin(g, "0");
    }
    let own: Vec<(u64, i64)> = guests.iter().map(live).collect();
    // Two busy single-vCPU guests ask for both of the host's CPUs. ebb may
    // pin a within both CPUs; b has no bound, so its pinning is its own.
    let rest = format!("{REALLOC}saturated = 0.7\naffinity_hold = \"5s\"\n[vm.{}.realloc]\ncpus = \"0-1\"\n", names[0]);
    let mut agent = AgentProc::start(dir.path(), &agent_lines(prefix), &rest);
    for g in &guests {
        g.cpu_workload(1, 300).unwrap();
    }
    let explain = agent.wait("the conflict", Duration::from_secs(90), |a| {
        let t = a.explain(&names[1])?;
        t.contains("rob").then_some(t)
    });
    assert!(explain.contains(&names[0]), "{explain}");

    // A weight would rob b; a free CPU robs nobody: a moves there.
    wait_for("a moved to CPU 1", Duration::from_secs(120), || (pinned(&guests[0]) == "1").then_some(()));
    assert_eq!(pinned(&guests[1]), "0", "b has no bound and was moved");
    let explain = agent.text(&["explain", &names[0]]);
    assert!(explain.contains("move to CPU 1") && explain.contains("set by ebb (its own: CPU 0)"), "{explain}");
    assert!(agent.text(&["metrics"]).contains(&format!("ebb_vm_pinned_by_ebb{{vm=\"{}\"}} 1", names[0])));
    // The weights and caps stay as they were: still a conflict.
    let now: Vec<(u64, i64)> = guests.iter().map(live).collect();
    assert_eq!(now, own, "robbed one for the other");
    assert!(!agent.events(None).iter().any(|e| e.kind == "set_tune"), "{:?}", agent.events(None));

    // A restarted agent knows the move from its journal: neither undone nor redone.
    let moves = |a: &AgentProc| a.events(None).iter().filter(|e| e.kind == "set_pins").count();
    let before = moves(&agent);
    let (config, socket, journal) = (agent.config.clone(), agent.socket.clone(), agent.journal.clone());
    agent.stop();
    let agent = AgentProc::start_with(dir.path(), config, socket, journal);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!((pinned(&guests[0]), moves(&agent)), ("1".to_string(), before), "{:?}", agent.events(None));

    // Its load gone, a goes back to its own CPU.
    guests[0].cpu_workload(0, 1).unwrap();
    wait_for("a back on CPU 0", Duration::from_secs(60), || (pinned(&guests[0]) == "0").then_some(()));
    let back = agent.events(Some(&names[0])).into_iter().find(|e| e.kind == "set_pins").unwrap();
    assert!(back.text.contains("back on its own CPUs"), "{back:?}");
    for g in guests {
        g.cpu_workload(0, 1).unwrap();
        g.remove().unwrap();
    }
}

/// The live total_bytes_sec of the guest's vda, as `virsh blkdeviotune` reports it.
fn disk_limit(g: &Guest) -> u64 {
    let out = std::process::Command::new("virsh").args(["-c", URI, "blkdeviotune", g.name(), "vda", "--live"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.trim_start().starts_with("total_bytes_sec")).unwrap_or_else(|| panic!("no total_bytes_sec in {text}"));
    line.split(':').nth(1).unwrap().trim().parse().unwrap()
}

#[test]
fn a_disk_bound_guest_gets_the_disk_weight_and_a_higher_io_limit_while_an_idle_one_gives_its_weight_up() {
    let prefix = "ebb-test-disk-";
    // The leftovers first: their QEMUs may hold the images.
    let lab = lab(prefix);
    let (db_name, idle_name) = (format!("{prefix}db"), format!("{prefix}idle"));
    let images = [DiskImage::new(&db_name), DiskImage::new(&idle_name)];
    let (_lab, dir, guests) = guests_on(lab, prefix, ["db", "idle"], MIB, |i, spec| {
        spec.disk = Some(images[i].0.clone());
        spec.io_weight = Some(500);
        // Its own I/O limit: 2 MiB/s.
        spec.disk_limit = Some(2 << 20);
    });
    let (db, idle) = (&guests[0], &guests[1]);
    assert_eq!((io_weight(db), io_weight(idle), disk_limit(db)), (500, 500, 2 << 20));
    // db may have up to 64 MiB/s; idle has no disk_max.
    let rest = format!("{REALLOC}[vm.{db_name}.realloc]\ndisk_max = \"64MiB\"\n");
    let agent = AgentProc::start(dir.path(), &agent_lines(prefix), &rest);
    db.disk_workload(300).unwrap();
    wait_for("the disk weight moved and db's I/O limit raised", Duration::from_secs(60), || {
        (io_weight(db) == 1000 && io_weight(idle) == 125 && disk_limit(db) == 64 << 20).then_some(())
    });
    assert_eq!(disk_limit(idle), 2 << 20, "idle's own limit was changed");
    let r = agent.vm(&db_name).unwrap().realloc.unwrap();
    // Under emulation the writing loop burns a vCPU too: disk-bound or mixed.
    assert!(r.bound.disk && matches!(r.class.map(|c| c.as_str()), Some("disk-bound" | "mixed")), "{r:?}");
    let explain = agent.text(&["explain", &db_name]);
    assert!(explain.contains("disk-bound") && explain.contains("Its disk I/O limit: 64 MiB/s, set by ebb (its own: 2 MiB/s)"), "{explain}");
    db.disk_workload(0).unwrap();
    wait_for("both back to their own disk weight and limit", Duration::from_secs(60), || {
        (io_weight(db) == 500 && io_weight(idle) == 500 && disk_limit(db) == 2 << 20).then_some(())
    });
    for g in guests {
        g.remove().unwrap();
    }
}

/// The live (inbound, outbound) average limits of `dev`, as `virsh domiftune` reports them.
fn domiftune(g: &Guest, dev: &str) -> (u64, u64) {
    let out = std::process::Command::new("virsh").args(["-c", URI, "domiftune", g.name(), dev]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |key: &str| -> u64 {
        let line = text.lines().find(|l| l.trim_start().starts_with(key)).unwrap_or_else(|| panic!("no {key} in {text}"));
        line.split(':').nth(1).unwrap().trim().parse().unwrap()
    };
    (get("inbound.average"), get("outbound.average"))
}

/// Two guests send out of a second NIC (type ethernet, on a tap this test
/// names; nothing is behind it, so the traffic ends there). This host's
/// kernel lacks the tc parts libvirt limits bandwidth with (sfq, police),
/// so no guest can have a limit: ebb must see them net-bound, say there is
/// no limit to raise, say the two conflict, and change no limit.
#[test]
fn net_bound_guests_are_seen_and_explained_and_no_limit_changes() {
    let prefix = "ebb-net-";
    let names = [format!("{prefix}a"), format!("{prefix}b")];
    let taps: Vec<String> = ["a", "b"].iter().map(|s| format!("ebbn{}{s}", std::process::id() % 100_000)).collect();
    let (_lab, dir, guests) = guests(prefix, ["a", "b"], MIB, |i, spec| spec.tap = Some(taps[i].clone()));
    let (a, b) = (&guests[0], &guests[1]);
    assert_eq!((domiftune(a, &taps[0]), domiftune(b, &taps[1])), ((0, 0), (0, 0)));
    let rest = format!("{REALLOC}[vm.{}.realloc]\nnet_max = \"100MiB\"\n", names[0]);
    let agent = AgentProc::start(dir.path(), &agent_lines(prefix), &rest);
    let bound = |agent: &AgentProc, name: &str| {
        agent.vm(name).and_then(|v| v.realloc).filter(|r| r.bound.net && matches!(r.class.map(|c| c.as_str()), Some("net-bound" | "mixed")))
    };

    a.net_workload(300, 4).unwrap();
    let r = agent.wait("the sender net-bound", Duration::from_secs(60), |ag| bound(ag, &names[0]));
    let out = r.rates.unwrap().net_out;
    eprintln!("guest a sends {out}/s out of its second NIC");
    assert!(out >= ebb_core::Bytes::from_mib(1), "{out}/s");
    assert_eq!(r.current.and_then(|t| t.net), Some(ebb_core::NetLimit::default()), "unlimited, read from libvirt");
    let explain = agent.text(&["explain", &names[0]]);
    assert!(explain.contains("no bandwidth limit on its interface: ebb has no limit to raise"), "{explain}");
    assert!(agent.text(&["vms"]).contains("in - out -"));

    b.net_workload(300, 4).unwrap();
    // Under emulation the pingers burn a vCPU each too: the CPU may conflict
    // first; the network's conflict is its own line.
    let conflict = format!("net-bound, as is {}: raising one's bandwidth would only rob the other", names[1]);
    agent.wait("the network conflict", Duration::from_secs(60), |ag| ag.explain(&names[0])?.contains(&conflict).then_some(()));

    for g in &guests {
        g.net_workload(0, 0).unwrap();
    }
    agent.wait("neither net-bound", Duration::from_secs(60), |ag| {
        (bound(ag, &names[0]).is_none() && bound(ag, &names[1]).is_none()).then_some(())
    });
    assert_eq!((domiftune(a, &taps[0]), domiftune(b, &taps[1])), ((0, 0), (0, 0)), "a limit changed");
    for g in guests {
        g.remove().unwrap();
    }
}

/// The vCPUs online in the guest, as `virsh guestvcpus` lists them ("0", "0-1").
fn online_in_guest(g: &Guest) -> Option<String> {
    let out = std::process::Command::new("virsh").args(["-c", URI, "guestvcpus", g.name()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.trim_start().starts_with("online"))?;
    Some(line.split(':').nth(1)?.trim().to_string())
}

#[test]
fn an_idle_guest_keeps_one_vcpu_online_and_gets_both_back_the_moment_it_runs() {
    let prefix = "ebb-test-vcpus-";
    // plain has no guest agent channel: ebb cannot ask that guest, and says so.
    let (_lab, dir, [agent_guest, plain]) = guests(prefix, ["agent", "plain"], MIB, |i, s| {
        s.vcpus = 2;
        s.guest_agent = i == 0;
    });
    wait_for("the guest agent", Duration::from_secs(60), || (online_in_guest(&agent_guest).as_deref() == Some("0-1")).then_some(()));
    let rest = format!("{REALLOC}[vm.{}.realloc]\nvcpus_min = 1\n[vm.{}.realloc]\nvcpus_min = 1\n", agent_guest.name(), plain.name());
    let agent = AgentProc::start(dir.path(), &agent_lines(prefix), &rest);

    // Idle: its guest offlines all but one vCPU.
    wait_for("one vCPU online", Duration::from_secs(90), || (online_in_guest(&agent_guest).as_deref() == Some("0")).then_some(()));
    let explain = agent.text(&["explain", agent_guest.name()]);
    assert!(explain.contains("1 of its 2 vCPUs online"), "{explain}");
    assert!(agent.text(&["metrics"]).contains(&format!("ebb_vm_guest_vcpus_online{{vm=\"{}\"}} 1", agent_guest.name())));
    let explain = agent.text(&["explain", plain.name()]);
    assert!(explain.contains("cannot read its guest's online vCPUs"), "{explain}");

    // It runs: both back at once, not after a class window.
    agent_guest.cpu_workload(2, 120).unwrap();
    wait_for("both vCPUs online", Duration::from_secs(30), || (online_in_guest(&agent_guest).as_deref() == Some("0-1")).then_some(()));
    let events = agent.events(Some(agent_guest.name()));
    let back = events.iter().find(|e| e.kind == "set_guest_vcpus").unwrap();
    assert!(back.text.contains("running again") && back.outcome.as_deref() == Some("ok"), "{back:?}");
    // Busy, it keeps both.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(online_in_guest(&agent_guest).as_deref(), Some("0-1"));
    agent_guest.cpu_workload(0, 1).unwrap();
    for g in [agent_guest, plain] {
        g.remove().unwrap();
    }
}
