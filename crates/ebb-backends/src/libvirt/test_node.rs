//! A node file for libvirt's test driver, to measure what watching many
//! domains costs (the bench, and the test driver's tests).

use std::fmt::Write as _;

/// A libvirt test-driver node file (load it as `test:///<absolute path>`)
/// with `domains` running domains `ebb-bench-000`, `ebb-bench-001`, …, of
/// 128–512 MiB each with a virtio balloon: a host full of domains without
/// guests, to measure what watching them costs.
pub fn test_node_xml(domains: usize) -> String {
    let sizes_mib = |i: usize| 128 * (1 + (i % 4) as u64);
    let total_mib: u64 = (0..domains).map(sizes_mib).sum::<u64>() * 2 + 4096;
    let mut xml = String::new();
    xml.push_str("<node>\n  <cpu>\n    <mhz>2000</mhz>\n    <model>ebb-bench</model>\n");
    xml.push_str("    <active>2</active>\n    <nodes>1</nodes>\n    <sockets>1</sockets>\n");
    xml.push_str("    <cores>2</cores>\n    <threads>1</threads>\n  </cpu>\n");
    let _ = writeln!(xml, "  <memory>{}</memory>", total_mib * 1024);
    for i in 0..domains {
        let mib = sizes_mib(i);
        let _ = write!(
            xml,
            "  <domain type='test'>\n    <name>ebb-bench-{i:03}</name>\n    \
             <memory unit='MiB'>{mib}</memory>\n    <currentMemory unit='MiB'>{mib}</currentMemory>\n    \
             <vcpu>1</vcpu>\n    <os><type arch='x86_64'>hvm</type></os>\n    \
             <devices>\n      <memballoon model='virtio'/>\n    </devices>\n  </domain>\n"
        );
    }
    xml.push_str("</node>\n");
    xml
}
