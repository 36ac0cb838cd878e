//! How long one tick's decisions take on a big host: the memory policy and
//! the reallocation policy run on the agent's single actor every tick, so
//! together they must stay far below the tick period. Plain `Instant`, no
//! criterion: the figures are for people, not a gate.

use ebb_core::memory::{MemoryConfig, MemoryPolicy};
use ebb_core::realloc::{ReallocConfig, ReallocPolicy, ReallocSettings};
use ebb_core::*;
use std::collections::BTreeMap;
use std::time::Instant;

/// A small deterministic generator, so every run measures the same world.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct World {
    obs: Observation,
    settings: BTreeMap<VmId, VmSettings>,
    cfg: MemoryConfig,
    /// Each VM's CPU demand in vCPUs' worth: a quarter idle, some busy.
    loads: Vec<f64>,
    realloc_settings: Vec<ReallocSettings>,
}

fn world(n: usize) -> World {
    let mut rng = Lcg(0x5eed_0003);
    let mut vms = Vec::with_capacity(n);
    let mut settings = BTreeMap::new();
    let mut total = Bytes::ZERO;
    for i in 0..n {
        let size = Bytes::from_mib(512 << rng.below(5)); // 512 MiB … 8 GiB
        let used = size.scale(0.05 + 0.85 * rng.below(1000) as f64 / 1000.0);
        let id = VmId::new(format!("vm-{i:05}"));
        total += size;
        settings.insert(
            id.clone(),
            VmSettings { shares: 250 * (1 + rng.below(8) as u32), ..VmSettings::default() },
        );
        vms.push(VmObservation {
            id,
            state: VmState::Running,
            balloon: Some(Balloon {
                current: size,
                maximum: size,
                stats: Some(GuestMemStats {
                    total: size,
                    unused: size - used,
                    usable: size - used,
                    ..GuestMemStats::default()
                }),
                features: BalloonFeatures::default(),
                host_rss: None,
            }),
            activity: Some(Activity { vcpus: 1 + rng.below(4) as u32, ..Activity::default() }),
            persistent: true,
            managed_save: false,
            tune: Some(Tune {
                shares: 1024,
                quota_us: (rng.below(4) == 0).then_some(50_000),
                period_us: 100_000,
                io_weight: Some(500),
                net: None,
                disk_limit: None,
            }),
        });
    }
    // Overcommitted by a third, so the water-fill has real work every tick.
    let pool = total.scale(0.75);
    let cfg = MemoryConfig { pool: Some(pool), ..MemoryConfig::default() };
    let host = HostMemory { total: pool + cfg.host_reserve, available: cfg.host_reserve };
    let loads = (0..n).map(|_| [0.0, 0.3, 0.9, 2.0][rng.below(4) as usize]).collect();
    let realloc_settings = vms.iter().map(|_| ReallocSettings { cap_max: Some(1.0), ..Default::default() }).collect();
    World { obs: Observation { at: Millis(0), host, host_cpus: 64, vms }, settings, cfg, loads, realloc_settings }
}

/// Lands every target on the next tick and nudges some guests' use, so the
/// policy keeps deciding rather than replaying a settled world.
fn step_world(w: &mut World, actions: &[Action], rng: &mut Lcg) {
    let mut targets: BTreeMap<&VmId, Bytes> = BTreeMap::new();
    let mut tunes: BTreeMap<&VmId, Tune> = BTreeMap::new();
    for a in actions {
        match a {
            Action::SetBalloonTarget { vm, target, .. } => {
                targets.insert(vm, *target);
            }
            Action::SetTune { vm, tune, .. } => {
                tunes.insert(vm, *tune);
            }
            _ => {}
        }
    }
    for (v, load) in w.obs.vms.iter_mut().zip(&w.loads) {
        if let Some(t) = tunes.get(&v.id) {
            v.tune = Some(*t);
        }
        if let Some(a) = v.activity.as_mut() {
            a.cpu_time_ns += (load.min(f64::from(a.vcpus)) * 1e9) as u64;
        }
    }
    let landed: Vec<(usize, Bytes)> = w
        .obs
        .vms
        .iter()
        .enumerate()
        .filter_map(|(i, v)| targets.get(&v.id).map(|t| (i, *t)))
        .collect();
    for (i, t) in landed {
        if let Some(b) = w.obs.vms[i].balloon.as_mut() {
            b.current = t;
        }
    }
    let n = w.obs.vms.len() as u64;
    for _ in 0..n / 100 {
        let v = &mut w.obs.vms[rng.below(n) as usize];
        if let Some(b) = v.balloon.as_mut() {
            let used = b.current.scale(0.05 + 0.7 * rng.below(1000) as f64 / 1000.0);
            if let Some(s) = b.stats.as_mut() {
                s.total = b.current;
                s.usable = b.current - used;
                s.unused = s.usable;
            }
        }
    }
    for v in &mut w.obs.vms {
        if let Some(b) = v.balloon.as_mut() {
            if let Some(s) = b.stats.as_mut() {
                let used = s.used();
                s.total = b.current;
                s.usable = b.current - used;
                s.unused = s.usable;
            }
        }
    }
}

fn measure(n: usize, ticks: usize) {
    let mut w = world(n);
    let mut memory = MemoryPolicy::new();
    let mut realloc = ReallocPolicy::new();
    let realloc_cfg = ReallocConfig::default();
    let mut rng = Lcg(7);
    let mut now = Millis(1_000_000);
    let mut tick = |w: &mut World, now: Millis, rng: &mut Lcg| {
        w.obs.at = now;
        let t0 = Instant::now();
        let mut d = memory.decide(&w.obs, &w.settings, &w.cfg, now).actions;
        let t1 = Instant::now();
        let r = realloc.decide(&w.obs, &w.realloc_settings, &realloc_cfg, now);
        let t2 = Instant::now();
        let counts = (d.len(), r.actions.len());
        d.extend(r.actions);
        step_world(w, &d, rng);
        ((t1 - t0).as_secs_f64() * 1e3, (t2 - t1).as_secs_f64() * 1e3, counts)
    };
    // Warm the state: first ticks set every VM's first target and class.
    for _ in 0..20 {
        now = now.plus(1_000);
        tick(&mut w, now, &mut rng);
    }
    let (mut mem, mut re, mut both) = (vec![], vec![], vec![]);
    let (mut mem_actions, mut re_actions) = (0, 0);
    for _ in 0..ticks {
        now = now.plus(1_000);
        let (m, r, (ma, ra)) = tick(&mut w, now, &mut rng);
        mem.push(m);
        re.push(r);
        both.push(m + r);
        mem_actions += ma;
        re_actions += ra;
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[(v.len() * 99 / 100).min(v.len() - 1)])
    };
    let per_tick = |a: usize| a as f64 / ticks as f64;
    let ((mm, mp), (rm, rp), (bm, bp)) = (stats(&mut mem), stats(&mut re), stats(&mut both));
    println!("{n} VMs per tick:");
    println!("  memory policy: median {mm:.2} ms, p99 {mp:.2} ms; {:.0} actions", per_tick(mem_actions));
    println!("  reallocation:  median {rm:.2} ms, p99 {rp:.2} ms; {:.0} actions", per_tick(re_actions));
    println!("  together:      median {bm:.2} ms, p99 {bp:.2} ms (target < 5 ms)");
}

fn main() {
    measure(1_000, 400);
    measure(10_000, 200);
}
