//! Power events on real components: a real upsd (nut-server, dummy-ups) on
//! loopback and real QEMU guests. Low battery saves every guest (a guest
//! that cannot be saved is shut down by its own guest OS) and records the
//! host's power-off (no power_off_command is set, so nothing is run); after
//! a restart on mains power ebb restores them from its journal.
//! These run one at a time with the other real-guest tests (.config/nextest.toml).

mod common;
use common::*;
use ebb_lab::lab::Upsd;
use std::time::Duration;

#[test]
fn low_battery_saves_every_guest_shuts_down_one_it_cannot_save_records_the_power_off_and_a_restart_on_mains_restores_them() {
    let prefix = "ebb-test-power-";
    let names = [format!("{prefix}a"), format!("{prefix}b")];
    // A transient domain (undefined while it runs) has nowhere to keep a save.
    let (lab, dir, [a, b, transient]) = guests(prefix, ["a", "b", "transient"], 256, |_, _| {});
    let guests = [a, b];
    transient.domain().undefine().unwrap();
    let upsd = Upsd::start("OL").unwrap();
    let agent_lines = format!("uri = \"{URI}\"\ndomains = [\"{prefix}*\"]\ntick = \"1s\"");
    // b has no UPS client of its own: it is saved first.
    let rest = format!("[memory]\nenabled = false\n[power]\nups = \"{}\"\n[vm.{}]\nhandles_power_events = false\n", upsd.ups(), names[1]);
    let mut agent = AgentProc::start(dir.path(), &agent_lines, &rest);
    agent.wait("the UPS read", Duration::from_secs(20), |a| {
        a.status().power.and_then(|p| p.reading).filter(|r| r.status == "OL")
    });
    assert!(agent.text(&["power"]).contains("on mains"));

    // On battery but not low: nothing is saved.
    upsd.set("OB").unwrap();
    agent.wait("on battery", Duration::from_secs(20), |a| a.status().power.and_then(|p| p.reading).filter(|r| r.on_battery));
    std::thread::sleep(Duration::from_secs(2));
    assert!(guests.iter().chain([&transient]).all(|g| g.domain().is_active().unwrap()));

    // Low battery: every guest saved, the transient one shut down by its
    // guest, then the power-off (recorded).
    upsd.set("OB LB").unwrap();
    let power = agent.wait("every guest saved and the power-off recorded", Duration::from_secs(120), |a| {
        a.status().power.filter(|p| p.last_power_off.is_some())
    });
    let console = transient.console_log();
    assert!(
        console.contains("power button: powering off") && console.contains("reboot: Power down"),
        "the transient guest did not shut itself down: {console}"
    );
    assert!(lab.connection().lookup_domain_by_name(transient.name()).is_err(), "the transient guest still exists");
    assert!(power.last_power_off.unwrap().contains("recorded"));
    let mut saved = power.saved_for_power.clone();
    saved.sort();
    assert_eq!(saved, names.to_vec());
    for g in &guests {
        assert!(!g.domain().is_active().unwrap(), "{} still runs", g.name());
        assert!(g.domain().has_managed_save(0).unwrap(), "{} has no saved image", g.name());
    }
    let text = agent.text(&["power"]);
    assert!(text.contains("LOW BATTERY") && text.contains("power-off: recorded"), "{text}");
    assert!(agent.text(&["metrics"]).contains("ebb_power_low_battery 1"));
    let events = agent.events(None);
    assert!(events.iter().any(|e| e.kind == "power_off" && e.outcome.as_deref() == Some("ok")));
    let power_sleeps: Vec<&str> = events.iter().filter(|e| e.kind == "sleep" && e.rule.as_deref() == Some("power")).filter_map(|e| e.vm.as_deref()).collect();
    // Newest first: b (no UPS client of its own) was saved before a.
    assert_eq!(power_sleeps.iter().filter(|v| !v.ends_with("transient")).copied().collect::<Vec<_>>(), vec![names[0].as_str(), names[1].as_str()], "{events:?}");
    let shutdown = events.iter().find(|e| e.kind == "shutdown").expect("a shutdown in the journal");
    assert_eq!((shutdown.vm.as_deref(), shutdown.outcome.as_deref()), (Some(transient.name()), Some("ok")), "{shutdown:?}");
    let (shut_at, off_at) = (shutdown.at, events.iter().find(|e| e.kind == "power_off").unwrap().at);
    assert!(shut_at < off_at, "the power-off came before the guest was down");
    // No wake while the battery is low, asked or not.
    let out = agent.cli(&["wake", &names[0]]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("low battery"));

    // The host "went down"; it comes back on mains and ebb restores the guests.
    agent.stop();
    upsd.set("OL").unwrap();
    let agent = agent.start_again();
    agent.wait("the guests restored", Duration::from_secs(90), |_| {
        guests.iter().all(|g| g.domain().is_active().unwrap()).then_some(())
    });
    for g in &guests {
        g.wait_ready(Duration::from_secs(60)).unwrap();
        assert!(g.status().is_ok(), "{} does not answer after the restore", g.name());
    }
    let power = agent.status().power.unwrap();
    assert!(power.saved_for_power.is_empty(), "{power:?}");
    assert!(agent
        .events(None)
        .iter()
        .any(|e| e.kind == "wake" && e.rule.as_deref() == Some("power") && e.outcome.as_deref() == Some("ok")));
    for g in guests {
        g.remove().unwrap();
    }
}

