//! The lab harness's own test, against real libvirt and a real (software-
//! emulated) guest: image, boot, guest status over the loopback forward,
//! balloon seen from inside the guest, memory workload, removal.
//! Needs scripts/setup-host.sh to have run (libvirtd up).

use std::time::{Duration, Instant};

use ebb_lab::lab::{free_port, GuestImage, GuestSpec, Lab, DEFAULT_URI};
use ebb_core::Bytes;

const PREFIX: &str = "ebb-test-lab-";

fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn guest_boots_balloons_and_runs_the_memory_workload() {
    let t = Instant::now();
    let image = GuestImage::ensure().expect("guest image");
    eprintln!("image {} ({}) ready in {:?}", image.key, image.kernel_version, t.elapsed());
    let t = Instant::now();
    GuestImage::ensure().expect("cached guest image");
    eprintln!("cached image lookup in {:?}", t.elapsed());

    let lab = Lab::connect(DEFAULT_URI).expect("libvirt").with_image(image);
    let leftovers = lab.remove_leftovers(PREFIX).expect("remove leftovers");
    if !leftovers.is_empty() {
        eprintln!("removed leftovers of an earlier run: {leftovers:?}");
    }

    let name = format!("{PREFIX}{}", std::process::id());
    let mut spec = GuestSpec::new(&name, Bytes::from_mib(512));
    // Stock: its MemTotal shrinks with the balloon, which this test reads.
    spec.stock_balloon();
    spec.http_port = Some(free_port());
    spec.console_log = std::env::temp_dir().join(format!("{name}.console.log"));

    let t = Instant::now();
    let guest = lab.create(&spec).expect("create guest");
    let created = t.elapsed();
    let ready = guest.wait_ready(Duration::from_secs(90)).unwrap_or_else(|e| {
        panic!("{e}\n--- console ---\n{}", guest.console_log());
    });
    eprintln!("defined+started in {created:?}, ready (HTTP answers) {ready:?} later");
    assert!(guest.console_log().contains("EBB-GUEST-READY"), "console:\n{}", guest.console_log());

    let index = guest.http_get("/").expect("index page");
    assert!(index.contains(&format!("ebb guest {name}")), "index: {index}");

    let st = guest.status().expect("status");
    eprintln!("status at boot: total {} available {} oom_kills {}", st.mem_total, st.mem_available, st.oom_kills);
    assert!(st.mem_total > Bytes::from_mib(400) && st.mem_total <= Bytes::from_mib(512), "{st:?}");
    assert_eq!(st.workload_state, "idle");
    assert_eq!(st.oom_kills, 0);

    // Balloon down to 300 MiB through plain virt; the guest's own MemTotal shows it.
    let t = Instant::now();
    guest
        .domain()
        .set_memory_flags(Bytes::from_mib(300).kib(), virt::sys::VIR_DOMAIN_AFFECT_LIVE)
        .expect("set balloon target");
    let total = wait_for("guest MemTotal below 320 MiB", Duration::from_secs(20), || {
        let st = guest.status().ok()?;
        (st.mem_total < Bytes::from_mib(320)).then_some(st.mem_total)
    });
    eprintln!("balloon 512 -> 300 MiB: guest MemTotal {total} after {:?}", t.elapsed());

    // 64 MiB in 8 MiB steps every 100 ms, held until released.
    let t = Instant::now();
    guest.start_mem_workload(64, 8, 100, 0).expect("start workload");
    let st = wait_for("workload holding 64 MiB", Duration::from_secs(30), || {
        let st = guest.status().ok()?;
        assert_ne!(st.workload_state, "failed", "{st:?}");
        (st.workload_mib == 64 && st.workload_state == "holding").then_some(st)
    });
    eprintln!("workload holds 64 MiB after {:?}; available {}", t.elapsed(), st.mem_available);

    guest.release_mem_workload().expect("release workload");
    let after = guest.status().expect("status after release");
    assert_eq!(after.workload_state, "released");
    assert_eq!(after.workload_mib, 0);
    assert!(
        after.mem_available > st.mem_available + Bytes::from_mib(48),
        "release should give back ~64 MiB: before {} after {}",
        st.mem_available,
        after.mem_available
    );
    assert_eq!(after.oom_kills, 0);

    let t = Instant::now();
    guest.remove().expect("remove guest");
    eprintln!("removed in {:?}", t.elapsed());
    assert!(
        lab.connection().lookup_domain_by_name(&name).is_err(),
        "domain {name} should be gone"
    );
    let _ = std::fs::remove_file(&spec.console_log);
}

