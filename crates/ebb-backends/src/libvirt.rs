//! libvirt backend: one `virConnectGetAllDomainStats` per tick, live-only
//! balloon targets, and ebb's element in a domain's `<metadata>`.
//!
//! Everything the `virt` crate wraps safely goes through it. The `ffi` module
//! at the bottom covers the two calls virt 0.5 leaves raw: the bulk stats
//! records (virt hands out bare pointers and frees only the outer array, so
//! each call through it would leak every record) and `virNodeGetMemoryStats`.
//!
//! What libvirt 9.0 reports, checked on this host:
//! - QEMU, `<memballoon model='none'/>`: `balloon.current == balloon.maximum`
//!   (libvirt even overrides `<currentMemory>`), `balloon.rss`, no guest stats,
//!   no `balloon.last-update`. The stats alone cannot tell it from a virtio
//!   balloon whose guest has no driver, so the domain XML decides (cached).
//!   `virDomainSetMemoryFlags` then fails with VIR_ERR_OPERATION_INVALID
//!   "Unable to change memory of active domain without the balloon device …".
//! - The test driver reports `state.*` only, no `balloon.*` group: current and
//!   maximum then come from `virDomainGetInfo`. It has no node memory stats.
//! - No balloon stat for oom kills exists in libvirt 9.0 (13 memory stat tags,
//!   none for oom); QEMU ≥ 9.1 has `stat-oom-kills`, so a later libvirt may
//!   pass it on under one of the names in `OOM_FIELDS`.
//! - Activity: QEMU reports `cpu.time` (ns, the domain's cgroup, so it starts
//!   again from zero after a restore), `net.count` and `block.count` even with
//!   no devices, and per device `net.<n>.rx.bytes`/`tx.bytes`,
//!   `block.<n>.rd.bytes`/`wr.bytes`; a user-mode NIC counts in `net.count`
//!   but has no counters. A shut-off domain still gets a meaningless
//!   `cpu.time`, so counters are read for active domains only. The test
//!   driver reports none of them.
//!   Its `managedsave`, `create` (restore), `suspend`, `resume` and
//!   `managedsave-remove` all work, and it refuses a transient domain's
//!   managedsave with OPERATION_INVALID, as QEMU does.
//! - Bandwidth (`domiftune`): libvirt enforces it with tc on the host side
//!   of bridge, network, direct and ethernet interfaces only; a user-mode
//!   NIC refuses it. For an ethernet interface `outbound` polices what the
//!   guest sends and `net.N.tx.bytes` counts it: both from the guest's
//!   side. This host's kernel has htb but no sfq and no police action, so
//!   QEMU refuses every limit here ("Specified qdisc kind is unknown",
//!   "Failed to load TC action module"); the test driver keeps limits
//!   without enforcing them.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use std::fmt::Write as _;

use ebb_core::affinity::{CpuSet, HostCpuTime};
use ebb_core::{Activity, Balloon, Bytes, GuestMemStats, HostMemory, Observation, Tune, VmId, VmObservation, VmState};
use tracing::{debug, debug_span, warn};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::enumutil::Enum;
use virt::error::{Error as VirtError, ErrorNumber};

use crate::{HvError, Hypervisor, EBB_METADATA_NS};

/// Stats groups asked for in the bulk call. Drivers that lack a group (the
/// test driver lacks all but `state`) leave it out instead of failing, as
/// long as ENFORCE_STATS is not set.
const STATS: u32 = virt_sys::VIR_DOMAIN_STATS_STATE
    | virt_sys::VIR_DOMAIN_STATS_BALLOON
    | virt_sys::VIR_DOMAIN_STATS_CPU_TOTAL
    | virt_sys::VIR_DOMAIN_STATS_VCPU
    | virt_sys::VIR_DOMAIN_STATS_INTERFACE
    | virt_sys::VIR_DOMAIN_STATS_BLOCK;

/// All domains, active and inactive. NOWAIT: a domain busy with a job (a
/// managedsave, a migration) reports what it can at once instead of holding
/// up the whole tick; it then lacks guest stats for that tick.
const STATS_FLAGS: u32 = virt_sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT;

/// Names a libvirt newer than 9.0 may give the guest's oom-kill counter.
const OOM_FIELDS: [&str; 3] = ["balloon.oom_kill", "balloon.oom_kills", "balloon.oom-kills"];

/// A connection to one libvirt driver (`qemu:///system`, `test:///default`, …).
pub struct LibvirtHypervisor {
    uri: String,
    conn: Connect,
    /// Whether each domain has a balloon device, by UUID, with the domain id
    /// it was read for: the XML is read again only when the domain (re)starts
    /// or appears. A balloon device cannot be hot-plugged.
    balloons: HashMap<String, (Option<u32>, bool)>,
    /// False once the driver said it has no node memory stats.
    node_stats: bool,
    /// Each running domain's last guest statistics, by name, and when.
    last_stats: HashMap<String, (GuestMemStats, Instant)>,
    /// Each active domain's last activity counters, by name: a busy domain's
    /// record (NOWAIT) may lack its disk counters for a tick, and a sum that
    /// dropped to zero and came back would look like a burst of I/O.
    last_activity: HashMap<String, Activity>,
    /// The host's logical CPUs, read once at connect.
    host_cpus: u32,
}

/// The bulk call runs with NOWAIT, so a domain busy with another job (a
/// monitoring tool's query, say) comes back without guest stats; for this
/// long its last ones stand in rather than dropping it from management.
const STATS_GRACE: Duration = Duration::from_secs(5);

fn stats_or_recent(fresh: Option<GuestMemStats>, last: Option<&(GuestMemStats, Instant)>, now: Instant) -> Option<GuestMemStats> {
    fresh.or_else(|| last.filter(|(_, at)| now.duration_since(*at) < STATS_GRACE).map(|(s, _)| s.clone()))
}

impl std::fmt::Debug for LibvirtHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibvirtHypervisor").field("uri", &self.uri).finish_non_exhaustive()
    }
}

impl LibvirtHypervisor {
    /// Opens a read-write connection to `uri`.
    pub fn connect(uri: &str) -> Result<Self, HvError> {
        // libvirt's default error handler prints every error to stderr; ours
        // carry them in `HvError` instead.
        virt::error::clear_error_callback();
        let conn = open(uri)?;
        let host_cpus = conn.node_info().map(|i| i.cpus).unwrap_or(1);
        debug!(uri, host_cpus, "connected to libvirt");
        Ok(LibvirtHypervisor {
            host_cpus,
            uri: uri.to_owned(),
            conn,
            balloons: HashMap::new(),
            node_stats: true,
            last_stats: HashMap::new(),
            last_activity: HashMap::new(),
        })
    }

    /// The underlying connection, for callers that need more than the trait
    /// (tests setting metadata, later capabilities).
    pub fn connection(&self) -> &Connect {
        &self.conn
    }

    fn unreachable(&self, e: &VirtError) -> HvError {
        HvError::Unreachable { uri: self.uri.clone(), detail: e.message().to_owned() }
    }

    /// True when an error means the connection itself is gone: libvirt says
    /// so (NO_CONNECT), or the connection no longer answers `is_alive` (a
    /// closed socket shows up as SYSTEM_ERROR or RPC first).
    fn connection_lost(&self, e: &VirtError) -> bool {
        code_is(e, ErrorNumber::NoConnect) || !matches!(self.conn.is_alive(), Ok(true))
    }

