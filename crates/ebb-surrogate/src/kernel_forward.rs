//! The kernel path for awake VMs: while a VM runs, an nftables DNAT rule
//! sends its clients' new connections straight from the service's listen
//! address to the backend, as libvirt's own port forwarding does, so the
//! bytes cross the host once, inside the kernel, with no task, pipe or
//! extra socket per connection. The surrogate's listener stays bound the
//! whole time (the port stays ebb's): the rule only diverts new
//! connections, and taking it away hands them back to the listener.
//!
//! - Sleep: the rule is removed before the save begins (`set_state` runs
//!   nft synchronously), so every new client reaches the listener and is
//!   held. Flows the kernel already forwards keep their conntrack NAT
//!   binding and end with the VM, as spliced ones do.
//! - Wake: the rule comes back only once the backend answers and the VM's
//!   held clients have all been replayed (or refused): until then new
//!   clients are spliced by the surrogate, so none meets a guest that is
//!   not listening yet, and a crowd of held clients gets the guest first.
//! - Activity: the surrogate no longer sees these bytes, so named nft
//!   counters on the forwarded flows (`ct status dnat`, matched on the
//!   flow's original destination) are read back every second and credited
//!   to the VM's traffic counters. They count IP packet bytes, headers
//!   included, and only in a second in which some packet carried data (PSH):
//!   a connect-only health check or a keepalive is handshakes and bare ACKs,
//!   and must not keep the VM awake, as it would not on the splice. The
//!   surrogate's probes go to the backend address, never through the rule.
//! - Ownership: the rules live in a table of their own, one per agent,
//!   named from the agent's socket path so agents running side by side
//!   (the test suite) never touch each other's. Every change rewrites the
//!   whole table in one nft transaction (`nft -f -`), starting with a
//!   delete, so an agent restarted after `kill -9` replaces its leftovers
//!   on the first write, and a clean stop deletes the table.
//!
//! Which services qualify is a pure decision (`qualify`), as is the rule
//! text (`ruleset`); nft itself runs as a child process at the edge (`Nft`).

use crate::event::{SurrogateEvent, VmPower};
use crate::spec::{Protocol, ServiceSpec};
use crate::tcp::{self, TcpService};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::sleep;
use tracing::{debug, info, warn};

/// How often the forwarded flows' counters are read back.
const COUNTER_POLL: Duration = Duration::from_secs(1);
/// The longest pause between probes of a backend that does not answer (a
/// VM shut down outside ebb is "awake" to the surrogate for days).
const MAX_PROBE_PAUSE: Duration = Duration::from_secs(2);

/// How an awake VM's TCP connections reach its backend (`[surrogate]
/// awake_path`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AwakePath {
    /// The kernel path for every service that qualifies, where nft works;
    /// the surrogate splices the rest.
    #[default]
    Auto,
    /// As `auto`, but an nft that does not work at start is an error.
    Kernel,
    /// The surrogate splices every connection itself.
    Splice,
}

/// Which service uses which path, and why; shown by `ebb vms` / `explain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AwakeRoute {
    pub service: String,
    /// "kernel" or "splice".
    pub path: &'static str,
    /// Why, in a few words.
    pub why: String,
    /// The kernel forwards it right now (the VM is awake and answered).
    pub active: bool,
    /// Connections the kernel forwarded so far.
    pub kernel_connections: u64,
}

/// Where the kernel catches a service's new connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hooks {
    /// Clients on this host only (a loopback listen address).
    Local,
    /// Clients on this host (`output`) and from elsewhere (`prerouting`).
    LocalAndRemote,
}

