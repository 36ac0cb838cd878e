//! libvirt backend: one `virConnectGetAllDomainStats` per tick, live-only
//! balloon targets, and ebb's element in a domain's `<metadata>`.
//!
//! Everything the `virt` crate wraps safely goes through it; `ffi.rs` holds
//! the calls it leaves raw (the only unsafe code), `tune.rs` the typed
//! parameters of the live tunes in ebb's terms, `stats.rs` the bulk stats
//! records, `xml.rs` what ebb reads from the domain XML.
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

// The FFI edge: the only unsafe code in ebb-backends.
#[allow(unsafe_code)]
mod ffi;
mod consoles;
mod stats;
mod test_node;
mod tune;
mod xml;

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::path::PathBuf;
use std::time::Instant;

use ebb_core::affinity::{CpuSet, HostCpuTime};
use ebb_core::{Activity, Balloon, BalloonFeatures, Bytes, GuestMemStats, HostMemory, Observation, Tune, VmId, VmObservation, VmState};
use tracing::{debug, debug_span, warn};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::enumutil::Enum;
use virt::error::{Error as VirtError, ErrorNumber};

use crate::{BackendError, HvError, Hypervisor, EBB_METADATA_NS};
use stats::{stats_or_recent, vm_state, Fields, STATS, STATS_FLAGS};
use xml::{bandwidth_interface, first_disk_target, xml_balloon, xml_disk_sources};

pub use test_node::test_node_xml;

/// A connection to one libvirt driver (`qemu:///system`, `test:///default`, …).
pub struct LibvirtHypervisor {
    uri: String,
    conn: Connect,
    /// Each domain's balloon device (None: it has none), by UUID, with the
    /// domain id it was read for: the XML is read again only when the domain
    /// (re)starts or appears. A balloon device cannot be hot-plugged.
    balloons: HashMap<String, (Option<u32>, Option<BalloonFeatures>)>,
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
    /// The domain event callbacks registered on `conn` (`watch_consoles`).
    event_ids: Vec<std::os::raw::c_int>,
}

