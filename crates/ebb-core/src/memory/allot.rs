//! How much of the pool each managed VM is entitled to: ESX's idle memory
//! tax (Waldspurger, OSDI 2002). Shares per page, idle pages taxed, the pool
//! water-filled by that price between every VM's floor and ceiling. Also the
//! pool itself, shrunk when the host falls short of its reserve.

use super::assess::Work;
use super::config::{kib_down, kib_up, Tuning, BALLOON_PRECISION};
use crate::model::*;
use crate::units::*;

/// The pool in effect: the configured one (or the host's total less its
/// reserve), shrunk when the host is short of its reserve, with the words
/// that say so. The host guard reads "the host must keep its reserve
/// available": guests together may hold what they hold now plus what the
/// host can spare above its reserve, which is smaller than the configured
/// pool exactly when the host is short (force reclaim).
pub(super) fn pool_in_effect(host: &HostMemory, t: &Tuning, pool_used: Bytes) -> (Bytes, Option<String>) {
    let configured = t.pool.unwrap_or(host.total.saturating_sub(t.host_reserve));
    if host.total.0 == 0 {
        return (configured, None);
    }
    let spare = (pool_used + host.available).saturating_sub(t.host_reserve);
    let note = (host.available < t.host_reserve && spare < configured).then(|| {
        format!(
            "the host has only {} available, under its {} reserve: the pool shrinks to {} to take {} back",
            host.available,
            t.host_reserve,
            spare,
            t.host_reserve.saturating_sub(host.available)
        )
    });
    (configured.min(spare), note)
}

/// ρ(a): shares per page of a VM holding `a` bytes with `active` of them in
/// use, idle pages costing k times more (Waldspurger §5.1). Below `active`
/// every page is active and the cost is plain shares per byte.
pub(super) fn rho(shares: f64, active: f64, k: f64, a: f64) -> f64 {
    if a <= 0.0 {
        f64::INFINITY
    } else if a >= active {
        shares / (active + k * (a - active))
    } else {
        shares / a
    }
}

