//! Console sessions (VNC/SPICE) of the domains: libvirt's graphics events
//! as they happen (registered in `ffi`), and the sessions open now, to
//! reconcile after a reconnect, since libvirt does not replay events.
//!
//! What is open now is read from the kernel, not from QEMU's monitor (QMP
//! `query-vnc` would taint the domain): the established TCP connections on
//! each running domain's graphics ports (its live XML), in
//! `/proc/net/tcp` and `/proc/net/tcp6`. So it holds for a local libvirt
//! whose QEMU shares ebb's network namespace; a viewer connected but not
//! yet through its handshake counts too.

use super::ffi::{DomainEvent, EventSink};
use ebb_core::clients::ConsoleEvent;
use ebb_core::VmId;
use std::net::{Ipv4Addr, Ipv6Addr};

/// libvirt's events in ebb's terms: `initialize` opens a session (a bare
/// TCP probe never gets there), `disconnect` closes it, a domain's stop
/// (shut down, saved, crashed) ends its sessions. The rest is dropped.
pub(super) fn console_sink(send: ebb_core::clients::ConsoleSink) -> EventSink {
    std::sync::Arc::new(move |ev: DomainEvent| {
        let out = match ev {
            DomainEvent::Graphics { dom, phase, node, service } => {
                let remote = if node.contains(':') { format!("[{node}]:{service}") } else { format!("{node}:{service}") };
                match phase {
                    virt_sys::VIR_DOMAIN_EVENT_GRAPHICS_INITIALIZE => ConsoleEvent::Opened { vm: VmId::new(dom), remote },
                    virt_sys::VIR_DOMAIN_EVENT_GRAPHICS_DISCONNECT => ConsoleEvent::Closed { vm: VmId::new(dom), remote },
                    _ => return,
                }
            }
            DomainEvent::Lifecycle { dom, event } if event == virt_sys::VIR_DOMAIN_EVENT_STOPPED => ConsoleEvent::Stopped { vm: VmId::new(dom) },
            DomainEvent::Lifecycle { .. } => return,
        };
        send(out)
    })
}

/// The TCP ports of a domain's `<graphics>` (VNC, SPICE and its TLS port),
/// as the live XML gives them (-1 before one is allocated: left out).
pub(super) fn graphics_ports(xml: &str) -> Vec<u16> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut ports = Vec::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(e) | Event::Empty(e)) if e.local_name().as_ref() == b"graphics" => {
                for a in e.attributes().flatten() {
                    if matches!(a.key.as_ref(), b"port" | b"tlsPort") {
                        if let Some(p) = a.unescape_value().ok().and_then(|v| v.parse::<u16>().ok()).filter(|p| *p > 0) {
                            ports.push(p);
                        }
                    }
                }
            }
            Ok(Event::Eof) | Err(_) => return ports,
            _ => {}
        }
    }
}

/// The remote ends ("address:port") of the established connections whose
/// local port is `port`, in the text of `/proc/net/tcp` or `tcp6`.
pub(super) fn established_peers(proc_net_tcp: &str, port: u16) -> Vec<String> {
    proc_net_tcp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state) = (f.get(1)?, f.get(2)?, f.get(3)?);
            // 01: TCP_ESTABLISHED.
            if *state != "01" || endpoint(local)?.1 != port {
                return None;
            }
            let (ip, p) = endpoint(remote)?;
            Some(if ip.contains(':') { format!("[{ip}]:{p}") } else { format!("{ip}:{p}") })
        })
        .collect()
}

/// "0100007F:1770" → ("127.0.0.1", 6000): the kernel prints each 32-bit
/// word of the address in host byte order. An IPv4-mapped IPv6 address
/// reads as its IPv4 address.
fn endpoint(text: &str) -> Option<(String, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..addr.len() / 8).map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16)).collect::<Result<_, _>>().ok()?;
    let ip = match words[..] {
        [w] => Ipv4Addr::from(w.to_ne_bytes()).to_string(),
        [a, b, c, d] => {
            let bytes: Vec<u8> = [a, b, c, d].iter().flat_map(|w| w.to_ne_bytes()).collect();
            let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
            v6.to_ipv4_mapped().map_or_else(|| v6.to_string(), |v4| v4.to_string())
        }
        _ => return None,
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphics_ports_come_from_the_live_xml() {
        let xml = "<domain><devices><graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1'><listen type='address' address='127.0.0.1'/></graphics>\
                   <graphics type='spice' port='-1' tlsPort='5902'/></devices></domain>";
        assert_eq!(graphics_ports(xml), [5901, 5902]);
        assert!(graphics_ports("<domain><devices/></domain>").is_empty());
    }

    #[test]
    fn established_connections_on_a_port_are_read_from_proc_net_tcp() {
        // As this host printed them (little-endian): a VNC server on
        // 127.0.0.1:5900 with one client, the client's own end, a listener
        // and a closing connection.
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:170C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
           1: 0100007F:170C 0100007F:9A3C 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n\
           2: 0100007F:9A3C 0100007F:170C 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1\n\
           3: 0100007F:170C 0100007F:9A3D 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0 20 4 30 10 -1\n";
        assert_eq!(established_peers(tcp, 5900), ["127.0.0.1:39484"]);
        assert!(established_peers(tcp, 5901).is_empty());
        let tcp6 = "  sl  local_address                         remote_address                        st\n\
           0: 0000000000000000FFFF00000100007F:170C 0000000000000000FFFF00000100007F:9A3C 01\n\
           1: 00000000000000000000000001000000:170C 00000000000000000000000001000000:A000 01\n";
        assert_eq!(established_peers(tcp6, 5900), ["127.0.0.1:39484", "[::1]:40960"]);
    }
}