impl Drop for LibvirtHypervisor {
    fn drop(&mut self) {
        ffi::deregister_domain_events(&self.conn, &self.event_ids);
    }
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
        // Events need libvirt's event loop registered before the connection opens.
        if let Err(e) = ffi::start_event_loop() {
            warn!("libvirt's event loop could not start, so console sessions are not seen: {e}");
        }
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
            event_ids: Vec::new(),
        })
    }

    /// The underlying connection, for callers that need more than the trait
    /// (tests that define domains and set their metadata).
    pub fn connection(&self) -> &Connect {
        &self.conn
    }

    fn disconnected(&self, e: VirtError) -> HvError {
        HvError::Disconnected { uri: self.uri.clone(), detail: cause(e) }
    }

    /// True when an error means the connection itself is gone: libvirt says
    /// so (NO_CONNECT), or the connection no longer answers `is_alive` (a
    /// closed socket shows up as SYSTEM_ERROR or RPC first).
    fn connection_lost(&self, e: &VirtError) -> bool {
        code_is(e, ErrorNumber::NoConnect) || !matches!(self.conn.is_alive(), Ok(true))
    }

    /// Maps an error of a call about the host or every domain.
    fn host_error(&self, op: &'static str, e: VirtError) -> HvError {
        if self.connection_lost(&e) {
            self.disconnected(e)
        } else {
            HvError::Host { op, detail: cause(e) }
        }
    }

    /// Maps an error of one VM operation.
    fn vm_error(&self, op: &'static str, vm: &VmId, e: VirtError) -> HvError {
        if self.connection_lost(&e) {
            self.disconnected(e)
        } else if code_is(&e, ErrorNumber::NoDomain) {
            HvError::NoSuchVm(vm.clone())
        } else {
            HvError::Operation { op, vm: vm.clone(), detail: cause(e) }
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

    /// The domain's balloon device, from its XML, cached per run.
    fn balloon_features(&mut self, dom: &Domain, name: &str) -> Option<BalloonFeatures> {
        // Unknown: assume a stock balloon this tick and look again next tick.
        let Ok(uuid) = dom.uuid_string() else { return Some(BalloonFeatures::default()) };
        let id = dom.id();
        if let Some(&(cached_id, features)) = self.balloons.get(&uuid) {
            if cached_id == id {
                return features;
            }
        }
        match dom.xml_desc(0) {
            Ok(xml) => {
                let features = xml_balloon(&xml);
                self.balloons.insert(uuid, (id, features));
                features
            }
            Err(e) => {
                // Gone between the stats and this call, most likely.
                debug!(vm = name, error = %e.message(), "could not read domain XML");
                Some(BalloonFeatures::default())
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
            Err(e) if self.connection_lost(&e) => Err(self.disconnected(e)),
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
                Err(e) if self.connection_lost(&e) => return Err(self.disconnected(e)),
                Err(e) => {
                    debug!(uri = %self.uri, error = %e.message(), "no node memory stats; using node info");
                    self.node_stats = false;
                }
            }
        }
        let info = self.conn.node_info().map_err(|e| self.disconnected(e))?;
        let total = Bytes::from_kib(info.memory);
        Ok(HostMemory { total, available: total - guests })
    }
}

fn open(uri: &str) -> Result<Connect, HvError> {
    Connect::open(Some(uri)).map_err(|e| HvError::Disconnected { uri: uri.to_owned(), detail: cause(e) })
}

/// libvirt's error as the cause of an `HvError`.
fn cause(e: VirtError) -> BackendError {
    BackendError::new(Libvirt(e))
}

/// libvirt's error told by its message alone (its own Display adds the
/// level, code and domain), itself the source for whoever wants those.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.message())]
struct Libvirt(#[source] VirtError);

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
            self.disconnected(e)
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
            let host_rss = f.rss.filter(|_| active).map(Bytes::from_kib);
            let balloon = self.balloon_features(&rec.dom, &name).map(|features| Balloon { current, maximum, stats, features, host_rss });
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
        xml_disk_sources(&xml).map_err(|e| HvError::Operation { op: "read disk sources", vm: vm.clone(), detail: BackendError::new(e) })
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
            detail: BackendError::said(format!("the {} scheduler has no cpu_shares", info.scheduler_type)),
        })?;
        // A host without the blkio controller: ebb leaves the disk alone.
        let io_weight = match tune::blkio_weight(&dom) {
            Ok(w) => w,
            Err(e) => {
                debug!(vm = %vm, error = %e.message(), "no blkio weight");
                None
            }
        };
        // No interface that can take a limit: ebb leaves the network alone.
        let (interface, disk) = self.tune_targets("read CPU tune", vm, &dom)?;
        let net = match interface {
            Some(dev) => match tune::interface_bandwidth(&dom, &dev) {
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
            Some(dev) => tune::block_iotune_total(&dom, &dev)
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
                let stats = ffi::node_cpu_stats(&self.conn, cpu).map_err(|e| self.disconnected(e))?;
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
                let now = tune::interface_bandwidth(&dom, &dev).map_err(|e| self.vm_error("read bandwidth", vm, e))?;
                if now != net {
                    tune::set_interface_bandwidth(&dom, &dev, &net).map_err(|e| {
                        if self.connection_lost(&e) {
                            self.disconnected(e)
                        } else {
                            HvError::Bandwidth { vm: vm.clone(), detail: cause(e) }
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
            tune::set_blkio_weight(&dom, w).map_err(|e| self.vm_error("set disk weight", vm, e))?;
        }
        if let (Some(limit), Some(dev)) = (tune.disk_limit, disk) {
            if tune::block_iotune_total(&dom, &dev).ok() != Some(limit) {
                tune::set_block_iotune_total(&dom, &dev, limit).map_err(|e| self.vm_error("set disk I/O limit", vm, e))?;
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

    fn watch_consoles(&mut self, sink: ebb_core::clients::ConsoleSink) -> Result<bool, HvError> {
        let ids = ffi::register_domain_events(&self.conn, &consoles::console_sink(sink)).map_err(|e| self.host_error("register for domain events", e))?;
        self.event_ids.extend(ids);
        Ok(true)
    }

    fn console_sessions(&mut self) -> Result<Vec<(VmId, String)>, HvError> {
        let doms = self.conn.list_all_domains(virt_sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE).map_err(|e| self.host_error("list the running domains", e))?;
        let tcp = [std::fs::read_to_string("/proc/net/tcp"), std::fs::read_to_string("/proc/net/tcp6")].map(Result::unwrap_or_default).concat();
        let mut out = Vec::new();
        for dom in doms {
            let (Ok(name), Ok(xml)) = (dom.name(), dom.xml_desc(0)) else { continue };
            for port in consoles::graphics_ports(&xml) {
                out.extend(consoles::established_peers(&tcp, port).into_iter().map(|r| (VmId::new(name.clone()), r)));
            }
        }
        Ok(out)
    }
}