/// Whether a service may take the kernel path, and if not, why.
/// `backend_is_local`: the backend address belongs to this host.
pub(crate) fn qualify(spec: &ServiceSpec, backend_is_local: bool) -> Result<Hooks, String> {
    let (listen, backend) = (spec.listen.ip(), spec.backend.ip());
    if spec.protocol == Protocol::Udp {
        return Err("UDP: the surrogate relays datagrams itself".into());
    }
    if spec.hold_open_counts_as_activity {
        // An open, silent connection must keep the VM awake; nft counters
        // only see packets, so the surrogate has to see the connection.
        return Err("hold_open_counts_as_activity: the surrogate must see each open connection".into());
    }
    if listen.is_unspecified() {
        return Err(format!("listens on every address ({listen}): give a specific address for the kernel path"));
    }
    if listen.is_ipv4() != backend.is_ipv4() {
        return Err("listen and backend addresses are of different IP versions".into());
    }
    match (listen.is_loopback(), backend.is_loopback()) {
        (true, true) => Ok(Hooks::Local),
        (true, false) => Err("a loopback listen address with a backend off loopback".into()),
        // From prerouting, a DNAT to 127.0.0.0/8 is dropped as martian unless
        // route_localnet is on, and that is a host-wide sysctl ebb does not flip.
        (false, true) => Err("clients from other hosts cannot be sent to a loopback backend without route_localnet".into()),
        (false, false) if !backend_is_local => {
            Err("the backend is not an address of this host: forwarding to it would need routing and source NAT".into())
        }
        (false, false) => Ok(Hooks::LocalAndRemote),
    }
}

/// Whether `ip` is an address of this host: only those can be bound.
pub(crate) fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The nft table of the agent identified by `owner` (its socket path):
/// `ebb_` and a 64-bit FNV-1a hash, stable across builds and Rust versions,
/// so a restarted agent finds its leftovers.
pub fn table_name(owner: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in owner.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("ebb_{h:016x}")
}

/// One service's forward while its VM is awake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Forward {
    /// Unique within the agent: names the flow's counters.
    pub(crate) id: u32,
    pub(crate) listen: SocketAddr,
    pub(crate) backend: SocketAddr,
    pub(crate) hooks: Hooks,
}

/// The whole table for these forwards, as one nft transaction that first
/// deletes whatever the table held (the `add` makes the delete safe when
/// it does not exist). No forward: an empty table, so the host pays for no
/// hook (a nat chain turns on connection tracking for all traffic).
pub(crate) fn ruleset(table: &str, forwards: &[Forward]) -> String {
    let mut t = format!("add table inet {table}\ndelete table inet {table}\nadd table inet {table}\n");
    if forwards.is_empty() {
        return t;
    }
    let chains = [
        ("nat_out", "nat hook output priority -100"),
        ("nat_pre", "nat hook prerouting priority -100"),
        ("count_in", "filter hook input priority 0"),
        ("count_out", "filter hook output priority 0"),
    ];
    for (name, hook) in chains {
        let _ = writeln!(t, "add chain inet {table} {name} {{ type {hook}; policy accept; }}");
    }
    for f in forwards {
        let (fam, to) = match f.backend.ip() {
            IpAddr::V4(ip) => ("ip", format!("{ip}:{}", f.backend.port())),
            IpAddr::V6(ip) => ("ip6", format!("[{ip}]:{}", f.backend.port())),
        };
        let (addr, port, id) = (f.listen.ip(), f.listen.port(), f.id);
        for c in ["new", "in", "out", "data"] {
            let _ = writeln!(t, "add counter inet {table} f{id}_{c}");
        }
        let dnat = format!("{fam} daddr {addr} tcp dport {port} counter name \"f{id}_new\" dnat {fam} to {to}");
        let _ = writeln!(t, "add rule inet {table} nat_out {dnat}");
        if f.hooks == Hooks::LocalAndRemote {
            let _ = writeln!(t, "add rule inet {table} nat_pre {dnat}");
        }
        // Only flows the rule diverted (`ct status dnat`): a connection the
        // surrogate itself accepted on the same address is counted by it.
        // Client → VM packets all reach `input` (the backend is local);
        // VM → client packets all leave through `output`.
        let flow = format!("ct status dnat ct original {fam} daddr {addr} meta l4proto tcp ct original proto-dst {port}");
        // Data is sent with PSH on its last segment; handshakes, bare ACKs and
        // keepalives are not.
        let data = format!("tcp flags & psh == psh counter name \"f{id}_data\"");
        let _ = writeln!(t, "add rule inet {table} count_in ct direction original {flow} counter name \"f{id}_in\" {data}");
        let _ = writeln!(t, "add rule inet {table} count_out ct direction reply {flow} counter name \"f{id}_out\" {data}");
    }
    t
}

/// Deletes the table, whether or not it exists.
fn delete_table(table: &str) -> String {
    format!("add table inet {table}\ndelete table inet {table}\n")
}

