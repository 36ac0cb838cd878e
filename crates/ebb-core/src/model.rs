//! What the agent sees each tick (`Observation`) and what it may do
//! (`Action`), each action carrying the `Reason` that `ebb explain` prints.

use crate::units::{Bytes, Millis};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// A VM's identity: its libvirt domain name, unique on a host. Shared, not
/// copied: the policies keep and return ids of 10,000 VMs every tick.
#[derive(Clone, Debug, PartialOrd, Ord)]
pub struct VmId(Arc<str>);

/// Two handles of one shared name are equal without reading it: the
/// policies line up 10,000 ids a tick with the observation's, mostly clones
/// of the same `Arc`, and comparing the text meant a cache miss on each.
/// (`Arc<str>`'s own `==` compares the text.)
impl PartialEq for VmId {
    fn eq(&self, other: &VmId) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for VmId {}

/// The text's hash, as a derived `Hash` would: equal ids hash alike.
impl std::hash::Hash for VmId {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.hash(h)
    }
}

impl VmId {
    pub fn new(name: impl AsRef<str>) -> VmId {
        VmId(Arc::from(name.as_ref()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for VmId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for VmId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<VmId, D::Error> {
        String::deserialize(d).map(VmId::new)
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One tick's view of the host and every domain, read with one bulk call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub at: Millis,
    pub host: HostMemory,
    /// The host's logical CPUs (what VMs' CPU use is measured against).
    #[serde(default)]
    pub host_cpus: u32,
    pub vms: Vec<VmObservation>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostMemory {
    pub total: Bytes,
    /// What the host could still hand out without swapping (MemAvailable).
    pub available: Bytes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Running,
    Paused,
    ShutOff,
    /// Crashed, suspended by the PM, being migrated, …: nothing to manage.
    Other,
}

impl VmState {
    /// The state in words, the same in every view and message: "not running
    /// (paused)", "web is shut off".
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::ShutOff => "shut off",
            VmState::Other => "crashed, suspended or migrating",
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmObservation {
    pub id: VmId,
    pub state: VmState,
    /// None when the domain has no balloon device.
    pub balloon: Option<Balloon>,
    /// Cumulative activity counters; None when the domain is not active or
    /// the driver reports none (libvirt's test driver).
    #[serde(default)]
    pub activity: Option<Activity>,
    /// The domain has a persistent definition. Only a persistent domain can
    /// be saved (managedsave): a transient one exists only while it runs.
    #[serde(default = "yes")]
    pub persistent: bool,
    /// A managed save image exists: the next start restores from it.
    #[serde(default)]
    pub managed_save: bool,
    /// Its CPU scheduling as libvirt has it live; None when not read (not
    /// running, or the driver has no scheduler parameters).
    #[serde(default)]
    pub tune: Option<Tune>,
}

/// A running domain's scheduling as ebb may change it: its CPU weight
/// against other domains and bandwidth cap per vCPU (libvirt's `schedinfo`),
/// its disk I/O weight (`blkiotune`) and its network bandwidth limit
/// (`domiftune`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tune {
    /// Relative weight (`cpu_shares`): only matters when CPUs are contended.
    pub shares: u64,
    /// The cap: each vCPU may run `quota_us` per `period_us`; None: uncapped.
    pub quota_us: Option<u64>,
    pub period_us: u64,
    /// Relative disk I/O weight (`blkiotune --weight`, 100–1000); None when
    /// the host has no blkio controller for it, and then never set.
    #[serde(default)]
    pub io_weight: Option<u32>,
    /// The bandwidth limit of its first interface that can take one; None
    /// when it has no such interface (QEMU user-mode networking cannot).
    #[serde(default)]
    pub net: Option<NetLimit>,
    /// Its first disk's I/O limit (`blkdeviotune --total-bytes-sec`), bytes
    /// per second, 0 when unlimited; None when it has no disk.
    #[serde(default)]
    pub disk_limit: Option<u64>,
}

/// An interface's bandwidth limit as libvirt has it (`domiftune`), each
/// direction from the guest's side: inbound is what it receives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetLimit {
    pub inbound: Bandwidth,
    pub outbound: Bandwidth,
}

/// One direction's limit in libvirt's units; an `average` of 0 means no
/// limit. `peak` (KiB/s) and `burst` (KiB) are 0 when unset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Bandwidth {
    /// KiB/s.
    pub average: u64,
    #[serde(default)]
    pub peak: u64,
    #[serde(default)]
    pub burst: u64,
}

impl Bandwidth {
    /// The average as a rate; None when unlimited.
    pub fn limit(&self) -> Option<Bytes> {
        (self.average > 0).then(|| Bytes::from_kib(self.average))
    }
}

impl NetLimit {
    /// Neither direction is limited.
    pub fn unlimited(&self) -> bool {
        self.inbound.average == 0 && self.outbound.average == 0
    }
}

impl fmt::Display for NetLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = |b: &Bandwidth| b.limit().map_or("unlimited".to_owned(), |l| format!("{l}/s"));
        write!(f, "bandwidth limit in {}, out {}", dir(&self.inbound), dir(&self.outbound))
    }
}

impl Tune {
    /// The cap as a fraction of one vCPU; None when uncapped.
    pub fn cap(&self) -> Option<f64> {
        self.quota_us.map(|q| q as f64 / self.period_us.max(1) as f64)
    }
}

impl fmt::Display for Tune {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "weight {}", self.shares)?;
        match self.cap() {
            Some(c) => write!(f, ", cap {:.0}% of a vCPU", c * 100.0)?,
            None => f.write_str(", no cap")?,
        }
        if let Some(w) = self.io_weight {
            write!(f, ", disk weight {w}")?;
        }
        if let Some(n) = self.net {
            write!(f, ", {n}")?;
        }
        match self.disk_limit {
            Some(0) => f.write_str(", disk unlimited"),
            Some(l) => write!(f, ", disk limit {}/s", crate::units::Bytes(l)),
            None => Ok(()),
        }
    }
}