/// Sets each VM's entitlement: pressured VMs' floors rise toward what
/// relieves them, and learned headrooms' toward them (in proportion to
/// shares when the pool is short: a learned headroom is no guarantee, and
/// must not hold the pool over), then the pool is water-filled by the
/// idle-taxed price. Returns a note when even the floors do not fit.
pub(super) fn allot(work: &mut [Work], pool: Bytes, k: f64) -> Option<String> {
    // One pass for what two sums and a filter took: the VMs' numbers are
    // megabytes at 10,000 VMs, and each pass over them costs more than the
    // arithmetic in it.
    let mut base_floors = Bytes::ZERO;
    // (VM, its need, its shares, the part of the need that relieves pressure)
    let mut needs: Vec<(usize, f64, f64, Bytes)> = Vec::new();
    for (i, w) in work.iter().enumerate() {
        base_floors += w.floor;
        let relief = if w.pressure.is_some() { w.want.saturating_sub(w.floor) } else { Bytes::ZERO };
        let wanted = (w.floor + relief).max(w.learned_floor);
        if wanted > w.floor {
            needs.push((i, (wanted - w.floor).0 as f64, w.shares.max(1.0), relief));
        }
    }
    if !needs.is_empty() {
        let room = pool.saturating_sub(base_floors).0 as f64;
        let total: f64 = needs.iter().map(|n| n.1).sum();
        let level = if total <= room {
            f64::INFINITY
        } else {
            // Give each need min(need, level × shares); find the level that spends `room`.
            let spend = |l: f64| needs.iter().map(|n| n.1.min(l * n.2)).sum::<f64>();
            let (mut lo, mut hi) = (0.0_f64, needs.iter().map(|n| n.1 / n.2).fold(0.0, f64::max));
            for _ in 0..60 {
                let mid = (lo + hi) / 2.0;
                if spend(mid) > room { hi = mid } else { lo = mid }
            }
            lo
        };
        for (i, need, shares, relief) in needs {
            let w = &mut work[i];
            let raise = kib_down(Bytes(need.min(level * shares) as u64));
            // Relief is guaranteed even past the pool; a learned headroom is not.
            w.guaranteed = (w.floor + raise.min(relief)).min(w.ceiling);
            w.floor = (w.floor + raise).min(w.ceiling);
        }
    }

    // [shares, active, floor, ceiling] packed for the inner loop, and the
    // sums of floors and ceilings, in one pass.
    let (mut floors, mut ceilings) = (Bytes::ZERO, Bytes::ZERO);
    let items: Vec<[f64; 4]> = work
        .iter()
        .map(|w| {
            floors += w.floor;
            ceilings += w.ceiling;
            let active = if w.pressure.is_some() { w.want.max(w.used) } else { w.used };
            [w.shares.max(0.0), active.0 as f64, w.floor.0 as f64, w.ceiling.0 as f64]
        })
        .collect();
    if ceilings <= pool {
        work.iter_mut().for_each(|w| w.entitlement = w.ceiling);
        return None;
    }
    if floors >= pool {
        work.iter_mut().for_each(|w| w.entitlement = w.floor);
        return (floors > pool).then(|| {
            format!(
                "the guests' floors add up to {floors}, more than the {pool} pool: every managed guest is held at its floor"
            )
        });
    }

    // Rounding each entitlement up to a KiB adds < 1 KiB per VM, and a
    // balloon lands within BALLOON_PRECISION of its target: leave room for both.
    let target = pool.0 as f64 - (items.len() as f64) * (KIB + BALLOON_PRECISION.0) as f64;
    let inv_k = 1.0 / k;
    let fill = |inv_lambda: f64, out: Option<&mut [Work]>| -> f64 {
        let mut sum = 0.0;
        let alloc = |it: &[f64; 4]| {
            let x = it[0] * inv_lambda;
            let a = if x >= it[1] { it[1] + (x - it[1]) * inv_k } else { x };
            a.clamp(it[2], it[3])
        };
        match out {
            None => items.iter().for_each(|it| sum += alloc(it)),
            Some(ws) => {
                for (it, w) in items.iter().zip(ws.iter_mut()) {
                    let a = alloc(it);
                    sum += a;
                    w.entitlement = kib_up(Bytes(a as u64)).clamp(w.floor, w.ceiling);
                }
            }
        }
        sum
    };
    // λ is the price of a page; the allotment falls as it rises. At the
    // lowest ceiling price every VM with shares sits at its ceiling, at the
    // highest floor price every VM sits at its floor: the answer lies between.
    let mut lo = f64::INFINITY;
    let mut hi = 0.0_f64;
    for it in &items {
        if it[0] > 0.0 {
            lo = lo.min(rho(it[0], it[1], k, it[3]));
            hi = hi.max(rho(it[0], it[1], k, it[2].max(1.0)));
        }
    }
    if !(lo.is_finite() && hi > 0.0) {
        fill(0.0, Some(work));
        return None;
    }
    if fill(1.0 / lo, None) <= target {
        fill(1.0 / lo, Some(work));
        return None;
    }
    // Solve in u = ln(1/λ), where the allotment rises with u. Illinois false
    // position keeps a bracket like bisection (the answer never overshoots
    // the pool) but needs ~10 passes over the VMs instead of ~60.
    let f = |u: f64| fill(u.exp(), None) - target;
    let (mut under, mut over) = ((1.0 / hi).ln(), (1.0 / lo).ln());
    let (mut f_under, mut f_over) = (f(under), f(over));
    // Illinois halves the kept end's value to speed up; the stop test needs the true one.
    let mut slack = -f_under;
    let mut last = 0i8;
    for _ in 0..100 {
        if slack < MIB as f64 || over - under < 1e-12 {
            break;
        }
        let mut u = (under * f_over - over * f_under) / (f_over - f_under);
        if !(u > under && u < over) {
            u = 0.5 * (under + over);
        }
        let fu = f(u);
        if fu > 0.0 {
            (over, f_over) = (u, fu);
            if last == 1 {
                f_under *= 0.5;
            }
            last = 1;
        } else {
            (under, f_under, slack) = (u, fu, -fu);
            if last == -1 {
                f_over *= 0.5;
            }
            last = -1;
        }
    }
    fill(under.exp(), Some(work));
    None
}
