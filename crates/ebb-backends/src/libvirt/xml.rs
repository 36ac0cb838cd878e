//! The domain XML, read with quick-xml: which interface can take a
//! bandwidth limit, the first disk's target, the balloon device and its
//! safety nets, and the host files behind the disks.

use std::ffi::CString;
use std::path::PathBuf;

use ebb_core::BalloonFeatures;

/// The interface types libvirt can limit (its virNetDevSupportsBandwidth);
/// `user`, `vhostuser`, `hostdev` and the socket types it cannot.
const BANDWIDTH_TYPES: [&str; 4] = ["bridge", "network", "direct", "ethernet"];

/// The target device of the first `<interface>` of a type in
/// `BANDWIDTH_TYPES` that has one (a running domain's always has).
pub(super) fn bandwidth_interface(xml: &str) -> Option<CString> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    // Inside an interface: whether its type can take a limit, and its target.
    let mut current: Option<(bool, Option<String>)> = None;
    let attr = |e: &quick_xml::events::BytesStart, name: &[u8]| -> Option<String> {
        e.attributes()
            .flatten()
            .find(|a| a.key.as_ref() == name)
            .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
    };
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) if e.local_name().as_ref() == b"interface" => {
                current = Some((attr(&e, b"type").is_some_and(|t| BANDWIDTH_TYPES.contains(&t.as_str())), None));
            }
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == b"target" => {
                if let Some((_, dev)) = current.as_mut() {
                    *dev = attr(&e, b"dev");
                }
            }
            Event::End(e) if e.local_name().as_ref() == b"interface" => {
                if let Some((true, Some(dev))) = current.take() {
                    return CString::new(dev).ok();
                }
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// The domain's balloon device and its safety nets, or None when it has
/// none. QEMU always writes a `<memballoon>` element on x86; `model='none'`
/// means there is none.
pub(super) fn xml_balloon(xml: &str) -> Option<BalloonFeatures> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == b"memballoon" => {
                let attr = |name: &[u8]| e.attributes().flatten().find(|a| a.key.as_ref() == name).map(|a| a.value.into_owned());
                if attr(b"model").as_deref() == Some(b"none") {
                    return None;
                }
                let on = |name: &[u8]| attr(name).as_deref() == Some(b"on");
                return Some(BalloonFeatures { deflate_on_oom: on(b"autodeflate"), free_page_reporting: on(b"freePageReporting") });
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// Why the disk sources cannot be read from a domain's XML.
#[derive(Debug, thiserror::Error)]
pub(super) enum XmlError {
    #[error("the domain XML is not well-formed: {0}")]
    NotWellFormed(#[source] quick_xml::Error),
    #[error("a disk source in the domain XML is malformed: {0}")]
    BadSource(#[source] quick_xml::Error),
}

/// The host files and devices behind a domain's `<disk>` elements: each
/// `<source file=…>` or `<source dev=…>`, backing images included. Network
/// and pool-volume sources have no host path and are left out.
pub(super) fn xml_disk_sources(xml: &str) -> Result<Vec<PathBuf>, XmlError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let (mut depth_in_disk, mut out) = (0usize, vec![]);
    loop {
        let ev = reader.read_event().map_err(XmlError::NotWellFormed)?;
        let (e, empty) = match ev {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) if depth_in_disk > 0 => {
                depth_in_disk -= 1;
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let name = e.local_name();
        if depth_in_disk == 0 && name.as_ref() != b"disk" {
            continue;
        }
        if name.as_ref() == b"source" {
            for attr in e.attributes().flatten() {
                if matches!(attr.key.as_ref(), b"file" | b"dev") {
                    let v = attr.unescape_value().map_err(XmlError::BadSource)?;
                    out.push(PathBuf::from(v.as_ref()));
                }
            }
        }
        if !empty {
            depth_in_disk += 1;
        }
    }
    Ok(out)
}

/// The target name (`vda`) of the domain's first disk (not a CD-ROM or floppy).
pub(super) fn first_disk_target(xml: &str) -> Option<CString> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut in_disk = false;
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == b"disk" => {
                let device = e.attributes().flatten().find(|a| a.key.as_ref() == b"device");
                in_disk = device.is_none_or(|a| a.value.as_ref() == b"disk");
            }
            Event::End(e) if e.local_name().as_ref() == b"disk" => in_disk = false,
            Event::Start(e) | Event::Empty(e) if in_disk && e.local_name().as_ref() == b"target" => {
                let dev = e.attributes().flatten().find(|a| a.key.as_ref() == b"dev")?;
                return CString::new(dev.value.as_ref()).ok();
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_sources_from_xml() {
        let xml = "<domain><devices>
            <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
              <source file='/var/lib/libvirt/images/a&amp;b.qcow2' index='2'/>
              <backingStore type='file'><format type='raw'/><source file='/srv/base.raw'/><backingStore/></backingStore>
              <target dev='vda' bus='virtio'/></disk>
            <disk type='block' device='disk'><source dev='/dev/sdc'/><target dev='vdb'/></disk>
            <disk type='network' device='disk'><source protocol='rbd' name='pool/img'><host name='ceph'/></source></disk>
            <serial type='file'><source path='/var/log/console.log'/></serial>
            </devices></domain>";
        let got = xml_disk_sources(xml).unwrap();
        assert_eq!(got, ["/var/lib/libvirt/images/a&b.qcow2", "/srv/base.raw", "/dev/sdc"].map(PathBuf::from));
        assert!(xml_disk_sources("<domain><disk><source file='x'></disk>").is_err());
    }

    #[test]
    fn balloon_from_xml() {
        let stock = Some(BalloonFeatures::default());
        assert_eq!(xml_balloon("<devices><memballoon model='virtio'>\n<stats period='2'/></memballoon>"), stock);
        assert_eq!(xml_balloon("<devices><memballoon model='none'/></devices>"), None);
        assert_eq!(xml_balloon("<devices><memballoon model=\"none\"/></devices>"), None);
        assert_eq!(xml_balloon("<devices></devices>"), None);
        assert_eq!(
            xml_balloon("<devices><memballoon model='virtio' autodeflate='on' freePageReporting='on'><stats period='2'/></memballoon>"),
            Some(BalloonFeatures { deflate_on_oom: true, free_page_reporting: true })
        );
        assert_eq!(
            xml_balloon("<devices><memballoon model='virtio' autodeflate='off' freePageReporting='on'/>"),
            Some(BalloonFeatures { deflate_on_oom: false, free_page_reporting: true })
        );
    }

    #[test]
    fn the_first_interface_that_can_take_a_limit() {
        let dev = |xml: &str| bandwidth_interface(xml).map(|d| d.into_string().unwrap());
        let user = "<interface type='user'><mac address='52:54:00:00:00:01'/><model type='virtio'/></interface>";
        let eth = "<interface type='ethernet'><target dev='ebbnet0' managed='yes'/><model type='virtio'/></interface>";
        let net = "<interface type='network'><source network='default'/><target dev='vnet3'/></interface>";
        let x = |ifaces: &[&str]| format!("<domain><devices>{}</devices></domain>", ifaces.concat());
        assert_eq!(dev(&x(&[user, eth, net])), Some("ebbnet0".into()), "the user-mode NIC is passed over");
        assert_eq!(dev(&x(&[net, eth])), Some("vnet3".into()));
        assert_eq!(dev(&x(&[user])), None, "user-mode networking takes no limit");
        assert_eq!(dev(&x(&["<interface type='bridge'><source bridge='br0'/></interface>"])), None, "no target: not running");
        assert_eq!(dev(&x(&[])), None);
    }
}
