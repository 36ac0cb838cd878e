//! The memory policy against a small simulated world: targets land on the
//! next tick (unless a guest stalls), guests short of memory swap. `unit`
//! holds the examples, `props` the invariants over random worlds.

use super::*;
use std::collections::VecDeque;

mod deflate;
mod headroom;
mod props;
mod settle;
mod unit;

const MB: u64 = MIB;

/// A guest in the simulated world: a balloon target lands exactly on the
/// next tick, unless the guest is stalled.
#[derive(Clone, Debug)]
struct Guest {
    id: VmId,
    state: VmState,
    balloon: bool,
    stats: bool,
    current: Bytes,
    maximum: Bytes,
    used: Bytes,
    pending: Option<Bytes>,
    stall: bool,
    swap_out: Bytes,
    major_faults: u64,
    settings: VmSettings,
    /// Held by the guest kernel outside MemTotal.
    overhead: Bytes,
    /// How many ticks behind its stats are (a real guest's lag a second or
    /// more behind its balloon).
    stats_lag: usize,
    /// Its size and use at the start of each tick, newest first: what
    /// lagging stats report.
    history: VecDeque<(Bytes, Bytes)>,
    /// libvirt reports this size instead of the real one (a stale reading).
    reads: Option<Bytes>,
    /// A real balloon lands a few KiB off its target.
    lands_off: Bytes,
    /// autodeflate='on': short of memory, the guest takes balloon pages
    /// back itself (and its MemTotal keeps them), instead of swapping.
    deflate_on_oom: bool,
    /// How many times it had to.
    took_back: u32,
    /// Of its size, what the host does not hold (never touched, or handed
    /// back by free page reporting); None: QEMU's RSS is not reported.
    untouched: Option<Bytes>,
}

fn guest(name: &str, size_mib: u64, used_mib: u64) -> Guest {
    Guest {
        id: VmId::new(name),
        state: VmState::Running,
        balloon: true,
        stats: true,
        current: Bytes::from_mib(size_mib),
        maximum: Bytes::from_mib(size_mib),
        used: Bytes::from_mib(used_mib),
        pending: None,
        stall: false,
        swap_out: Bytes::ZERO,
        major_faults: 0,
        settings: VmSettings::default(),
        overhead: Bytes::ZERO,
        stats_lag: 0,
        history: VecDeque::new(),
        reads: None,
        lands_off: Bytes::ZERO,
        deflate_on_oom: false,
        took_back: 0,
        untouched: None,
    }
}

/// A 512 MiB guest whose kernel holds 56 MiB outside MemTotal, as the
/// lab's guests do; `deflate_on_oom`: its balloon has autodeflate='on'.
fn small(name: &str, used_mib: u64, deflate_on_oom: bool) -> Guest {
    let mut g = guest(name, 512, used_mib);
    g.overhead = Bytes::from_mib(56);
    g.deflate_on_oom = deflate_on_oom;
    g
}

/// A busy guest (300 MiB used) and an idle one (20 MiB) in a 600 MiB pool,
/// their stats a tick behind their balloons.
fn lagging_busy_and_idle(deflate_on_oom: bool) -> World {
    let mut busy = small("busy", 300, deflate_on_oom);
    busy.stats_lag = 1;
    let mut idle = small("idle", 20, deflate_on_oom);
    idle.stats_lag = 1;
    World::new(vec![busy, idle], 600)
}

#[derive(Debug)]
struct World {
    guests: Vec<Guest>,
    /// Host total; available is what the guests leave of it.
    host_total: Bytes,
    now: Millis,
    cfg: MemoryConfig,
    policy: MemoryPolicy,
}

impl World {
    fn new(guests: Vec<Guest>, pool_mib: u64) -> World {
        let cfg = MemoryConfig { pool: Some(Bytes::from_mib(pool_mib)), ..MemoryConfig::default() };
        World {
            guests,
            host_total: Bytes::from_mib(pool_mib) + cfg.host_reserve,
            now: Millis(1_000_000),
            cfg,
            policy: {
                // It ticks every second.
                let mut p = MemoryPolicy::new();
                p.set_tick(1000);
                p
            },
        }
    }