/// What a forward's counters say: new connections, bytes each way, and
/// packets that carried data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Flow {
    pub(crate) connections: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) data_packets: u64,
}

/// Reads `nft -j list counters table inet …` into each forward's flow.
pub(crate) fn parse_counters(json: &str) -> Result<HashMap<u32, Flow>, String> {
    #[derive(Deserialize)]
    struct Listing {
        nftables: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        counter: Option<Counter>,
    }
    #[derive(Deserialize)]
    struct Counter {
        name: String,
        bytes: u64,
        packets: u64,
    }
    let listing: Listing = serde_json::from_str(json).map_err(|e| format!("nft printed JSON ebb cannot read: {e}"))?;
    let mut flows: HashMap<u32, Flow> = HashMap::new();
    for c in listing.nftables.into_iter().filter_map(|i| i.counter) {
        let Some((id, kind)) = c.name.strip_prefix('f').and_then(|r| r.split_once('_')) else {
            continue;
        };
        let Ok(id) = id.parse() else { continue };
        let f = flows.entry(id).or_default();
        match kind {
            "new" => f.connections = c.packets,
            "in" => f.bytes_in = c.bytes,
            "out" => f.bytes_out = c.bytes,
            "data" => f.data_packets = c.packets,
            _ => {}
        }
    }
    Ok(flows)
}

/// The nft program, run as a child process.
#[derive(Clone, Debug)]
pub(crate) struct Nft {
    program: String,
}

impl Nft {
    pub(crate) fn new(program: &str) -> Nft {
        Nft { program: program.to_string() }
    }

    /// Applies a ruleset text as one transaction (`nft -f -`).
    fn apply(&self, text: &str) -> Result<(), String> {
        let mut child = Command::new(&self.program)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.program))?;
        // A write error is reported only if nft itself did not say why it
        // stopped reading.
        let written = child.stdin.take().map(|mut stdin| stdin.write_all(text.as_bytes()));
        let out = child.wait_with_output().map_err(|e| format!("{} did not finish: {e}", self.program))?;
        match written {
            _ if !out.status.success() => Err(format!("{} -f - failed: {}", self.program, String::from_utf8_lossy(&out.stderr).trim())),
            Some(Err(e)) => Err(format!("cannot write to {}: {e}", self.program)),
            _ => Ok(()),
        }
    }

    fn counters(&self, table: &str) -> Result<HashMap<u32, Flow>, String> {
        let out = Command::new(&self.program)
            .args(["-j", "list", "counters", "table", "inet", table])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.program))?;
        if !out.status.success() {
            return Err(format!("{} cannot list the counters: {}", self.program, String::from_utf8_lossy(&out.stderr).trim()));
        }
        parse_counters(&String::from_utf8_lossy(&out.stdout))
    }
}

/// One TCP service that qualifies for the kernel path.
pub(crate) struct KernelService {
    pub(crate) forward: Forward,
    pub(crate) svc: Arc<TcpService>,
    /// Set once nft failed for this service: it splices from then on.
    failed: Mutex<Option<String>>,
    connections: AtomicU64,
}

impl KernelService {
    pub(crate) fn new(forward: Forward, svc: Arc<TcpService>) -> KernelService {
        KernelService { forward, svc, failed: Mutex::new(None), connections: AtomicU64::new(0) }
    }

    fn failed(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Falls back to the splice for good, tells the agent.
    fn fall_back(&self, error: String) {
        let vm = &self.svc.vm;
        warn!(vm = %vm.vm, service = %self.svc.spec.name, %error, "the kernel path failed: the surrogate splices this service");
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.clone());
        vm.send_event(SurrogateEvent::AwakePathFailed { vm: vm.vm.clone(), service: self.svc.spec.name.clone(), error });
    }

    pub(crate) fn route(&self, table: &KernelTable) -> AwakeRoute {
        let (path, why) = match self.failed() {
            Some(e) => ("splice", format!("the kernel path failed: {e}")),
            None => ("kernel", format!("nft DNAT in table inet {} while the VM is awake and answers", table.name)),
        };
        AwakeRoute {
            service: self.svc.spec.name.clone(),
            path,
            why,
            active: table.lock().forwards.contains_key(&self.forward.id),
            kernel_connections: self.connections.load(Relaxed),
        }
    }
}