/// The other paths: no network (readiness from the console line), a memory
/// workload given on the kernel command line, autodeflate and ebb metadata in
/// the XML libvirt keeps, balloon stats read through libvirt.
#[test]
fn console_only_guest_with_boot_workload() {
    let lab = Lab::connect(DEFAULT_URI).expect("libvirt");
    let name = format!("{PREFIX}{}-console", std::process::id());
    let mut spec = GuestSpec::new(&name, Bytes::from_mib(384));
    spec.memory = Bytes::from_mib(320);
    spec.workload = Some("mem:96:16:100:0".into());
    spec.deflate_on_oom = true;
    spec.metadata = Some("<ebb:vm xmlns:ebb='https://ebb.example/ns/1'><ebb:floor>128</ebb:floor></ebb:vm>".into());
    spec.console_log = std::env::temp_dir().join(format!("{name}.console.log"));

    let t = Instant::now();
    let guest = lab.create(&spec).expect("create guest");
    let ready = guest.wait_ready(Duration::from_secs(90)).unwrap_or_else(|e| {
        panic!("{e}\n--- console ---\n{}", guest.console_log());
    });
    eprintln!("console-only guest ready {ready:?} after create ({:?} in all)", t.elapsed());
    assert!(guest.http_get("/").is_err(), "no http port: http_get must refuse");

    // The persistent config; the live XML's currentMemory is the balloon's actual size.
    let xml = guest.domain().xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE).expect("domain xml");
    assert!(xml.contains("autodeflate='on'"), "{xml}");
    assert!(xml.contains("<ebb:floor>128</ebb:floor>"), "{xml}");
    assert!(xml.contains("<currentMemory unit='KiB'>327680</currentMemory>"), "{xml}");

    let actual = wait_for("balloon at its boot target of 320 MiB", Duration::from_secs(30), || {
        let stats = guest.domain().memory_stats(0).ok()?;
        let actual = stats.iter().find(|s| s.tag == virt::sys::VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON)?;
        let actual = Bytes::from_kib(actual.val);
        eprintln!("  balloon actual {actual} at {:?}", t.elapsed());
        (actual <= Bytes::from_mib(320)).then_some(actual)
    });
    eprintln!("balloon actual {actual} after {:?}", t.elapsed());

    // balloon stats: `available` is the guest's MemTotal, `unused` its MemFree.
    // With autodeflate the balloon does not lower MemTotal, so `available` stays
    // near 384 MiB while the balloon holds 64 MiB; the workload's 96 MiB
    // shows as missing free memory.
    let (available, unused) = wait_for("balloon stats showing the 96 MiB workload", Duration::from_secs(60), || {
        let stats = guest.domain().memory_stats(0).ok()?;
        let get = |tag| stats.iter().find(|s| s.tag == tag).map(|s| Bytes::from_kib(s.val));
        let available = get(virt::sys::VIR_DOMAIN_MEMORY_STAT_AVAILABLE)?;
        let unused = get(virt::sys::VIR_DOMAIN_MEMORY_STAT_UNUSED)?;
        (unused + Bytes::from_mib(64 + 96) < available).then_some((available, unused))
    });
    eprintln!("balloon stats: available {available}, unused {unused}");
    assert!(available > Bytes::from_mib(320), "autodeflate keeps MemTotal at max: {available}");

    guest.remove().expect("remove guest");
    assert!(lab.connection().lookup_domain_by_name(&name).is_err());
    let _ = std::fs::remove_file(&spec.console_log);
}