fn yes() -> bool {
    true
}

/// A domain's activity counters, cumulative since its QEMU process started:
/// they go back to zero when the domain restarts or is restored from a save.
/// Summed over all of the domain's interfaces and disks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// CPU time of the whole domain (libvirt's `cpu.time`).
    pub cpu_time_ns: u64,
    /// Time its vCPUs were ready to run but waited for a host CPU, summed
    /// over vCPUs (libvirt's `vcpu.N.wait`): contention, seen from the VM.
    #[serde(default)]
    pub vcpu_wait_ns: u64,
    /// Online vCPUs (libvirt's `vcpu.current`).
    #[serde(default)]
    pub vcpus: u32,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
}

/// How an idle VM sleeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SleepMode {
    /// Save its state to disk and free its memory (libvirt managedsave);
    /// waking restores it (~0.5 s for a 512 MiB guest here).
    #[default]
    Save,
    /// Pause its vCPUs and keep its memory: wakes at once, frees no memory.
    Pause,
}

impl SleepMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SleepMode::Save => "save",
            SleepMode::Pause => "pause",
        }
    }
}

/// The balloon as libvirt reports it. `current` is the guest's memory size
/// (what the balloon leaves the guest), not the balloon's own size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Balloon {
    pub current: Bytes,
    pub maximum: Bytes,
    /// None when the guest driver sends no statistics (no stats period set,
    /// driver not loaded yet, guest hung).
    pub stats: Option<GuestMemStats>,
    /// What the balloon device does by itself (from the domain XML).
    #[serde(default)]
    pub features: BalloonFeatures,
    /// What the host really holds for the guest: its QEMU process's
    /// resident memory (libvirt's `balloon.rss`). Below `current` by the
    /// pages the guest never touched or handed back (free page reporting);
    /// above it by QEMU's own memory. None when not reported.
    #[serde(default)]
    pub host_rss: Option<Bytes>,
}

impl Balloon {
    /// Memory the guest may take back from the host without anyone asking:
    /// its size less what the host holds for it (pages it never touched,
    /// or freed and reported). The host's available memory counts it, but
    /// it is spoken for.
    pub fn returned(&self) -> Bytes {
        self.host_rss.map_or(Bytes::ZERO, |rss| self.current.saturating_sub(rss))
    }

    /// What the guest uses, read right for its kind of balloon (see
    /// `GuestMemStats::used_beside`); None without stats.
    pub fn used(&self) -> Option<Bytes> {
        self.stats.as_ref().map(|s| s.used_beside(self, self.current))
    }
}

/// The balloon's own safety nets, as the domain XML declares them
/// (`<memballoon model='virtio' autodeflate='on' freePageReporting='on'>`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonFeatures {
    /// `autodeflate='on'` (virtio deflate-on-OOM): a guest about to run out
    /// of memory takes balloon pages back itself, before its OOM killer
    /// runs. Its MemTotal then does not shrink as the balloon grows.
    pub deflate_on_oom: bool,
    /// `freePageReporting='on'`: the guest hands the pages it frees back to
    /// the host by itself.
    pub free_page_reporting: bool,
}