    /// Maps an error of one VM operation.
    fn vm_error(&self, op: &'static str, vm: &VmId, e: VirtError) -> HvError {
        if self.connection_lost(&e) {
            self.unreachable(&e)
        } else if code_is(&e, ErrorNumber::NoDomain) {
            HvError::NoSuchVm(vm.clone())
        } else {
            HvError::Operation { op, vm: vm.clone(), detail: e.message().to_owned() }
        }
    }

    /// From one read of the live XML: the domain's first interface that can
    /// take a bandwidth limit, and its first disk (their target names).
    fn tune_targets(&self, op: &'static str, vm: &VmId, dom: &Domain) -> Result<(Option<CString>, Option<CString>), HvError> {
        let xml = dom.xml_desc(0).map_err(|e| self.vm_error(op, vm, e))?;
        Ok((bandwidth_interface(&xml), first_disk_target(&xml)))
    }

    fn lookup(&self, op: &'static str, vm: &VmId) -> Result<Domain, HvError> {
        self.conn.lookup_domain_by_name(vm.as_str()).map_err(|e| self.vm_error(op, vm, e))
    }

    /// Whether the domain has a balloon device, from its XML, cached per run.
    fn has_balloon(&mut self, dom: &Domain, name: &str) -> bool {
        let Ok(uuid) = dom.uuid_string() else { return true };
        let id = dom.id();
        if let Some(&(cached_id, has)) = self.balloons.get(&uuid) {
            if cached_id == id {
                return has;
            }
        }
        match dom.xml_desc(0) {
            Ok(xml) => {
                let has = xml_has_balloon(&xml);
                self.balloons.insert(uuid, (id, has));
                has
            }
            Err(e) => {
                // Gone between the stats and this call, most likely: assume a
                // balloon this tick and look again next tick.
                debug!(vm = name, error = %e.message(), "could not read domain XML");
                true
            }
        }
    }

    /// Names of the domains `virConnectListAllDomains` lists with `flags`.
    /// One call per tick however many domains there are, and always fresh:
    /// a per-domain cache would miss a `virsh define` of a running transient
    /// domain, the very fix the transient error asks for.
    fn domain_names(&self, flags: u32) -> Result<Option<HashSet<String>>, HvError> {
        match self.conn.list_all_domains(flags) {
            Ok(doms) => Ok(Some(doms.iter().filter_map(|d| d.name().ok()).collect())),
            Err(e) if self.connection_lost(&e) => Err(self.unreachable(&e)),
            Err(e) => {
                debug!(uri = %self.uri, flags, error = %e.message(), "listing domains failed");
                Ok(None)
            }
        }
    }

    /// Runs one sleep/wake operation on a domain, in its own span.
    fn domain_op(&mut self, op: &'static str, vm: &VmId, f: impl FnOnce(&Domain) -> Result<(), VirtError>) -> Result<(), HvError> {
        let _span = debug_span!("domain_op", op, vm = %vm).entered();
        let dom = self.lookup(op, vm)?;
        let started = Instant::now();
        f(&dom).map_err(|e| self.vm_error(op, vm, e))?;
        debug!(ms = started.elapsed().as_millis() as u64, "done");
        Ok(())
    }

    /// Host memory. `guests` is the memory of running guests, used only to
    /// estimate what is available on drivers without node memory stats.
    fn host_memory(&mut self, guests: Bytes) -> Result<HostMemory, HvError> {
        if self.node_stats {
            match ffi::node_memory_stats(&self.conn) {
                Ok(fields) => {
                    let get = |name: &str| fields.iter().find(|(n, _)| n == name).map(|&(_, v)| Bytes::from_kib(v));
                    if let Some(total) = get("total") {
                        // libvirt does not pass MemAvailable on; free + buffers
                        // + cached is its usual stand-in (it over-counts shmem).
                        let available = get("free").unwrap_or_default()
                            + get("buffers").unwrap_or_default()
                            + get("cached").unwrap_or_default();
                        return Ok(HostMemory { total, available: available.min(total) });
                    }
                    self.node_stats = false;
                }
                Err(e) if self.connection_lost(&e) => return Err(self.unreachable(&e)),
                Err(e) => {
                    debug!(uri = %self.uri, error = %e.message(), "no node memory stats; using node info");
                    self.node_stats = false;
                }
            }
        }
        let info = self.conn.node_info().map_err(|e| self.unreachable(&e))?;
        let total = Bytes::from_kib(info.memory);
        Ok(HostMemory { total, available: total - guests })
    }
}

fn open(uri: &str) -> Result<Connect, HvError> {
    Connect::open(Some(uri)).map_err(|e| HvError::Unreachable { uri: uri.to_owned(), detail: e.message().to_owned() })
}

fn code_is(e: &VirtError, code: ErrorNumber) -> bool {
    matches!(e.code(), Enum::Known(c) if c == code)
}

/// Whether an error of `virDomainSetMemoryFlags` says the domain cannot
/// balloon. libvirt has no error code of its own for it: QEMU says
/// OPERATION_INVALID "… without the balloon device and guest OS balloon
/// driver"; other drivers say they do not support it.
fn is_no_balloon(e: &VirtError) -> bool {
    let msg = e.message().to_ascii_lowercase();
    let unsupported = [ErrorNumber::NoSupport, ErrorNumber::OperationUnsupported, ErrorNumber::ConfigUnsupported]
        .into_iter()
        .any(|c| code_is(e, c));
    unsupported || (code_is(e, ErrorNumber::OperationInvalid) && msg.contains("balloon"))
}

/// `net.0.rx.bytes` → ("net", "rx.bytes"): a per-device counter's group and
/// name, or None for anything else (`net.count`, `block.0.name`, …).
fn device_counter(name: &str) -> Option<(&str, &str)> {
    let (group, rest) = name.split_once('.')?;
    let (index, counter) = rest.split_once('.')?;
    index.bytes().all(|b| b.is_ascii_digit()).then_some((group, counter))
}

/// The interface types libvirt can limit (its virNetDevSupportsBandwidth);
/// `user`, `vhostuser`, `hostdev` and the socket types it cannot.
const BANDWIDTH_TYPES: [&str; 4] = ["bridge", "network", "direct", "ethernet"];

