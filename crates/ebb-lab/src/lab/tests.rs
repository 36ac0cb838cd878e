//! The lab's unit tests: the image key, the domain XML, the status parser.

use super::image::{image_key, version_key};
use super::*;
use ebb_core::Bytes;

fn image() -> GuestImage {
    GuestImage {
        kernel: "/var/cache/ebb/guest/k/vmlinuz".into(),
        initrd: "/var/cache/ebb/guest/k/initrd.img".into(),
        kernel_version: "6.1.0-56-amd64".into(),
        key: "k".into(),
    }
}

#[test]
fn version_order_is_numeric() {
    let mut v = vec!["6.1.0-9-amd64", "6.1.0-56-amd64", "6.10.0-1-amd64", "5.10.0-30-amd64"];
    v.sort_by_key(|s| version_key(s));
    assert_eq!(v, ["5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-56-amd64", "6.10.0-1-amd64"]);
}

#[test]
fn key_depends_on_kernel() {
    assert_ne!(image_key("6.1.0-56-amd64"), image_key("6.1.0-57-amd64"));
    assert_eq!(image_key("x"), image_key("x"));
}

#[test]
fn xml_has_the_pieces() {
    let mut s = GuestSpec::new("ebb-t<1>", Bytes::from_mib(512));
    s.memory = Bytes::from_mib(256);
    s.http_port = Some(4321);
    s.workload = Some("mem:64".into());
    s.deflate_on_oom = true;
    s.metadata = Some("<ebb:vm xmlns:ebb='urn:x'/>".into());
    let x = s.domain_xml(&image());
    assert!(x.contains("<name>ebb-t&lt;1&gt;</name>"));
    assert!(x.contains("<memory unit='KiB'>524288</memory>"));
    assert!(x.contains("<currentMemory unit='KiB'>262144</currentMemory>"));
    assert!(x.contains("<memballoon model='virtio' autodeflate='on' freePageReporting='on'>"));
    s.stock_balloon();
    assert!(s.domain_xml(&image()).contains("<memballoon model='virtio'>"));
    assert!(x.contains("<stats period='1'/>"));
    assert!(x.contains("hostfwd=tcp:127.0.0.1:4321-:80"));
    assert!(x.contains("ebb.net=1 ebb.workload=mem:64"));
    assert!(x.contains("<ebb:vm xmlns:ebb='urn:x'/>"));
    s.balloon = false;
    s.http_port = None;
    let x = s.domain_xml(&image());
    assert!(x.contains("<memballoon model='none'/>"));
    assert!(!x.contains("qemu:commandline>"));
    // On the lab's bridge instead of the user-mode forward.
    s.http_port = Some(4321);
    s.lab_net = Some(LabNet::guest_ip(1));
    let x = s.domain_xml(&image());
    assert!(x.contains("<source bridge='ebb-br0'/>") && x.contains("ebb.ip=10.77.0.11/24"), "{x}");
    assert!(!x.contains("hostfwd") && !x.contains("ebb.net=1"), "{x}");
}

#[test]
fn status_parses() {
    let st = GuestStatus::parse(
        "hostname=a\nmem_total_kib=490000\nmem_available_kib=400000\noom_kill=2\nworkload_state=holding\nworkload_mib=64\n",
    )
    .unwrap();
    assert_eq!(st.mem_total, Bytes::from_kib(490000));
    assert_eq!(st.oom_kills, 2);
    assert_eq!(st.workload_state, "holding");
    assert_eq!(st.workload_mib, 64);
    assert_eq!(GuestStatus::parse("oom_kill=1"), Err("mem_total_kib"));
}