impl BalloonFeatures {
    /// What a managed guest without either safety net risks, in words;
    /// None when it has one (`ebb check`, `ebb vms`, `ebb explain`).
    pub fn risk(&self) -> Option<&'static str> {
        (!self.deflate_on_oom && !self.free_page_reporting).then_some(
            "its balloon has neither deflate-on-OOM nor free page reporting: a burst of allocation faster than ebb's tick \
             can get its processes OOM-killed before ebb gives memory back \
             (add autodeflate='on' freePageReporting='on' to its <memballoon>)",
        )
    }

    /// "deflate-on-oom+fpr", "deflate-on-oom", "fpr" or "stock".
    pub fn as_str(&self) -> &'static str {
        match (self.deflate_on_oom, self.free_page_reporting) {
            (true, true) => "deflate-on-oom+fpr",
            (true, false) => "deflate-on-oom",
            (false, true) => "fpr",
            (false, false) => "stock",
        }
    }
}

/// The guest's own memory statistics from its balloon driver. Counters are
/// cumulative since guest boot; the policy turns them into deltas.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestMemStats {
    /// MemTotal as the guest sees it (balloon.available).
    pub total: Bytes,
    /// MemFree (balloon.unused).
    pub unused: Bytes,
    /// MemAvailable: what the guest could free without swapping (balloon.usable).
    pub usable: Bytes,
    pub swap_in: Bytes,
    pub swap_out: Bytes,
    pub major_faults: u64,
    /// Reported by Linux ≥ 6.12 only.
    pub oom_kills: Option<u64>,
    /// Guest-side timestamp of the stats (seconds), to tell stale stats.
    pub last_update: Option<u64>,
}

impl GuestMemStats {
    /// Memory the guest needs: what it could not free without swapping.
    /// For a stock balloon; `used_beside` reads any balloon.
    pub fn used(&self) -> Bytes {
        self.total.saturating_sub(self.usable)
    }

    /// MemTotal without what the balloon holds, had the guest `size` when
    /// these stats were taken. A deflate-on-OOM guest's driver leaves its
    /// balloon pages in MemTotal (they may come back), so they read as
    /// used: taken out here, or ebb would never reclaim from such a guest.
    pub fn total_beside(&self, b: &Balloon, size: Bytes) -> Bytes {
        if b.features.deflate_on_oom {
            self.total.saturating_sub(b.maximum.saturating_sub(size))
        } else {
            self.total
        }
    }

    /// What the guest uses, its balloon's pages left out (see `total_beside`).
    pub fn used_beside(&self, b: &Balloon, size: Bytes) -> Bytes {
        self.total_beside(b, size).saturating_sub(self.usable)
    }
}

/// Per-VM settings as the policies see them, after config file, domain
/// metadata and defaults were merged by the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmSettings {
    /// Relative claim on the pool (the seed's shares; Proxmox's default 1000).
    pub shares: u32,
    /// Guaranteed size: ebb never targets the guest below it.
    pub min: Option<Bytes>,
    /// Largest size ebb gives the guest (capped by the domain's maximum).
    pub max: Option<Bytes>,
    /// False: ebb observes the VM but never changes it.
    pub managed: bool,
    /// The fastest its use of memory has grown, per second, as its needs
    /// history has it: learned, not configured. It sizes the headroom.
    #[serde(default)]
    pub burst_rate: Option<Bytes>,
}

impl Default for VmSettings {
    fn default() -> Self {
        VmSettings { shares: 1000, min: None, max: None, managed: true, burst_rate: None }
    }
}

/// Why ebb did something: the rule that fired and the numbers behind it,
/// in words a person reads in `ebb explain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub rule: Rule,
    pub text: String,
}

impl Reason {
    pub fn new(rule: Rule, text: impl Into<String>) -> Reason {
        Reason { rule, text: text.into() }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Take idle memory back for the pool (idle memory tax).
    Reclaim,
    /// Give memory to a guest under pressure.
    GiveBack,
    /// Grow a guest because the pool has room for it.
    Grow,
    /// A balloon made no progress: re-target it where it is.
    Stuck,
    /// The guest showed distress during a reclaim: stop and back off.
    BackOff,
    /// Hold: nothing to change or within the dead band.
    Hold,
    /// The VM cannot be managed this tick (no balloon, no stats, not running).
    Skip,
    /// Put an idle VM to sleep (save or pause it).
    Sleep,
    /// Wake a sleeping VM (a client arrived through its surrogate, or a person asked).
    Wake,
    /// Give a VM more of a resource its activity is bound on.
    Boost,
    /// Take back what an idle VM does not use (its claim, not its use).
    Yield,
    /// Put a time-critical VM first.
    Critical,
    /// Undo a change: the activity that caused it has passed.
    Restore,
    /// A power event: save on low battery, power down, restore when power is back.
    Power,
    /// Move a VM's vCPUs to other host CPUs, or back.
    Affinity,
    /// The farm: save the VMs of a host no client uses before it sleeps,
    /// and restore them when it wakes.
    HostSleep,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Reclaim => "reclaim",
            Rule::GiveBack => "give_back",
            Rule::Grow => "grow",
            Rule::Stuck => "stuck",
            Rule::BackOff => "back_off",
            Rule::Hold => "hold",
            Rule::Skip => "skip",
            Rule::Sleep => "sleep",
            Rule::Wake => "wake",
            Rule::Boost => "boost",
            Rule::Yield => "yield",
            Rule::Critical => "critical",
            Rule::Restore => "restore",
            Rule::Power => "power",
            Rule::Affinity => "affinity",
            Rule::HostSleep => "host_sleep",
        }
    }
}