    fn g(&mut self, name: &str) -> &mut Guest {
        self.guests.iter_mut().find(|g| g.id.as_str() == name).expect("no such guest")
    }

    fn observe(&self) -> Observation {
        let in_use: Bytes = self
            .guests
            .iter()
            .filter(|g| g.state != VmState::ShutOff)
            .map(|g| g.current.saturating_sub(g.untouched.unwrap_or(Bytes::ZERO)))
            .sum();
        Observation {
            at: self.now,
            host: HostMemory { total: self.host_total, available: self.host_total - in_use },
            host_cpus: 2,
            vms: self
                .guests
                .iter()
                .map(|g| VmObservation {
                    id: g.id.clone(),
                    state: g.state,
                    balloon: g.balloon.then(|| Balloon {
                        current: g.reads.unwrap_or(g.current),
                        maximum: g.maximum,
                        stats: g.stats.then(|| {
                            let (size, used) = match g.stats_lag {
                                0 => (g.current, g.used),
                                n => g.history.get(n - 1).or(g.history.back()).copied().unwrap_or((g.current, g.used)),
                            };
                            GuestMemStats {
                            total: if g.deflate_on_oom { g.maximum } else { size } - g.overhead,
                            unused: size.saturating_sub(g.overhead + used),
                            usable: size.saturating_sub(g.overhead + used),
                            swap_in: Bytes::ZERO,
                            swap_out: g.swap_out,
                            major_faults: g.major_faults,
                            oom_kills: Some(0),
                            last_update: Some(self.now.0 / 1000 - g.stats_lag as u64),
                        }}),
                        features: BalloonFeatures { deflate_on_oom: g.deflate_on_oom, free_page_reporting: false },
                        host_rss: g.untouched.map(|u| g.current.saturating_sub(u)),
                    }),
                    activity: None,
                    persistent: true,
                    managed_save: false,
                    tune: None,
                })
                .collect(),
        }
    }

    fn settings(&self) -> BTreeMap<VmId, VmSettings> {
        self.guests.iter().map(|g| (g.id.clone(), g.settings.clone())).collect()
    }

    /// One second passes: pending targets land, guests short of memory
    /// swap, then the policy decides and its actions are carried out.
    fn tick(&mut self) -> MemoryDecision {
        self.now = self.now.plus(1_000);
        for g in &mut self.guests {
            g.history.push_front((g.current, g.used));
            g.history.truncate(8);
            if let (Some(t), false) = (g.pending, g.stall) {
                g.current = t + g.lands_off;
                g.pending = None;
            }
            if g.deflate_on_oom && g.used + g.overhead > g.current {
                g.current = (g.used + g.overhead + Bytes::from_mib(8)).min(g.maximum);
                g.took_back += 1;
            }
            if g.used > g.current {
                g.swap_out += g.used - g.current;
            }
        }
        let obs = self.observe();
        let d = self.policy.decide(&obs, &self.settings(), &self.cfg, self.now);
        for a in &d.actions {
            let Action::SetBalloonTarget { vm, target, .. } = a else { continue };
            let g = self.guests.iter_mut().find(|g| &g.id == vm).expect("action for an unknown VM");
            g.pending = Some(*target);
        }
        d
    }

    fn run(&mut self, ticks: usize) -> MemoryDecision {
        let mut d = self.tick();
        for _ in 1..ticks {
            d = self.tick();
        }
        d
    }

    fn current(&self, name: &str) -> Bytes {
        self.guests.iter().find(|g| g.id.as_str() == name).unwrap().current
    }
}

fn view<'a>(d: &'a MemoryDecision, name: &str) -> &'a VmMemoryView {
    d.views.iter().find(|v| v.vm.as_str() == name).expect("no view")
}

fn action_for<'a>(d: &'a MemoryDecision, name: &str) -> Option<(Bytes, &'a Reason)> {
    d.actions.iter().find(|a| a.vm().is_some_and(|vm| vm.as_str() == name)).map(|a| match a {
        Action::SetBalloonTarget { target, reason, .. } => (*target, reason),
        other => panic!("the memory policy only sets balloon targets: {other:?}"),
    })
}
