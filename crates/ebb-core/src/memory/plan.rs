//! Entitlements become this tick's targets: a reclaim moves at most the
//! VM's step, a grow comes at once out of what the pool has free, and the
//! dead band keeps small moves (and repeats of a move in flight) from
//! becoming calls.

use super::allot::rho;
use super::assess::Work;
use super::config::{kib_down, kib_up, Tuning, BALLOON_PRECISION};
use crate::model::*;
use crate::units::*;
use std::cmp::Reverse;

/// Turns entitlements into this tick's targets: shrinks by at most the step,
/// grows at once out of what the pool has free. A guest below its floor
/// (its use grew after a reclaim) is raised back to it even past the pool,
/// out of the host's own spare memory: the guarantee beats the accounting.
pub(super) fn plan(work: &mut [Work], t: &Tuning, pool: Bytes, committed: Bytes, mut host_spare: Bytes) {
    let mut shrunk = Bytes::ZERO;
    let mut grows: Vec<usize> = Vec::new();
    // VMs a hair above their entitlement that the dead band lets stay.
    let mut held_over: Vec<usize> = Vec::new();
    let mut settled = Bytes::ZERO;
    // Summed on the way: no pass of its own over the VMs.
    let mut entitled = Bytes::ZERO;

    for (i, w) in work.iter_mut().enumerate() {
        entitled += w.entitlement;
        let step = w.step;
        let c = w.current;
        let band = w.band;
        let e = w.entitlement;
        if w.unsure {
            // Any target could undo what the guest took: none until told apart.
            settled += c.max(e);
            continue;
        }
        if let Some((hold, _, _)) = w.stuck {
            w.target = Some((hold, Rule::Stuck));
            settled += hold.max(e);
            continue;
        }
        if c > w.ceiling {
            // The operator lowered the max (or the domain's maximum): that is
            // a limit, not an entitlement to approach at the reclaim's pace.
            settled += w.ceiling;
            if w.heading != w.ceiling {
                shrunk += c - w.ceiling;
                w.target = Some((w.ceiling, Rule::Reclaim));
            }
            continue;
        }
        if w.pressure.is_some() || w.back_off {
            settled += c.max(e);
            if e > c || w.back_off {
                grows.push(i);
            }
            continue;
        }
        let goal = if c > e && c - e >= band {
            if !w.may_shrink {
                settled += c;
                continue;
            }
            kib_up(e.max(c.saturating_sub(step.max(band)))).max(w.min).min(c)
        } else if e > c && e - c >= band {
            settled += e;
            grows.push(i);
            continue;
        } else {
            if c > e {
                held_over.push(i);
            }
            c
        };
        settled += if goal < c { e } else { goal };
        if already_heading(goal, w.heading, c, band) {
            continue;
        }
        if goal < c {
            shrunk += c - goal;
            w.target = Some((goal, Rule::Reclaim));
        } else {
            // Stop a move that entitlement no longer asks for.
            w.target = Some((goal, Rule::Hold));
        }
    }

    // The dead band must not let the pool overflow: when it would, the VMs
    // it holds above their entitlement go all the way down, largest first.
    // Only overflow the band itself caused (floors above the pool are not),
    // and only gaps a balloon can close: it lands within a few KiB, and
    // re-aiming at such a gap every tick is churn.
    held_over.retain(|&i| work[i].current - work[i].entitlement >= BALLOON_PRECISION);
    if settled > pool.max(entitled) && !held_over.is_empty() {
        held_over.sort_by_key(|&i| Reverse(work[i].current - work[i].entitlement));
        for i in held_over {
            if settled <= pool.max(entitled) {
                break;
            }
            let w = &mut work[i];
            let excess = w.current - w.entitlement;
            settled = settled - excess;
            shrunk += excess;
            w.target = Some((w.entitlement, Rule::Reclaim));
        }
    }

    let mut budget: i128 = pool.0 as i128 - committed.0 as i128 + shrunk.0 as i128;
    // Pressured first, then by the price of their next page, highest first,
    // then in id order. Each key is worked out once, not at every
    // comparison: a tick can have thousands of grows. ρ of a managed VM is
    // a float ≥ +0 and never NaN (shares ≥ 0, its size is not 0), so its
    // bits order as its value does; with the id last the keys are a total
    // order, and the faster unstable sort gives the one answer.
    let mut grows: Vec<(Reverse<bool>, Reverse<u64>, usize)> = grows
        .into_iter()
        .map(|i| {
            let w = &work[i];
            let price = rho(w.shares, w.used.0 as f64, t.k, w.current.0 as f64);
            (Reverse(w.pressure.is_some()), Reverse(price.to_bits()), i)
        })
        .collect();
    grows.sort_unstable();
    for (_, _, i) in grows {
        let w = &mut work[i];
        let c = w.current;
        let band = w.band;
        let base = w.committed.max(c);
        let goal = w.entitlement.max(c);
        let need = goal.saturating_sub(base);
        let from_pool = Bytes(need.0.min(budget.max(0) as u64));
        let below_floor = w.guaranteed.saturating_sub(base).min(need);
        let give = if below_floor > from_pool {
            let extra = (below_floor - from_pool).min(host_spare);
            host_spare = host_spare - extra;
            from_pool + extra
        } else {
            from_pool
        };
        // The operator's max wins even over pressure: never a target above the ceiling.
        let target = kib_down(base + give).max(c);
        if w.back_off {
            // Stop the reclaim where it is, whatever the pool can add.
            w.target = Some((target, Rule::BackOff));
        } else if give.0 == 0 || (give < band && give < need) || already_heading(target, w.heading, c, band) {
            continue;
        } else {
            let rule = if w.pressure.is_some() { Rule::GiveBack } else { Rule::Grow };
            w.target = Some((target, rule));
        }
        budget -= target.0 as i128 - base.0 as i128;
    }
}

/// Whether a new target would only repeat where the balloon is already
/// going. With nothing in flight any real move counts, even one the dead
/// band's rounding would call small.
fn already_heading(goal: Bytes, heading: Bytes, current: Bytes, band: Bytes) -> bool {
    goal == heading || (heading != current && goal.abs_diff(heading) < band)
}
