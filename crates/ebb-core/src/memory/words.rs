//! The memory policy in words: why a VM is skipped, the signs of pressure,
//! and each target's reason. Built only for what is shown: a skipped VM, a
//! pressured one, a new target.

use super::assess::Work;
use super::config::Tuning;
use super::state::Counters;
use crate::model::*;
use crate::units::*;

/// Why a VM is not managed this tick, in words; None when it is.
pub(super) fn skip_reason(vm: &VmObservation, s: &VmSettings) -> Option<String> {
    if vm.state != VmState::Running {
        return Some(format!("not running ({})", vm.state));
    }
    if !s.managed {
        return Some("not managed (managed = false)".into());
    }
    let Some(b) = &vm.balloon else {
        return Some("no balloon device: add <memballoon model='virtio'> to manage its memory".into());
    };
    if b.maximum.0 == 0 || b.current.0 == 0 {
        return Some("the balloon reports no size yet".into());
    }
    match &b.stats {
        None => Some("the guest sends no memory statistics (is virtio_balloon loaded and a stats period set?)".into()),
        // A zero MemTotal would read as "uses nothing" and invite a reclaim to the floor.
        Some(st) if st.total.0 == 0 => {
            Some("the guest's memory statistics are empty (not reported yet)".into())
        }
        Some(_) => None,
    }
}

/// The signs of memory pressure in plain words, or None when there are none.
/// Counter deltas need a previous look; on the first one only the level counts.
pub(super) fn pressure_words(
    t: &Tuning,
    stats: &GuestMemStats,
    current: Bytes,
    prev: Option<&Counters>,
    now: Millis,
) -> Option<String> {
    let mut why: Vec<String> = Vec::new();
    if (stats.usable.0 as f64) < t.low_free_fraction * current.0 as f64 {
        why.push(format!(
            "only {} of {} available (under {:.0}%)",
            stats.usable,
            current,
            t.low_free_fraction * 100.0
        ));
    }
    if let Some(p) = prev {
        // Saturating: a guest reboot resets its counters, which is no distress.
        let swapped = stats.swap_out.saturating_sub(p.swap_out);
        if swapped.0 > 0 {
            why.push(format!("swapping ({swapped} out since the last look)"));
        }
        let secs = now.since(p.at) as f64 / 1000.0;
        if secs > 0.0 {
            let rate = stats.major_faults.saturating_sub(p.major_faults) as f64 / secs;
            if rate > t.major_fault_rate {
                why.push(format!("{rate:.0} major faults/s (over {:.0})", t.major_fault_rate));
            }
        }
        if let (Some(now_k), Some(before)) = (stats.oom_kills, p.oom_kills) {
            if now_k > before {
                why.push(format!("the oom killer fired {} time(s)", now_k - before));
            }
        }
    }
    match why.len() {
        0 => None,
        1 => why.pop(),
        _ => {
            let last = why.pop().expect("len > 1");
            Some(format!("{} and {last}", why.join(", ")))
        }
    }
}

pub(super) fn reason_text(w: &Work, target: Bytes, rule: Rule, pool: Bytes, step: Bytes) -> String {
    let c = w.current;
    let pressure = w.pressure.as_deref().unwrap_or("the guest is under pressure");
    let short = |full: Bytes| if target < full { "; the pool has no more to spare yet" } else { "" };
    match rule {
        Rule::Reclaim if target == w.ceiling && c - target > w.step => format!(
            "reclaim {}: bring the guest down to its max {target} (guest uses {} of {c})",
            c - target,
            w.used
        ),
        Rule::Reclaim => format!(
            "reclaim {}: guest uses {} of {} ({}% active); idle-taxed entitlement {} of a {} pool",
            c - target,
            w.used,
            c,
            Whole(100.0 * w.used.0 as f64 / c.0.max(1) as f64),
            w.entitlement,
            pool
        ),
        Rule::GiveBack => format!("give back {}: {pressure}{}", target - c, short(w.entitlement.max(w.want))),
        Rule::BackOff if target > c => format!(
            "stop reclaiming and give back {}: {pressure} during the reclaim; reclaim step halved to {step}{}",
            target - c,
            short(w.entitlement.max(w.want))
        ),
        Rule::BackOff => format!(
            "stop reclaiming at {c}: {pressure} during the reclaim; reclaim step halved to {step}; nothing to give back yet"
        ),
        Rule::Grow if c < w.floor => format!(
            "grow {}: guest uses {} of {}, under its floor {} (what it uses plus headroom){}",
            target - c,
            w.used,
            c,
            w.floor,
            short(w.entitlement)
        ),
        Rule::Grow => format!(
            "grow {}: the pool has room; idle-taxed entitlement {} of a {} pool{}",
            target - c,
            w.entitlement,
            pool,
            short(w.entitlement)
        ),
        Rule::Stuck => {
            let (_, was, idle_ms) = w.stuck.expect("stuck rule implies stuck");
            format!(
                "balloon stuck at {c} for {} (target {was}): holding it where it is; reclaim step halved to {step}",
                secs(idle_ms)
            )
        }
        // The memory policy never sets a target under the other policies' rules.
        Rule::Hold
        | Rule::Skip
        | Rule::Sleep
        | Rule::Wake
        | Rule::Boost
        | Rule::Yield
        | Rule::Critical
        | Rule::Restore
        | Rule::Power
        | Rule::Affinity
        | Rule::HostSleep => format!(
            "hold at {target}: idle-taxed entitlement is now {} (guest uses {} of {c}), so the last target no longer applies",
            w.entitlement, w.used
        ),
    }
}

fn secs(ms: u64) -> String {
    if ms.is_multiple_of(1000) { format!("{} s", ms / 1000) } else { format!("{:.1} s", ms as f64 / 1000.0) }
}

/// A float as `{:.0}` prints it (rounded half to even), without float
/// formatting below 2^52, where the float's fraction is exact: it is in the
/// text of most reclaims, hundreds a tick on a big host.
pub(super) struct Whole(pub f64);

impl std::fmt::Display for Whole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if !(v.is_sign_positive() && v < (1u64 << 52) as f64) {
            return write!(f, "{v:.0}");
        }
        let whole = v as u64;
        let frac = v - whole as f64;
        let up = frac > 0.5 || (frac == 0.5 && whole % 2 == 1);
        write!(f, "{}", whole + u64::from(up))
    }
}