/// Something the edges carry out, with its reason. Most act on one VM;
/// the device policy's act on the host (`vm()` is None for those).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Set the guest's memory size (virDomainSetMemory): the balloon
    /// inflates or deflates until the guest has `target`.
    SetBalloonTarget { vm: VmId, target: Bytes, reason: Reason },
    /// Put an idle VM to sleep: save it to disk (managed save) or pause it.
    /// A VM that cannot be saved keeps running; it is never destroyed.
    Sleep { vm: VmId, mode: SleepMode, reason: Reason },
    /// Wake a sleeping VM: start it from its saved image, or resume it.
    Wake { vm: VmId, reason: Reason },
    /// Set a running VM's CPU weight and cap (virDomainSetSchedulerParameters, live).
    SetTune { vm: VmId, tune: Tune, reason: Reason },
    /// Pin a running VM's vCPUs to host CPUs (virDomainPinVcpuFlags, live), one set per vCPU.
    SetPins { vm: VmId, pins: Vec<crate::cpuset::CpuSet>, reason: Reason },
    /// Have a VM's guest keep `count` vCPUs online (virDomainSetVcpusFlags
    /// with VIR_DOMAIN_VCPU_GUEST, through its agent).
    SetGuestVcpus { vm: VmId, count: u32, reason: Reason },
    /// Ask a VM's guest to shut itself down (the ACPI power button): only
    /// for a VM that must stop and could not be saved. Never a destroy.
    Shutdown { vm: VmId, reason: Reason },
    /// Save power on the host's CPUs: write each change's `applied`, all
    /// or none (the edge undoes the writes made before one fails).
    CpuSave { changes: Vec<crate::devices::CpuChange>, reason: Reason },
    /// Give the CPUs back what ebb found; each write stands on its own.
    CpuRestore { settings: Vec<crate::devices::CpuSetting>, reason: Reason },
    /// Put a host disk in standby.
    DiskStandby { disk: String, reason: Reason },
    /// Power the host down (the platform's power-off, or its record when
    /// none is configured): only once every VM is saved or stopped.
    PowerOff { reason: Reason },
}

impl Action {
    /// The VM it acts on; None for a host action.
    pub fn vm(&self) -> Option<&VmId> {
        match self {
            Action::SetBalloonTarget { vm, .. }
            | Action::Sleep { vm, .. }
            | Action::Wake { vm, .. }
            | Action::SetTune { vm, .. }
            | Action::SetPins { vm, .. }
            | Action::SetGuestVcpus { vm, .. }
            | Action::Shutdown { vm, .. } => Some(vm),
            Action::CpuSave { .. } | Action::CpuRestore { .. } | Action::DiskStandby { .. } | Action::PowerOff { .. } => None,
        }
    }
    pub fn reason(&self) -> &Reason {
        match self {
            Action::SetBalloonTarget { reason, .. }
            | Action::Sleep { reason, .. }
            | Action::Wake { reason, .. }
            | Action::SetTune { reason, .. }
            | Action::SetPins { reason, .. }
            | Action::SetGuestVcpus { reason, .. }
            | Action::Shutdown { reason, .. }
            | Action::CpuSave { reason, .. }
            | Action::CpuRestore { reason, .. }
            | Action::DiskStandby { reason, .. }
            | Action::PowerOff { reason } => reason,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Action::SetBalloonTarget { .. } => "set_balloon_target",
            Action::Sleep { .. } => "sleep",
            Action::Wake { .. } => "wake",
            Action::SetTune { .. } => "set_tune",
            Action::SetPins { .. } => "set_pins",
            Action::SetGuestVcpus { .. } => "set_guest_vcpus",
            Action::Shutdown { .. } => "shutdown",
            Action::CpuSave { .. } => "cpu_save",
            Action::CpuRestore { .. } => "cpu_restore",
            Action::DiskStandby { .. } => "disk_standby",
            Action::PowerOff { .. } => "power_off",
        }
    }
}