/// The target device of the first `<interface>` of a type in
/// `BANDWIDTH_TYPES` that has one (a running domain's always has).
fn bandwidth_interface(xml: &str) -> Option<CString> {
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

/// Whether a domain's XML has a usable balloon device. QEMU always writes a
/// `<memballoon>` element on x86; `model='none'` means there is none.
fn xml_has_balloon(xml: &str) -> bool {
    let Some(start) = xml.find("<memballoon") else { return false };
    let tag = &xml[start..];
    let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
    !(tag.contains("model='none'") || tag.contains("model=\"none\""))
}

/// The host files and devices behind a domain's `<disk>` elements: each
/// `<source file=…>` or `<source dev=…>`, backing images included. Network
/// and pool-volume sources have no host path and are left out.
fn xml_disk_sources(xml: &str) -> Result<Vec<PathBuf>, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let (mut depth_in_disk, mut out) = (0usize, vec![]);
    loop {
        let ev = reader.read_event().map_err(|e| format!("the domain XML is not well-formed: {e}"))?;
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
                    let v = attr.unescape_value().map_err(|e| format!("a disk source in the domain XML is malformed: {e}"))?;
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
fn first_disk_target(xml: &str) -> Option<CString> {
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

fn vm_state(state: Option<i64>) -> VmState {
    match state.and_then(|s| u32::try_from(s).ok()) {
        // BLOCKED is a running guest waiting on a resource (virsh's "idle").
        Some(virt_sys::VIR_DOMAIN_RUNNING | virt_sys::VIR_DOMAIN_BLOCKED) => VmState::Running,
        Some(virt_sys::VIR_DOMAIN_PAUSED) => VmState::Paused,
        Some(virt_sys::VIR_DOMAIN_SHUTOFF) => VmState::ShutOff,
        _ => VmState::Other,
    }
}

/// The fields of one bulk record ebb uses so far.
#[derive(Debug, Default)]
struct Fields {
    state: Option<i64>,
    current: Option<u64>,
    maximum: Option<u64>,
    available: Option<u64>,
    unused: Option<u64>,
    usable: Option<u64>,
    swap_in: Option<u64>,
    swap_out: Option<u64>,
    major_fault: Option<u64>,
    last_update: Option<u64>,
    oom_kills: Option<u64>,
    cpu_time: Option<u64>,
    vcpu_current: Option<u64>,
    /// Summed `vcpu.N.delay`: runnable but not running (steal time).
    vcpu_delay: Option<u64>,
    net_count: u64,
    block_count: u64,
    /// Sums over devices; None when no device reported the counter.
    net_rx: Option<u64>,
    net_tx: Option<u64>,
    block_rd: Option<u64>,
    block_wr: Option<u64>,
}

impl Fields {
    fn parse(params: &[(String, ffi::Value)]) -> Fields {
        let mut f = Fields::default();
        for (name, value) in params {
            let slot = match name.as_str() {
                "state.state" => {
                    f.state = value.as_i64();
                    continue;
                }
                "balloon.current" => &mut f.current,
                "balloon.maximum" => &mut f.maximum,
                "balloon.available" => &mut f.available,
                "balloon.unused" => &mut f.unused,
                "balloon.usable" => &mut f.usable,
                "balloon.swap_in" => &mut f.swap_in,
                "balloon.swap_out" => &mut f.swap_out,
                "balloon.major_fault" => &mut f.major_fault,
                "balloon.last-update" => &mut f.last_update,
                n if OOM_FIELDS.contains(&n) => &mut f.oom_kills,
                "cpu.time" => &mut f.cpu_time,
                "vcpu.current" => &mut f.vcpu_current,
                "net.count" => {
                    f.net_count = value.as_u64().unwrap_or(0);
                    continue;
                }
                "block.count" => {
                    f.block_count = value.as_u64().unwrap_or(0);
                    continue;
                }
                n => {
                    let sum = match device_counter(n) {
                        Some(("net", "rx.bytes")) => &mut f.net_rx,
                        Some(("net", "tx.bytes")) => &mut f.net_tx,
                        Some(("block", "rd.bytes")) => &mut f.block_rd,
                        Some(("block", "wr.bytes")) => &mut f.block_wr,
                        Some(("vcpu", "delay")) => &mut f.vcpu_delay,
                        _ => continue,
                    };
                    if let Some(v) = value.as_u64() {
                        *sum = Some(sum.unwrap_or(0).saturating_add(v));
                    }
                    continue;
                }
            };
            *slot = value.as_u64();
        }
        f
    }

    /// The domain's activity counters: None without `cpu.time` (inactive
    /// domain, or a driver without the group). A device group that has
    /// devices but no counters this tick (a busy domain under NOWAIT) takes
    /// its sums from `last`, so the sum never dips and jumps back.
    fn activity(&self, last: Option<&Activity>) -> Option<Activity> {
        let cpu_time_ns = self.cpu_time?;
        let pick = |count: u64, now: Option<u64>, before: Option<u64>| match now {
            Some(v) => v,
            None if count > 0 => before.unwrap_or(0),
            None => 0,
        };
        let (net, block) = (self.net_count, self.block_count);
        Some(Activity {
            cpu_time_ns,
            // A record without the vCPU group (NOWAIT) keeps the last values.
            vcpu_wait_ns: self.vcpu_delay.or(last.map(|a| a.vcpu_wait_ns)).unwrap_or(0),
            vcpus: self.vcpu_current.map(|v| v as u32).or(last.map(|a| a.vcpus)).unwrap_or(0),
            net_rx_bytes: pick(net, self.net_rx, last.map(|a| a.net_rx_bytes)),
            net_tx_bytes: pick(net, self.net_tx, last.map(|a| a.net_tx_bytes)),
            disk_read_bytes: pick(block, self.block_rd, last.map(|a| a.disk_read_bytes)),
            disk_write_bytes: pick(block, self.block_wr, last.map(|a| a.disk_write_bytes)),
        })
    }

    /// Guest stats exist only when the guest driver sent them: MemTotal and
    /// MemAvailable both present (a guest without MemAvailable would make
    /// every page look used).
    fn guest_stats(&self) -> Option<GuestMemStats> {
        let (total, usable) = (self.available?, self.usable?);
        let kib = |v: Option<u64>| Bytes::from_kib(v.unwrap_or(0));
        Some(GuestMemStats {
            total: Bytes::from_kib(total),
            unused: kib(self.unused),
            usable: Bytes::from_kib(usable),
            swap_in: kib(self.swap_in),
            swap_out: kib(self.swap_out),
            major_faults: self.major_fault.unwrap_or(0),
            oom_kills: self.oom_kills,
            last_update: self.last_update,
        })
    }
}

impl Hypervisor for LibvirtHypervisor {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn observe(&mut self) -> Result<Observation, HvError> {
        let _span = debug_span!("observe", uri = %self.uri).entered();
        // Any failure of the one call that sees everything leaves the agent
        // blind: it is reported as unreachable so the agent reconnects.
        let records = ffi::all_domain_stats(&self.conn, STATS, STATS_FLAGS).map_err(|e| {
            if !self.connection_lost(&e) {
                warn!(uri = %self.uri, error = %e.message(), "bulk domain stats failed on a live connection");
            }
            self.unreachable(&e)
        })?;

        // Listed after the stats: a domain saved in between shows as shut off
        // with an image a tick early rather than running without one.
        let transient = self.domain_names(virt_sys::VIR_CONNECT_LIST_DOMAINS_TRANSIENT)?;
        let saved = self.domain_names(virt_sys::VIR_CONNECT_LIST_DOMAINS_MANAGEDSAVE)?;

        let mut vms = Vec::with_capacity(records.len());
        let mut seen = Vec::with_capacity(records.len());
        let mut guests = Bytes::ZERO;
        for rec in records {
            let Ok(name) = rec.dom.name() else { continue };
            if let Ok(uuid) = rec.dom.uuid_string() {
                seen.push(uuid);
            }
            let f = Fields::parse(&rec.params);
            let state = vm_state(f.state);
            // Unknown (the listing failed): persistent, so a save is tried
            // and its own error says what is wrong.
            let persistent = transient.as_ref().is_none_or(|t| !t.contains(&name));
            let managed_save = saved.as_ref().is_some_and(|s| s.contains(&name));
            // libvirt 9.0 reports a `cpu.time` for shut-off domains too (a
            // defined, never started one showed 0.9 s): counters only mean
            // something while a QEMU process runs.
            let active = matches!(state, VmState::Running | VmState::Paused);
            let activity = if active { f.activity(self.last_activity.get(&name)) } else { None };
            match activity {
                Some(a) => {
                    self.last_activity.insert(name.clone(), a);
                }
                None => {
                    self.last_activity.remove(&name);
                }
            }
            let (current, maximum) = match (f.current, f.maximum) {
                (Some(c), Some(m)) => (Bytes::from_kib(c), Bytes::from_kib(m)),
                // Drivers without the balloon group (the test driver).
                _ => match rec.dom.info() {
                    Ok(info) => (Bytes::from_kib(info.memory), Bytes::from_kib(info.max_mem)),
                    Err(e) => {
                        debug!(vm = %name, error = %e.message(), "no balloon stats and no domain info");
                        vms.push(VmObservation {
                            id: VmId::new(name),
                            state,
                            balloon: None,
                            activity,
                            persistent,
                            managed_save,
                            tune: None,
                        });
                        continue;
                    }
                },
            };
            if state == VmState::Running || state == VmState::Paused {
                guests += current;
            }
            let now = Instant::now();
            let stats = match (f.guest_stats(), state) {
                (Some(fresh), _) => {
                    self.last_stats.insert(name.clone(), (fresh.clone(), now));
                    Some(fresh)
                }
                (None, VmState::Running) => stats_or_recent(None, self.last_stats.get(&name), now),
                (None, _) => {
                    self.last_stats.remove(&name);
                    None
                }
            };
            let balloon = self.has_balloon(&rec.dom, &name).then_some(Balloon { current, maximum, stats });
            vms.push(VmObservation { id: VmId::new(name), state, balloon, activity, persistent, managed_save, tune: None });
        }
        self.balloons.retain(|uuid, _| seen.contains(uuid));
        self.last_stats.retain(|name, _| vms.iter().any(|v| v.id.as_str() == name));
        self.last_activity.retain(|name, _| vms.iter().any(|v| v.id.as_str() == name));

        let host = self.host_memory(guests)?;
        Ok(Observation { at: Default::default(), host, host_cpus: self.host_cpus, vms })
    }

    fn set_memory(&mut self, vm: &VmId, target: Bytes) -> Result<(), HvError> {
        let _span = debug_span!("set_memory", vm = %vm, target = %target).entered();
        let dom = self.lookup("set memory", vm)?;
        // Live only: the persistent config keeps the size the operator gave.
        dom.set_memory_flags(target.kib(), virt_sys::VIR_DOMAIN_MEM_LIVE).map_err(|e| {
            if !self.connection_lost(&e) && is_no_balloon(&e) {
                HvError::NoBalloon(vm.clone())
            } else {
                self.vm_error("set memory", vm, e)
            }
        })?;
        debug!("balloon target set");
        Ok(())
    }

    fn balloon_now(&mut self, vm: &VmId) -> Result<Bytes, HvError> {
        let dom = self.lookup("read balloon", vm)?;
        // virDomainMemoryStats asks QEMU (query-balloon) for the actual size.
        let stats = dom.memory_stats(0).map_err(|e| self.vm_error("read balloon", vm, e))?;
        stats
            .iter()
            .find(|s| s.tag == virt_sys::VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON)
            .map(|s| Bytes::from_kib(s.val))
            .ok_or_else(|| HvError::NoBalloon(vm.clone()))
    }

    fn ebb_metadata(&mut self, vm: &VmId) -> Result<Option<String>, HvError> {
        let _span = debug_span!("ebb_metadata", vm = %vm).entered();
        let dom = self.lookup("read metadata", vm)?;
        match dom.metadata(virt_sys::VIR_DOMAIN_METADATA_ELEMENT as i32, Some(EBB_METADATA_NS), 0) {
            Ok(xml) => Ok(Some(xml)),
            Err(e) if code_is(&e, ErrorNumber::NoDomainMetadata) => Ok(None),
            Err(e) => Err(self.vm_error("read metadata", vm, e)),
        }
    }

    fn disk_sources(&mut self, vm: &VmId) -> Result<Vec<PathBuf>, HvError> {
        let _span = debug_span!("disk_sources", vm = %vm).entered();
        let dom = self.lookup("read disk sources", vm)?;
        let xml = dom.xml_desc(0).map_err(|e| self.vm_error("read disk sources", vm, e))?;
        xml_disk_sources(&xml).map_err(|detail| HvError::Operation { op: "read disk sources", vm: vm.clone(), detail })
    }

    fn tune(&mut self, vm: &VmId) -> Result<Tune, HvError> {
        let _span = debug_span!("tune", vm = %vm).entered();
        let dom = self.lookup("read CPU tune", vm)?;
        let info = dom
            .scheduler_parameters_flags(virt_sys::VIR_DOMAIN_AFFECT_LIVE)
            .map_err(|e| self.vm_error("read CPU tune", vm, e))?;
        let shares = info.cpu_shares.ok_or_else(|| HvError::Operation {
            op: "read CPU tune",
            vm: vm.clone(),
            detail: format!("the {} scheduler has no cpu_shares", info.scheduler_type),
        })?;
        // A host without the blkio controller: ebb leaves the disk alone.
        let io_weight = match ffi::blkio_weight(&dom) {
            Ok(w) => w,
            Err(e) => {
                debug!(vm = %vm, error = %e.message(), "no blkio weight");
                None
            }
        };
        // No interface that can take a limit: ebb leaves the network alone.
        let (interface, disk) = self.tune_targets("read CPU tune", vm, &dom)?;
        let net = match interface {
            Some(dev) => match ffi::interface_bandwidth(&dom, &dev) {
                Ok(n) => Some(n),
                Err(e) => {
                    debug!(vm = %vm, dev = ?dev, error = %e.message(), "no bandwidth parameters");
                    None
                }
            },
            None => None,
        };
        // No disk, or a driver without I/O limits: ebb leaves the limit alone.
        let disk_limit = match disk {
            Some(dev) => ffi::block_iotune_total(&dom, &dev)
                .map_err(|e| debug!(vm = %vm, error = %e.message(), "no disk I/O limit"))
                .ok(),
            None => None,
        };
        Ok(Tune {
            shares,
            // Zero or negative: no cap.
            quota_us: info.vcpu_bw.quota.and_then(|q| u64::try_from(q).ok()).filter(|q| *q > 0),
            period_us: info.vcpu_bw.period.unwrap_or(100_000),
            io_weight,
            net,
            disk_limit,
        })
    }

    fn host_cpu_times(&mut self) -> Result<Vec<HostCpuTime>, HvError> {
        (0..self.host_cpus as i32)
            .map(|cpu| {
                let stats = ffi::node_cpu_stats(&self.conn, cpu).map_err(|e| self.unreachable(&e))?;
                let get = |f: &str| stats.iter().find(|(n, _)| n == f).map_or(0, |(_, v)| *v);
                let busy = get("kernel") + get("user");
                Ok(HostCpuTime { busy_ns: busy, total_ns: busy + get("idle") + get("iowait") })
            })
            .collect()
    }

    fn vcpu_pins(&mut self, vm: &VmId) -> Result<Vec<CpuSet>, HvError> {
        let dom = self.lookup("read vCPU pinning", vm)?;
        let vcpus = dom.info().map_err(|e| self.vm_error("read vCPU pinning", vm, e))?.nr_virt_cpu as usize;
        let maplen = (self.host_cpus as usize).div_ceil(8);
        let maps = ffi::vcpu_pin_info(&dom, vcpus, maplen).map_err(|e| self.vm_error("read vCPU pinning", vm, e))?;
        Ok(maps
            .iter()
            .map(|m| CpuSet::new((0..self.host_cpus).filter(|&c| m[(c / 8) as usize] & (1 << (c % 8)) != 0)))
            .collect())
    }

    fn guest_vcpus(&mut self, vm: &VmId) -> Result<u32, HvError> {
        let dom = self.lookup("read the guest's online vCPUs", vm)?;
        dom.vcpus_flags(virt_sys::VIR_DOMAIN_VCPU_GUEST).map_err(|e| self.vm_error("read the guest's online vCPUs", vm, e))
    }

    fn set_guest_vcpus(&mut self, vm: &VmId, count: u32) -> Result<(), HvError> {
        let _span = debug_span!("set_guest_vcpus", vm = %vm, count).entered();
        let dom = self.lookup("set the guest's online vCPUs", vm)?;
        dom.set_vcpus_flags(count, virt_sys::VIR_DOMAIN_VCPU_GUEST).map_err(|e| self.vm_error("set the guest's online vCPUs", vm, e))
    }

    fn set_vcpu_pins(&mut self, vm: &VmId, pins: &[CpuSet]) -> Result<(), HvError> {
        let _span = debug_span!("set_vcpu_pins", vm = %vm).entered();
        let dom = self.lookup("pin vCPUs", vm)?;
        let maplen = (self.host_cpus as usize).div_ceil(8);
        for (vcpu, set) in pins.iter().enumerate() {
            let mut map = vec![0u8; maplen];
            for c in set.iter().filter(|&c| c < self.host_cpus) {
                map[(c / 8) as usize] |= 1 << (c % 8);
            }
            dom.pin_vcpu_flags(vcpu as u32, &map, virt_sys::VIR_DOMAIN_AFFECT_LIVE)
                .map_err(|e| self.vm_error("pin vCPUs", vm, e))?;
        }
        Ok(())
    }

    fn set_tune(&mut self, vm: &VmId, tune: Tune) -> Result<(), HvError> {
        let _span = debug_span!("set_tune", vm = %vm, %tune).entered();
        let dom = self.lookup("set CPU tune", vm)?;
        let (interface, disk) = self.tune_targets("set CPU tune", vm, &dom)?;
        // The limit first, and only when it differs: a host that refuses
        // limits (no tc modules) then refuses before anything else changed.
        if let Some(net) = tune.net {
            if let Some(dev) = interface {
                let now = ffi::interface_bandwidth(&dom, &dev).map_err(|e| self.vm_error("read bandwidth", vm, e))?;
                if now != net {
                    ffi::set_interface_bandwidth(&dom, &dev, &net).map_err(|e| {
                        if self.connection_lost(&e) {
                            self.unreachable(&e)
                        } else {
                            HvError::Bandwidth { vm: vm.clone(), detail: e.message().to_owned() }
                        }
                    })?;
                }
            }
        }
        let (scheduler_type, _) = dom.scheduler_type().map_err(|e| self.vm_error("set CPU tune", vm, e))?;
        let info = virt::domain::SchedulerInfo {
            scheduler_type,
            cpu_shares: Some(tune.shares),
            vcpu_bw: virt::domain::SchedBandwidth {
                period: Some(tune.period_us),
                // libvirt takes -1 for "no cap" (0 would mean "unchanged").
                quota: Some(tune.quota_us.map_or(-1, |q| q.min(i64::MAX as u64) as i64)),
            },
            ..Default::default()
        };
        dom.set_scheduler_parameters_flags(&info, virt_sys::VIR_DOMAIN_AFFECT_LIVE)
            .map_err(|e| self.vm_error("set CPU tune", vm, e))?;
        if let Some(w) = tune.io_weight {
            ffi::set_blkio_weight(&dom, w).map_err(|e| self.vm_error("set disk weight", vm, e))?;
        }
        if let (Some(limit), Some(dev)) = (tune.disk_limit, disk) {
            if ffi::block_iotune_total(&dom, &dev).ok() != Some(limit) {
                ffi::set_block_iotune_total(&dom, &dev, limit).map_err(|e| self.vm_error("set disk I/O limit", vm, e))?;
            }
        }
        Ok(())
    }

    fn save(&mut self, vm: &VmId) -> Result<(), HvError> {
        let _span = debug_span!("save", vm = %vm).entered();
        let dom = self.lookup("save", vm)?;
        let started = Instant::now();
        if let Err(e) = dom.managed_save(0) {
            // libvirt says "cannot do managed save for transient domain";
            // asking the domain itself does not depend on that wording.
            // Disk full, I/O errors and the rest pass libvirt's own message.
            if !self.connection_lost(&e) && matches!(dom.is_persistent(), Ok(false)) {
                return Err(HvError::Transient(vm.clone()));
            }
            return Err(self.vm_error("save", vm, e));
        }
        debug!(ms = started.elapsed().as_millis() as u64, "saved");
        Ok(())
    }

    fn pause(&mut self, vm: &VmId) -> Result<(), HvError> {
        self.domain_op("pause", vm, |d| d.suspend())
    }

    fn resume(&mut self, vm: &VmId) -> Result<(), HvError> {
        self.domain_op("resume", vm, |d| d.resume())
    }

    fn start(&mut self, vm: &VmId) -> Result<(), HvError> {
        // Plain virDomainCreate: it restores from the managed save image when
        // there is one. Never FORCE_BOOT, which would throw the image away.
        self.domain_op("start", vm, |d| d.create())
    }

    fn shutdown(&mut self, vm: &VmId) -> Result<(), HvError> {
        self.domain_op("shut down", vm, |d| d.shutdown())
    }

    fn discard_save(&mut self, vm: &VmId) -> Result<(), HvError> {
        self.domain_op("discard save", vm, |d| d.managed_save_remove(0))
    }
}

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

/// The FFI edge: the only unsafe code in ebb-backends.
#[allow(unsafe_code)]
mod ffi {
    use std::ffi::CStr;
    use std::os::raw::c_int;
    use std::ptr;

    use ebb_core::{Bandwidth, NetLimit};

    use virt::connect::Connect;
    use virt::domain::Domain;
    use virt::error::Error;

    /// One typed parameter's value.
    #[derive(Clone, Debug, PartialEq)]
    pub enum Value {
        Int(i64),
        UInt(u64),
        Double(f64),
        Bool(bool),
        Str(String),
    }

    impl Value {
        pub fn as_u64(&self) -> Option<u64> {
            match *self {
                Value::UInt(v) => Some(v),
                Value::Int(v) => u64::try_from(v).ok(),
                _ => None,
            }
        }
        pub fn as_i64(&self) -> Option<i64> {
            match *self {
                Value::Int(v) => Some(v),
                Value::UInt(v) => i64::try_from(v).ok(),
                _ => None,
            }
        }
    }

    /// One domain's record of a bulk stats call, copied out of libvirt.
    pub struct Record {
        pub dom: Domain,
        pub params: Vec<(String, Value)>,
    }

    /// `virConnectGetAllDomainStats`, with the records copied into Rust
    /// values and freed with `virDomainStatsRecordListFree`.
    pub fn all_domain_stats(conn: &Connect, stats: u32, flags: u32) -> Result<Vec<Record>, Error> {
        let mut list: *mut virt_sys::virDomainStatsRecordPtr = ptr::null_mut();
        // SAFETY: `conn` is open for the whole call; libvirt allocates `list`.
        let n = unsafe { virt_sys::virConnectGetAllDomainStats(conn.as_ptr(), stats, &mut list, flags) };
        if n < 0 {
            return Err(Error::last_error());
        }
        let mut out = Vec::with_capacity(n as usize);
        if list.is_null() {
            return Ok(out);
        }
        for i in 0..n as usize {
            // SAFETY: libvirt returned `n` valid record pointers in `list`.
            let rec = unsafe { &**list.add(i) };
            let params = if rec.params.is_null() || rec.nparams <= 0 {
                &[][..]
            } else {
                // SAFETY: `params` holds `nparams` initialised parameters.
                unsafe { std::slice::from_raw_parts(rec.params, rec.nparams as usize) }
            };
            // SAFETY: `rec.dom` is valid while the list lives; the extra
            // reference taken here is the one `Domain` releases on drop, so
            // the domain outlives the list freed below.
            let dom = unsafe {
                if virt_sys::virDomainRef(rec.dom) < 0 {
                    continue;
                }
                Domain::from_ptr(rec.dom)
            };
            out.push(Record { dom, params: params.iter().filter_map(copy_param).collect() });
        }
        // SAFETY: `list` came from virConnectGetAllDomainStats and is freed once.
        unsafe { virt_sys::virDomainStatsRecordListFree(list) };
        Ok(out)
    }

    fn copy_param(p: &virt_sys::virTypedParameter) -> Option<(String, Value)> {
        // SAFETY: libvirt NUL-terminates `field` within its 80 bytes.
        let name = unsafe { CStr::from_ptr(p.field.as_ptr()) }.to_string_lossy().into_owned();
        // SAFETY: `type_` says which member of the union libvirt wrote.
        let value = unsafe {
            match p.type_ as u32 {
                virt_sys::VIR_TYPED_PARAM_INT => Value::Int(i64::from(p.value.i)),
                virt_sys::VIR_TYPED_PARAM_UINT => Value::UInt(u64::from(p.value.ui)),
                virt_sys::VIR_TYPED_PARAM_LLONG => Value::Int(p.value.l),
                virt_sys::VIR_TYPED_PARAM_ULLONG => Value::UInt(p.value.ul),
                virt_sys::VIR_TYPED_PARAM_DOUBLE => Value::Double(p.value.d),
                virt_sys::VIR_TYPED_PARAM_BOOLEAN => Value::Bool(p.value.b != 0),
                virt_sys::VIR_TYPED_PARAM_STRING if !p.value.s.is_null() => {
                    Value::Str(CStr::from_ptr(p.value.s).to_string_lossy().into_owned())
                }
                _ => return None,
            }
        };
        Some((name, value))
    }

    /// The domain's live blkio `weight`, or None when libvirt lists none.
    pub fn blkio_weight(dom: &Domain) -> Result<Option<u32>, Error> {
        let live = virt_sys::VIR_DOMAIN_AFFECT_LIVE;
        let mut n: c_int = 0;
        // SAFETY: a NULL params array with n = 0 asks libvirt for the count.
        if unsafe { virt_sys::virDomainGetBlkioParameters(dom.as_ptr(), ptr::null_mut(), &mut n, live) } < 0 {
            return Err(Error::last_error());
        }
        if n <= 0 {
            return Ok(None);
        }
        // SAFETY: an all-zero typed parameter is a valid empty one.
        let mut buf: Vec<virt_sys::virTypedParameter> = vec![unsafe { std::mem::zeroed() }; n as usize];
        // SAFETY: `buf` holds `n` parameters for libvirt to fill.
        if unsafe { virt_sys::virDomainGetBlkioParameters(dom.as_ptr(), buf.as_mut_ptr(), &mut n, live) } < 0 {
            return Err(Error::last_error());
        }
        let weight = buf[..n.max(0) as usize]
            .iter()
            .filter_map(copy_param)
            .find(|(name, _)| name == "weight")
            .and_then(|(_, v)| v.as_u64())
            .and_then(|w| u32::try_from(w).ok());
        // SAFETY: frees the strings libvirt put in the parameters (device lists), once.
        unsafe { virt_sys::virTypedParamsClear(buf.as_mut_ptr(), n) };
        Ok(weight)
    }

    /// Sets the domain's live blkio `weight`.
    pub fn set_blkio_weight(dom: &Domain, weight: u32) -> Result<(), Error> {
        // SAFETY: an all-zero typed parameter is a valid empty one.
        let mut p: virt_sys::virTypedParameter = unsafe { std::mem::zeroed() };
        for (dst, src) in p.field.iter_mut().zip(b"weight\0") {
            *dst = *src as std::os::raw::c_char;
        }
        p.type_ = virt_sys::VIR_TYPED_PARAM_UINT as c_int;
        p.value.ui = weight;
        // SAFETY: one initialised parameter, no strings to free.
        if unsafe { virt_sys::virDomainSetBlkioParameters(dom.as_ptr(), &mut p, 1, virt_sys::VIR_DOMAIN_AFFECT_LIVE) } < 0 {
            return Err(Error::last_error());
        }
        Ok(())
    }

    /// `virNodeGetCPUStats` of one host CPU: (field, ns) pairs such as
    /// `kernel`, `user`, `idle`, `iowait`.
    pub fn node_cpu_stats(conn: &Connect, cpu: c_int) -> Result<Vec<(String, u64)>, Error> {
        let empty = virt_sys::virNodeCPUStats { field: [0; 80], value: 0 };
        node_stats(
            empty,
            // SAFETY: `conn` is open; `buf` is NULL (count only) or has room for `n` entries.
            |buf, n| unsafe { virt_sys::virNodeGetCPUStats(conn.as_ptr(), cpu, buf, n, 0) },
            |s| (&s.field, s.value),
        )
    }

    /// `virDomainGetVcpuPinInfo`, live: each of `vcpus` vCPUs' CPU map of
    /// `maplen` bytes (bit N of byte N/8: host CPU N).
    pub fn vcpu_pin_info(dom: &Domain, vcpus: usize, maplen: usize) -> Result<Vec<Vec<u8>>, Error> {
        let mut buf = vec![0u8; vcpus * maplen];
        // SAFETY: `buf` holds `vcpus` maps of `maplen` bytes for libvirt to fill.
        let n = unsafe {
            virt_sys::virDomainGetVcpuPinInfo(
                dom.as_ptr(),
                vcpus as c_int,
                buf.as_mut_ptr(),
                maplen as c_int,
                virt_sys::VIR_DOMAIN_AFFECT_LIVE,
            )
        };
        if n < 0 {
            return Err(Error::last_error());
        }
        Ok(buf.chunks(maplen).take(n as usize).map(<[u8]>::to_vec).collect())
    }

    /// libvirt's names for one direction's three parameters.
    const IN: [&[u8]; 3] = [b"inbound.average\0", b"inbound.peak\0", b"inbound.burst\0"];
    const OUT: [&[u8]; 3] = [b"outbound.average\0", b"outbound.peak\0", b"outbound.burst\0"];

    /// The live bandwidth limit of interface `dev` (target name or MAC).
    pub fn interface_bandwidth(dom: &Domain, dev: &CStr) -> Result<NetLimit, Error> {
        let live = virt_sys::VIR_DOMAIN_AFFECT_LIVE;
        let mut n: c_int = 0;
        // SAFETY: a NULL params array with n = 0 asks libvirt for the count.
        if unsafe { virt_sys::virDomainGetInterfaceParameters(dom.as_ptr(), dev.as_ptr(), ptr::null_mut(), &mut n, live) } < 0 {
            return Err(Error::last_error());
        }
        if n <= 0 {
            return Ok(NetLimit::default());
        }
        // SAFETY: an all-zero typed parameter is a valid empty one.
        let mut buf: Vec<virt_sys::virTypedParameter> = vec![unsafe { std::mem::zeroed() }; n as usize];
        // SAFETY: `buf` holds `n` parameters for libvirt to fill.
        if unsafe { virt_sys::virDomainGetInterfaceParameters(dom.as_ptr(), dev.as_ptr(), buf.as_mut_ptr(), &mut n, live) } < 0 {
            return Err(Error::last_error());
        }
        let params: Vec<(String, Value)> = buf[..n.max(0) as usize].iter().filter_map(copy_param).collect();
        // SAFETY: frees whatever strings libvirt put in the parameters, once.
        unsafe { virt_sys::virTypedParamsClear(buf.as_mut_ptr(), n) };
        let get = |name: &[u8]| {
            let name = &name[..name.len() - 1];
            params.iter().find(|(n, _)| n.as_bytes() == name).and_then(|(_, v)| v.as_u64()).unwrap_or(0)
        };
        let dir = |names: [&[u8]; 3]| Bandwidth { average: get(names[0]), peak: get(names[1]), burst: get(names[2]) };
        Ok(NetLimit { inbound: dir(IN), outbound: dir(OUT) })
    }

    /// Sets the live bandwidth limit of interface `dev`, every parameter
    /// given (0 clears one), so libvirt keeps nothing of the old limit.
    pub fn set_interface_bandwidth(dom: &Domain, dev: &CStr, limit: &NetLimit) -> Result<(), Error> {
        let values = |b: &Bandwidth| [b.average, b.peak, b.burst];
        let mut params: Vec<virt_sys::virTypedParameter> = IN
            .iter()
            .zip(values(&limit.inbound))
            .chain(OUT.iter().zip(values(&limit.outbound)))
            .map(|(name, v)| {
                // SAFETY: an all-zero typed parameter is a valid empty one.
                let mut p: virt_sys::virTypedParameter = unsafe { std::mem::zeroed() };
                for (dst, src) in p.field.iter_mut().zip(name.iter()) {
                    *dst = *src as std::os::raw::c_char;
                }
                p.type_ = virt_sys::VIR_TYPED_PARAM_UINT as c_int;
                p.value.ui = u32::try_from(v).unwrap_or(u32::MAX);
                p
            })
            .collect();
        // SAFETY: six initialised parameters, no strings to free.
        let r = unsafe {
            virt_sys::virDomainSetInterfaceParameters(
                dom.as_ptr(),
                dev.as_ptr(),
                params.as_mut_ptr(),
                params.len() as c_int,
                virt_sys::VIR_DOMAIN_AFFECT_LIVE,
            )
        };
        if r < 0 {
            return Err(Error::last_error());
        }
        Ok(())
    }

    /// A disk's live `total_bytes_sec` I/O limit (`blkdeviotune`); 0: none.
    pub fn block_iotune_total(dom: &Domain, dev: &CStr) -> Result<u64, Error> {
        let live = virt_sys::VIR_DOMAIN_AFFECT_LIVE;
        let mut n: c_int = 0;
        // SAFETY: a NULL params array with n = 0 asks libvirt for the count.
        if unsafe { virt_sys::virDomainGetBlockIoTune(dom.as_ptr(), dev.as_ptr(), ptr::null_mut(), &mut n, live) } < 0 {
            return Err(Error::last_error());
        }
        if n <= 0 {
            return Ok(0);
        }
        // SAFETY: an all-zero typed parameter is a valid empty one.
        let mut buf: Vec<virt_sys::virTypedParameter> = vec![unsafe { std::mem::zeroed() }; n as usize];
        // SAFETY: `buf` holds `n` parameters for libvirt to fill.
        if unsafe { virt_sys::virDomainGetBlockIoTune(dom.as_ptr(), dev.as_ptr(), buf.as_mut_ptr(), &mut n, live) } < 0 {
            return Err(Error::last_error());
        }
        let total = buf[..n.max(0) as usize]
            .iter()
            .filter_map(copy_param)
            .find(|(name, _)| name == "total_bytes_sec")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(0);
        // SAFETY: frees the strings libvirt put in the parameters (the group name), once.
        unsafe { virt_sys::virTypedParamsClear(buf.as_mut_ptr(), n) };
        Ok(total)
    }

    /// Sets a disk's live `total_bytes_sec` I/O limit; 0 removes it.
    pub fn set_block_iotune_total(dom: &Domain, dev: &CStr, bytes_sec: u64) -> Result<(), Error> {
        // SAFETY: an all-zero typed parameter is a valid empty one.
        let mut p: virt_sys::virTypedParameter = unsafe { std::mem::zeroed() };
        for (dst, src) in p.field.iter_mut().zip(b"total_bytes_sec\0") {
            *dst = *src as std::os::raw::c_char;
        }
        p.type_ = virt_sys::VIR_TYPED_PARAM_ULLONG as c_int;
        p.value.ul = bytes_sec;
        // SAFETY: one initialised parameter, no strings to free.
        if unsafe { virt_sys::virDomainSetBlockIoTune(dom.as_ptr(), dev.as_ptr(), &mut p, 1, virt_sys::VIR_DOMAIN_AFFECT_LIVE) } < 0 {
            return Err(Error::last_error());
        }
        Ok(())
    }

    /// `virNodeGetMemoryStats` for all cells: (field, KiB) pairs such as
    /// `total`, `free`, `buffers`, `cached`.
    pub fn node_memory_stats(conn: &Connect) -> Result<Vec<(String, u64)>, Error> {
        let cells = virt_sys::VIR_NODE_MEMORY_STATS_ALL_CELLS;
        let empty = virt_sys::virNodeMemoryStats { field: [0; 80], value: 0 };
        node_stats(
            empty,
            // SAFETY: `conn` is open; `buf` is NULL (count only) or has room for `n` entries.
            |buf, n| unsafe { virt_sys::virNodeGetMemoryStats(conn.as_ptr(), cells, buf, n, 0) },
            |s| (&s.field, s.value),
        )
    }

    /// The node stats calls' shape: asked with NULL for the count, then
    /// with room for that many (field, value) entries.
    fn node_stats<T: Clone>(
        empty: T,
        mut call: impl FnMut(*mut T, &mut c_int) -> c_int,
        entry: impl Fn(&T) -> (&[std::os::raw::c_char; 80], u64),
    ) -> Result<Vec<(String, u64)>, Error> {
        let mut n: c_int = 0;
        if call(ptr::null_mut(), &mut n) < 0 {
            return Err(Error::last_error());
        }
        if n <= 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![empty; n as usize];
        if call(buf.as_mut_ptr(), &mut n) < 0 {
            return Err(Error::last_error());
        }
        buf.truncate(n.max(0) as usize);
        Ok(buf
            .iter()
            .map(|s| {
                let (field, value) = entry(s);
                // SAFETY: libvirt NUL-terminates `field` within its 80 bytes.
                let name = unsafe { CStr::from_ptr(field.as_ptr()) }.to_string_lossy().into_owned();
                (name, value)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn missing_stats_are_stood_in_for_a_few_seconds() {
        let t0 = Instant::now();
        let last = (GuestMemStats { total: Bytes::from_mib(400), ..Default::default() }, t0);
        let fresh = GuestMemStats { total: Bytes::from_mib(300), ..Default::default() };
        assert_eq!(stats_or_recent(Some(fresh.clone()), Some(&last), t0), Some(fresh));
        assert_eq!(stats_or_recent(None, Some(&last), t0 + Duration::from_secs(2)), Some(last.0.clone()));
        assert_eq!(stats_or_recent(None, Some(&last), t0 + STATS_GRACE), None);
        assert_eq!(stats_or_recent(None, None, t0), None);
    }
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
        assert!(xml_has_balloon("<devices><memballoon model='virtio'>\n<stats period='2'/></memballoon>"));
        assert!(!xml_has_balloon("<devices><memballoon model='none'/></devices>"));
        assert!(!xml_has_balloon("<devices><memballoon model=\"none\"/></devices>"));
        assert!(!xml_has_balloon("<devices></devices>"));
    }

    #[test]
    fn guest_stats_need_total_and_usable() {
        let p = |n: &str, v: u64| (n.to_owned(), ffi::Value::UInt(v));
        let mut params = vec![
            ("state.state".to_owned(), ffi::Value::Int(1)),
            p("balloon.current", 524288),
            p("balloon.maximum", 524288),
            p("balloon.available", 500000),
            p("balloon.unused", 100000),
            p("balloon.swap_out", 4),
            p("balloon.major_fault", 7),
            p("balloon.last-update", 1700000000),
            p("balloon.oom_kills", 2),
        ];
        assert_eq!(Fields::parse(&params).guest_stats(), None, "no usable, no stats");
        params.push(p("balloon.usable", 300000));
        let f = Fields::parse(&params);
        assert_eq!(vm_state(f.state), VmState::Running);
        let s = f.guest_stats().expect("stats");
        assert_eq!(s.total, Bytes::from_kib(500000));
        assert_eq!(s.used(), Bytes::from_kib(200000));
        assert_eq!(s.swap_out, Bytes::from_kib(4));
        assert_eq!(s.major_faults, 7);
        assert_eq!(s.oom_kills, Some(2));
        assert_eq!(s.last_update, Some(1700000000));
    }

    #[test]
    fn activity_sums_devices_and_bridges_missing_counters() {
        let p = |n: &str, v: u64| (n.to_owned(), ffi::Value::UInt(v));
        let mut params = vec![
            p("cpu.time", 7_000_000),
            p("net.count", 2),
            p("net.0.rx.bytes", 100),
            p("net.0.tx.bytes", 10),
            p("net.1.rx.bytes", 200),
            p("net.1.tx.bytes", 20),
            p("net.0.rx.pkts", 99),
            p("block.count", 1),
            ("block.0.name".to_owned(), ffi::Value::Str("vda".into())),
            p("block.0.rd.bytes", 4096),
            p("block.0.wr.bytes", 512),
            p("block.0.rd.reqs", 8),
            p("vcpu.current", 2),
            p("vcpu.0.delay", 1000),
            p("vcpu.1.delay", 500),
            p("vcpu.0.wait", 77),
        ];
        let a = Fields::parse(&params).activity(None).expect("activity");
        assert_eq!(
            a,
            Activity {
                cpu_time_ns: 7_000_000,
                vcpu_wait_ns: 1500,
                vcpus: 2,
                net_rx_bytes: 300,
                net_tx_bytes: 30,
                disk_read_bytes: 4096,
                disk_write_bytes: 512
            }
        );
        // A busy domain under NOWAIT: the disk has no counters this tick, and
        // the last sums stand in rather than dropping to zero.
        params.retain(|(n, _)| !n.starts_with("block.0.rd") && !n.starts_with("block.0.wr"));
        assert_eq!(Fields::parse(&params).activity(Some(&a)).unwrap().disk_read_bytes, 4096);
        // No devices at all: zero, not the last.
        let bare = [p("cpu.time", 1), p("net.count", 0), p("block.count", 0)];
        assert_eq!(
            Fields::parse(&bare).activity(Some(&a)).unwrap(),
            Activity { cpu_time_ns: 1, vcpu_wait_ns: 1500, vcpus: 2, ..Activity::default() },
            "a record without the vCPU group keeps the last vCPU figures"
        );
        // No cpu.time: no counters from this driver.
        assert_eq!(Fields::parse(&[p("state.state", 1)]).activity(None), None);
        assert_eq!(device_counter("net.12.tx.bytes"), Some(("net", "tx.bytes")));
        assert_eq!(device_counter("net.count"), None);
        assert_eq!(device_counter("cpu.cache.monitor.count"), None);
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

    #[test]
    fn interface_bandwidth_round_trip_on_the_test_driver() {
        // The test driver keeps limits without enforcing them: the plumbing
        // of both calls, which QEMU on this host refuses to go through.
        let conn = Connect::open(Some("test:///default")).unwrap();
        let dom = conn.lookup_domain_by_name("test").unwrap();
        let dev = bandwidth_interface(&dom.xml_desc(0).unwrap()).expect("`test` has a network interface");
        assert_eq!(ffi::interface_bandwidth(&dom, &dev).unwrap(), ebb_core::NetLimit::default(), "unlimited");
        let b = |average, peak, burst| ebb_core::Bandwidth { average, peak, burst };
        let limit = ebb_core::NetLimit { inbound: b(1024, 2048, 64), outbound: b(256, 0, 0) };
        ffi::set_interface_bandwidth(&dom, &dev, &limit).unwrap();
        assert_eq!(ffi::interface_bandwidth(&dom, &dev).unwrap(), limit);
        // Every parameter is given: a raised limit keeps nothing of the old.
        let raised = ebb_core::NetLimit { inbound: b(4096, 4096, 64), outbound: b(0, 0, 0) };
        ffi::set_interface_bandwidth(&dom, &dev, &raised).unwrap();
        assert_eq!(ffi::interface_bandwidth(&dom, &dev).unwrap(), raised);
        let missing = std::ffi::CString::new("nosuchdev").unwrap();
        assert!(ffi::interface_bandwidth(&dom, &missing).unwrap_err().message().contains("nosuchdev"));
    }

    #[test]
    fn states() {
        assert_eq!(vm_state(Some(2)), VmState::Running);
        assert_eq!(vm_state(Some(3)), VmState::Paused);
        assert_eq!(vm_state(Some(5)), VmState::ShutOff);
        assert_eq!(vm_state(Some(6)), VmState::Other);
        assert_eq!(vm_state(None), VmState::Other);
    }
}