#[test]
fn a_ups_that_does_not_exist_is_shown_and_nothing_happens() {
    let upsd = Upsd::start("OL").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rest = format!("[power]\nups = \"nope@{}\"\n", upsd.addr());
    let agent = AgentProc::start(dir.path(), "uri = \"test:///default\"\ntick = \"200ms\"", &rest);
    let p = agent.wait("the failed reading", Duration::from_secs(20), |a| a.status().power.filter(|p| p.error.is_some()));
    assert!(p.error.unwrap().contains("no UPS named \"nope\""));
    assert!(agent.text(&["power"]).contains("last reading failed"));
    assert!(agent.vm("test").is_some_and(|v| v.state == ebb_core::VmState::Running));
}

#[test]
fn on_battery_under_a_budget_the_most_valuable_guests_keep_running() {
    let prefix = "ebb-test-budget-";
    // (name, value): gold is worth most, bronze least.
    let vms = [("gold", 100), ("silver", 50), ("bronze", 10)];
    let (_lab, dir, guests) = guests(prefix, vms.map(|(n, _)| n), 256, |_, _| {});
    for g in &guests {
        g.cpu_workload(1, 600).unwrap();
    }
    let upsd = Upsd::start("OL").unwrap();
    // The model: 100 W idle, 200 W with both CPUs busy. Each busy guest asks
    // for a whole CPU (it runs two thirds of one and waits the rest), so it
    // draws 50 W in the plan; 160 W leaves 60 W for VMs: one of the three.
    let mut rest = format!(
        "[memory]\nenabled = false\n[power]\nups = \"{}\"\nbudget = 160.0\nidle_watts = 100.0\nmax_watts = 200.0\n",
        upsd.ups()
    );
    for (n, v) in vms {
        rest.push_str(&format!("[vm.{prefix}{n}]\nvalue = {v}\n"));
    }
    let agent_lines = format!("uri = \"{URI}\"\ndomains = [\"{prefix}*\"]\ntick = \"1s\"");
    let web_port = free_port();
    let agent = AgentProc::start(dir.path(), &agent_lines, &format!("{rest}{}", web_section(dir.path(), web_port)));
    // The plan is shown before anything happens.
    let plan = agent.wait("a plan that keeps only gold", Duration::from_secs(60), |a| {
        let plan = a.status().power.and_then(|p| p.plan)?;
        (plan.vms.len() == 3 && plan.vms.iter().all(|v| v.draw.0 > 35.0)).then_some(plan)
    });
    let names = |v: &[ebb_core::VmId]| v.iter().map(|v| v.as_str().trim_start_matches(prefix).to_string()).collect::<Vec<_>>();
    assert_eq!((names(&plan.plan.keep), names(&plan.plan.save)), (vec!["gold".to_string()], vec!["bronze".to_string(), "silver".to_string()]), "{plan:?}");
    let text = agent.text(&["plan"]);
    assert!(text.contains("keeps running") && text.contains("saved (1.)") && text.contains("saved (2.)"), "{text}");
    assert!(guests.iter().all(|g| g.domain().is_active().unwrap()), "acted on mains power");

    // A value set through the API changes the plan, and clears back to the config's.
    let silver = format!("{prefix}silver");
    let out = agent.cli(&["value", &silver, "lots"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("whole number"), "{out:?}");
    assert!(agent.text(&["value", &silver, "500"]).contains("value 500"));
    agent.wait("a plan that keeps silver", Duration::from_secs(20), |a| {
        let plan = a.status().power.and_then(|p| p.plan)?;
        (names(&plan.plan.keep) == ["silver"]).then_some(())
    });
    assert!(agent.text(&["value", &silver, "clear"]).contains("back to the config's 50"));
    agent.wait("the plan back to gold", Duration::from_secs(20), |a| {
        let plan = a.status().power.and_then(|p| p.plan)?;
        (names(&plan.plan.keep) == ["gold"]).then_some(())
    });

    // On battery: bronze and silver are saved, gold keeps running.
    upsd.set("OB").unwrap();
    wait_for("bronze and silver saved", Duration::from_secs(60), || {
        (!guests[1].domain().is_active().unwrap() && !guests[2].domain().is_active().unwrap()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(guests[0].domain().is_active().unwrap(), "gold was saved too");
    assert!(guests[1].domain().has_managed_save(0).unwrap() && guests[2].domain().has_managed_save(0).unwrap());
    let mut saved = agent.status().power.unwrap().saved_for_power;
    saved.sort();
    assert_eq!(saved, vec![format!("{prefix}bronze"), format!("{prefix}silver")]);

    // The web view shows the host on battery, its plan and its draw.
    let mut browser = ebb_lab::browser::Browser::launch().expect("chromium (scripts/setup-host.sh installs it)");
    let mut page = browser.open(&format!("http://127.0.0.1:{web_port}/?token={READ_TOKEN}")).unwrap();
    page.wait_for("document.getElementById('p-on')?.textContent.includes('battery')", Duration::from_secs(15)).unwrap();
    let plan = page.eval("document.getElementById('p-plan').textContent").unwrap();
    assert!(plan.as_str().unwrap_or("").contains(&format!("keep {prefix}gold")), "{plan}");
    page.wait_for("Number(document.getElementById('power-chart').dataset.points) >= 1 && document.querySelector('#power-chart polyline') !== null", Duration::from_secs(15)).unwrap();
    page.wait_for(&format!("document.querySelector('#timeline rect[data-vm=\"{prefix}bronze\"]') !== null"), Duration::from_secs(5)).unwrap();
    page.screenshot(&ebb_lab::browser::screenshot_dir().join("web-power.png")).unwrap();
    assert_eq!(page.console_errors(), Vec::<String>::new());
    drop(browser);

    // Mains power back: both restored, the more valuable first.
    upsd.set("OL").unwrap();
    wait_for("both restored", Duration::from_secs(60), || {
        (guests[1].domain().is_active().unwrap() && guests[2].domain().is_active().unwrap()).then_some(())
    });
    let wakes = agent.wait("the restores journaled", Duration::from_secs(20), |a| {
        let mut wakes: Vec<(i64, String)> = [format!("{prefix}silver"), format!("{prefix}bronze")]
            .iter()
            .filter_map(|vm| {
                a.events(Some(vm)).into_iter().find(|e| e.kind == "wake" && e.rule.as_deref() == Some("power")).map(|e| (e.id, vm.clone()))
            })
            .collect();
        wakes.sort();
        (wakes.len() == 2).then_some(wakes)
    });
    assert_eq!(wakes[0].1, format!("{prefix}silver"), "most valuable first: {wakes:?}");
    for g in guests {
        let _ = g.cpu_workload(0, 1);
        g.remove().unwrap();
    }
}
