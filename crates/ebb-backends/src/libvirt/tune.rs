//! The live tunes libvirt keeps as typed parameters, in ebb's terms: the
//! blkio weight, an interface's bandwidth limit (`NetLimit`, KiB/s and KiB)
//! and a disk's I/O limit (bytes per second). `ffi.rs` moves the (name,
//! value) pairs; the names, their C types and their units are said here.

use std::ffi::CStr;

use ebb_core::{Bandwidth, NetLimit};
use virt::domain::Domain;
use virt::error::Error;

use super::ffi::{self, Param, Value};

/// A parameter's value as a number, when libvirt listed it.
fn number(params: &[(String, Value)], name: &str) -> Option<u64> {
    params.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_u64())
}

/// The domain's live blkio `weight`, or None when libvirt lists none.
pub fn blkio_weight(dom: &Domain) -> Result<Option<u32>, Error> {
    Ok(number(&ffi::blkio_parameters(dom)?, "weight").and_then(|w| u32::try_from(w).ok()))
}

/// Sets the domain's live blkio `weight`.
pub fn set_blkio_weight(dom: &Domain, weight: u32) -> Result<(), Error> {
    ffi::set_blkio_parameters(dom, &[("weight", Param::UInt(weight))])
}

/// libvirt's names for one direction's three parameters.
const IN: [&str; 3] = ["inbound.average", "inbound.peak", "inbound.burst"];
const OUT: [&str; 3] = ["outbound.average", "outbound.peak", "outbound.burst"];

/// The live bandwidth limit of interface `dev` (target name or MAC); a
/// parameter libvirt does not list is 0 (none).
pub fn interface_bandwidth(dom: &Domain, dev: &CStr) -> Result<NetLimit, Error> {
    let params = ffi::interface_parameters(dom, dev)?;
    let dir = |names: [&str; 3]| {
        let get = |name| number(&params, name).unwrap_or(0);
        Bandwidth { average: get(names[0]), peak: get(names[1]), burst: get(names[2]) }
    };
    Ok(NetLimit { inbound: dir(IN), outbound: dir(OUT) })
}

/// Sets the live bandwidth limit of interface `dev`, every parameter
/// given (0 clears one), so libvirt keeps nothing of the old limit.
pub fn set_interface_bandwidth(dom: &Domain, dev: &CStr, limit: &NetLimit) -> Result<(), Error> {
    let values = |b: &Bandwidth| [b.average, b.peak, b.burst];
    let params: Vec<(&str, Param)> = IN
        .into_iter()
        .zip(values(&limit.inbound))
        .chain(OUT.into_iter().zip(values(&limit.outbound)))
        // libvirt takes these as unsigned ints.
        .map(|(name, v)| (name, Param::UInt(u32::try_from(v).unwrap_or(u32::MAX))))
        .collect();
    ffi::set_interface_parameters(dom, dev, &params)
}

/// A disk's live `total_bytes_sec` I/O limit (`blkdeviotune`); 0: none.
pub fn block_iotune_total(dom: &Domain, dev: &CStr) -> Result<u64, Error> {
    Ok(number(&ffi::block_iotune(dom, dev)?, "total_bytes_sec").unwrap_or(0))
}

/// Sets a disk's live `total_bytes_sec` I/O limit; 0 removes it.
pub fn set_block_iotune_total(dom: &Domain, dev: &CStr, bytes_sec: u64) -> Result<(), Error> {
    ffi::set_block_iotune(dom, dev, &[("total_bytes_sec", Param::ULLong(bytes_sec))])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::xml::bandwidth_interface;
    use virt::connect::Connect;

    #[test]
    fn interface_bandwidth_round_trip_on_the_test_driver() {
        // The test driver keeps limits without enforcing them: the plumbing
        // of both calls, which QEMU on this host refuses to go through.
        let conn = Connect::open(Some("test:///default")).unwrap();
        let dom = conn.lookup_domain_by_name("test").unwrap();
        let dev = bandwidth_interface(&dom.xml_desc(0).unwrap()).expect("`test` has a network interface");
        assert_eq!(interface_bandwidth(&dom, &dev).unwrap(), NetLimit::default(), "unlimited");
        let b = |average, peak, burst| Bandwidth { average, peak, burst };
        let limit = NetLimit { inbound: b(1024, 2048, 64), outbound: b(256, 0, 0) };
        set_interface_bandwidth(&dom, &dev, &limit).unwrap();
        assert_eq!(interface_bandwidth(&dom, &dev).unwrap(), limit);
        // Every parameter is given: a raised limit keeps nothing of the old.
        let raised = NetLimit { inbound: b(4096, 4096, 64), outbound: b(0, 0, 0) };
        set_interface_bandwidth(&dom, &dev, &raised).unwrap();
        assert_eq!(interface_bandwidth(&dom, &dev).unwrap(), raised);
        let missing = std::ffi::CString::new("nosuchdev").unwrap();
        assert!(interface_bandwidth(&dom, &missing).unwrap_err().message().contains("nosuchdev"));
    }
}