#[derive(Default)]
struct Installed {
    forwards: BTreeMap<u32, Arc<KernelService>>,
    /// Counter values already credited, per forward.
    seen: HashMap<u32, Flow>,
    /// The table could not be written or deleted: nothing is installed any more.
    broken: Option<String>,
}

/// The agent's nft table and what is installed in it.
pub(crate) struct KernelTable {
    pub(crate) name: String,
    nft: Nft,
    installed: Mutex<Installed>,
}

impl KernelTable {
    /// Takes over the table: whatever an earlier agent with the same owner
    /// left (after a crash) is deleted. An error means nft does not work here.
    pub(crate) fn start(nft: Nft, owner: &str) -> Result<Arc<KernelTable>, String> {
        let name = table_name(owner);
        nft.apply(&ruleset(&name, &[]))?;
        let table = Arc::new(KernelTable { name, nft, installed: Mutex::default() });
        tokio::spawn(poll_counters(Arc::downgrade(&table)));
        Ok(table)
    }

    /// Deletes what an earlier agent with the same owner left, if anything.
    pub(crate) fn remove_leftovers(nft: &Nft, owner: &str) -> Result<(), String> {
        nft.apply(&delete_table(&table_name(owner)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Installed> {
        self.installed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Credits what the installed forwards carried since the last read to
    /// their VMs' traffic counters, when it carried any data.
    fn credit(&self, inst: &mut Installed) -> Result<(), String> {
        if inst.forwards.is_empty() {
            return Ok(());
        }
        let now = self.nft.counters(&self.name)?;
        for (id, ks) in &inst.forwards {
            let cur = now.get(id).copied().unwrap_or_default();
            let was = inst.seen.insert(*id, cur).unwrap_or_default();
            if cur.data_packets > was.data_packets {
                let counters = &ks.svc.vm.counters;
                counters.add_in(cur.bytes_in.saturating_sub(was.bytes_in) as usize);
                counters.add_out(cur.bytes_out.saturating_sub(was.bytes_out) as usize);
            }
            ks.connections.fetch_add(cur.connections.saturating_sub(was.connections), Relaxed);
        }
        Ok(())
    }

    /// Rewrites the table for `forwards`. The counters are read first:
    /// the rewrite starts them from zero.
    fn write(&self, inst: &mut Installed, forwards: BTreeMap<u32, Arc<KernelService>>) -> Result<(), String> {
        if let Some(e) = &inst.broken {
            return Err(e.clone());
        }
        if let Err(e) = self.credit(inst) {
            debug!(table = %self.name, "counters not read before a rewrite: {e}");
        }
        let list: Vec<Forward> = forwards.values().map(|k| k.forward.clone()).collect();
        self.nft.apply(&ruleset(&self.name, &list))?;
        inst.forwards = forwards;
        inst.seen.clear();
        Ok(())
    }

    /// Adds a forward, unless `still_wanted` says the VM's state moved on
    /// meanwhile (checked under the lock that `withdraw` takes too, so a
    /// rule is never installed after the sleep that should have removed it).
    fn install(&self, ks: &Arc<KernelService>, still_wanted: impl Fn() -> bool) -> Result<(), String> {
        let mut inst = self.lock();
        if !still_wanted() || inst.forwards.contains_key(&ks.forward.id) {
            return Ok(());
        }
        let mut next = inst.forwards.clone();
        next.insert(ks.forward.id, ks.clone());
        self.write(&mut inst, next)?;
        info!(vm = %ks.svc.vm.vm, service = %ks.svc.spec.name, table = %self.name, "the kernel forwards the service while the VM is awake");
        Ok(())
    }

    /// Removes these forwards now. If nft cannot rewrite the table, the whole
    /// table is deleted (every service splices from then on); only if that
    /// fails too do the rules stay, and the error says so.
    pub(crate) fn withdraw(&self, services: &[Arc<KernelService>]) -> Result<(), String> {
        let mut inst = self.lock();
        if !services.iter().any(|k| inst.forwards.contains_key(&k.forward.id)) {
            return Ok(());
        }
        let mut next = inst.forwards.clone();
        for k in services {
            next.remove(&k.forward.id);
        }
        let Err(e) = self.write(&mut inst, next) else {
            return Ok(());
        };
        let all: Vec<Arc<KernelService>> = inst.forwards.values().cloned().collect();
        match self.nft.apply(&delete_table(&self.name)) {
            Ok(()) => {
                inst.forwards.clear();
                inst.broken = Some(e.clone());
                drop(inst);
                for k in all {
                    k.fall_back(e.clone());
                }
                Ok(())
            }
            Err(e2) => Err(format!("{e}; deleting table inet {} failed too: {e2}", self.name)),
        }
    }

    /// Deletes the table (clean stop). Later installs are refused.
    pub(crate) fn stop(&self) {
        let mut inst = self.lock();
        let _ = self.credit(&mut inst);
        match self.nft.apply(&delete_table(&self.name)) {
            Ok(()) => debug!(table = %self.name, "nft table deleted"),
            Err(e) => warn!(table = %self.name, "could not delete the nft table: {e}"),
        }
        inst.forwards.clear();
        inst.broken = Some("the surrogate stopped".into());
    }
}

/// Reads the counters every `COUNTER_POLL` while the table lives.
async fn poll_counters(table: Weak<KernelTable>) {
    loop {
        sleep(COUNTER_POLL).await;
        let Some(t) = table.upgrade() else { return };
        let r = tokio::task::spawn_blocking(move || {
            let mut inst = t.lock();
            t.credit(&mut inst)
        })
        .await;
        if let Ok(Err(e)) = r {
            debug!("kernel path counters not read: {e}");
        }
    }
}

/// Hands a service to the kernel once its awake VM answers and its held
/// clients are through; spawned on every change to `Awake`, aborted on the
/// next change. `epoch` is the VM's state epoch it was spawned in.
pub(crate) async fn take_over(ks: Arc<KernelService>, table: Arc<KernelTable>, mut power: watch::Receiver<VmPower>, epoch: u64) {
    if ks.failed().is_some() {
        return;
    }
    let vm = ks.svc.vm.clone();
    let interval = vm.limits.probe_interval;
    let mut pause = interval;
    while !tcp::answers(&ks.svc, epoch).await {
        tokio::select! {
            _ = power.changed() => return,
            _ = sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_PROBE_PAUSE);
    }
    // Held clients are replayed by the surrogate first: they waited
    // longest, and the replay paces them to what the guest can take.
    while ks.svc.draining() {
        tokio::select! {
            _ = power.changed() => return,
            _ = sleep(interval) => {}
        }
    }
    let still_wanted = {
        let vm = vm.clone();
        move || vm.epoch() == epoch
    };
    let (t, k) = (table.clone(), ks.clone());
    match tokio::task::spawn_blocking(move || t.install(&k, still_wanted)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => ks.fall_back(e),
        Err(e) => ks.fall_back(format!("the install task failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn which_services_qualify() {
        let lo = ServiceSpec::tcp("web", addr("127.0.0.1:8080"), addr("127.0.0.1:18080"));
        assert_eq!(qualify(&lo, true), Ok(Hooks::Local));
        let lo6 = ServiceSpec::tcp("web", addr("[::1]:8080"), addr("[::1]:18080"));
        assert_eq!(qualify(&lo6, true), Ok(Hooks::Local));
        let public = ServiceSpec::tcp("web", addr("192.0.2.1:80"), addr("192.0.2.1:18080"));
        assert_eq!(qualify(&public, true), Ok(Hooks::LocalAndRemote));

        let why = |s: &ServiceSpec, local| qualify(s, local).unwrap_err();
        assert!(why(&public, false).contains("not an address of this host"));
        let udp = ServiceSpec::udp("dns", addr("127.0.0.1:53"), addr("127.0.0.1:10053"));
        assert!(why(&udp, true).contains("UDP"));
        let stream = ServiceSpec { hold_open_counts_as_activity: true, ..lo.clone() };
        assert!(why(&stream, true).contains("hold_open_counts_as_activity"));
        let any = ServiceSpec::tcp("web", addr("0.0.0.0:80"), addr("127.0.0.1:18080"));
        assert!(why(&any, true).contains("every address"));
        let to_loopback = ServiceSpec::tcp("web", addr("192.0.2.1:80"), addr("127.0.0.1:18080"));
        assert!(why(&to_loopback, true).contains("route_localnet"));
        let off_loopback = ServiceSpec::tcp("web", addr("127.0.0.1:80"), addr("192.0.2.1:18080"));
        assert!(why(&off_loopback, true).contains("off loopback"));
        let mixed = ServiceSpec::tcp("web", addr("[::1]:80"), addr("127.0.0.1:18080"));
        assert!(why(&mixed, true).contains("IP versions"));
    }

    #[test]
    fn table_names_are_stable_and_distinct() {
        assert_eq!(table_name("/run/ebb.sock"), table_name("/run/ebb.sock"));
        assert_ne!(table_name("/run/ebb.sock"), table_name("/tmp/x/ebb.sock"));
        // Pinned: a restarted agent must find the table its predecessor made.
        assert_eq!(table_name(""), "ebb_cbf29ce484222325");
    }

    #[test]
    fn no_forward_is_an_empty_table_replacing_any_leftover() {
        assert_eq!(ruleset("ebb_1", &[]), "add table inet ebb_1\ndelete table inet ebb_1\nadd table inet ebb_1\n");
    }

    #[test]
    fn rules_divert_new_connections_and_count_only_diverted_flows() {
        let f = |id, listen, backend, hooks| Forward { id, listen: addr(listen), backend: addr(backend), hooks };
        let text = ruleset(
            "ebb_1",
            &[f(3, "127.0.0.1:8080", "127.0.0.1:18080", Hooks::Local), f(4, "[2001:db8::1]:443", "[2001:db8::1]:18443", Hooks::LocalAndRemote)],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(&lines[..3], ["add table inet ebb_1", "delete table inet ebb_1", "add table inet ebb_1"]);
        for want in [
            "add chain inet ebb_1 nat_out { type nat hook output priority -100; policy accept; }",
            "add counter inet ebb_1 f3_new",
            "add rule inet ebb_1 nat_out ip daddr 127.0.0.1 tcp dport 8080 counter name \"f3_new\" dnat ip to 127.0.0.1:18080",
            "add rule inet ebb_1 count_in ct direction original ct status dnat ct original ip daddr 127.0.0.1 meta l4proto tcp ct original proto-dst 8080 counter name \"f3_in\" tcp flags & psh == psh counter name \"f3_data\"",
            "add rule inet ebb_1 count_out ct direction reply ct status dnat ct original ip daddr 127.0.0.1 meta l4proto tcp ct original proto-dst 8080 counter name \"f3_out\" tcp flags & psh == psh counter name \"f3_data\"",
            "add rule inet ebb_1 nat_out ip6 daddr 2001:db8::1 tcp dport 443 counter name \"f4_new\" dnat ip6 to [2001:db8::1]:18443",
            "add rule inet ebb_1 nat_pre ip6 daddr 2001:db8::1 tcp dport 443 counter name \"f4_new\" dnat ip6 to [2001:db8::1]:18443",
        ] {
            assert!(lines.contains(&want), "missing {want:?} in\n{text}");
        }
        // A loopback service is for local clients only.
        assert!(!lines.iter().any(|l| l.contains("nat_pre ip daddr 127.0.0.1")), "{text}");
    }

    #[test]
    fn counters_are_read_per_forward() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"counter": {"family": "inet", "name": "f3_in", "table": "ebb_1", "handle": 5, "packets": 5, "bytes": 273}},
            {"counter": {"family": "inet", "name": "f3_out", "table": "ebb_1", "handle": 6, "packets": 5, "bytes": 281}},
            {"counter": {"family": "inet", "name": "f3_new", "table": "ebb_1", "handle": 7, "packets": 1, "bytes": 60}},
            {"counter": {"family": "inet", "name": "f3_data", "table": "ebb_1", "handle": 9, "packets": 2, "bytes": 110}},
            {"counter": {"family": "inet", "name": "other", "table": "ebb_1", "handle": 8, "packets": 1, "bytes": 1}}]}"#;
        let flows = parse_counters(json).unwrap();
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[&3], Flow { connections: 1, bytes_in: 273, bytes_out: 281, data_packets: 2 });
        assert!(parse_counters("not json").unwrap_err().contains("cannot read"));
    }
}
