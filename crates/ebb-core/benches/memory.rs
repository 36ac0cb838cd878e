//! How long one memory-policy tick takes on a big host: decide() runs on the
//! agent's single actor every tick, so it must stay far below the tick period.
//! Plain `Instant`, no criterion: the figure is for people, not a gate.

use ebb_core::memory::{MemoryConfig, MemoryPolicy};
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
            }),
            activity: None,
            persistent: true,
            managed_save: false,
        });
    }
    // Overcommitted by a third, so the water-fill has real work every tick.
    let pool = total.scale(0.75);
    let cfg = MemoryConfig { pool: Some(pool), ..MemoryConfig::default() };
    let host = HostMemory { total: pool + cfg.host_reserve, available: cfg.host_reserve };
    World { obs: Observation { at: Millis(0), host, vms }, settings, cfg }
}

/// Lands every target on the next tick and nudges some guests' use, so the
/// policy keeps deciding rather than replaying a settled world.
fn step_world(w: &mut World, actions: &[Action], rng: &mut Lcg) {
    let mut targets: BTreeMap<&VmId, Bytes> = BTreeMap::new();
    for a in actions {
        let Action::SetBalloonTarget { vm, target, .. } = a else { continue };
        targets.insert(vm, *target);
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
    let mut policy = MemoryPolicy::new();
    let mut rng = Lcg(7);
    let mut now = Millis(1_000_000);
    // Warm the state: first ticks set every VM's first target.
    for _ in 0..20 {
        now = now.plus(1_000);
        w.obs.at = now;
        let d = policy.decide(&w.obs, &w.settings, &w.cfg, now);
        step_world(&mut w, &d.actions, &mut rng);
    }
    let mut times = Vec::with_capacity(ticks);
    let mut actions = 0usize;
    for _ in 0..ticks {
        now = now.plus(1_000);
        w.obs.at = now;
        let start = Instant::now();
        let d = policy.decide(&w.obs, &w.settings, &w.cfg, now);
        times.push(start.elapsed().as_secs_f64() * 1e3);
        actions += d.actions.len();
        step_world(&mut w, &d.actions, &mut rng);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    println!(
        "memory policy, {n} VMs: median {median:.2} ms, p99 {p99:.2} ms (target < 5 ms); {:.0} actions per tick",
        actions as f64 / ticks as f64
    );
}

fn main() {
    measure(1_000, 400);
    measure(10_000, 200);
}
