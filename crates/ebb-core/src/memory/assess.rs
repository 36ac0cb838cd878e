//! One managed VM's numbers for this tick: its floor (what it uses, plus
//! headroom, plus what its kernel holds outside MemTotal), its ceiling, the
//! signs of pressure, and how the move in flight is doing (landed, stuck, or
//! to be backed off from).

use super::config::{kib_down, kib_up, Tuning};
use super::state::{Counters, Deflated, Move, VmMem};
use super::words::pressure_words;
use crate::model::*;
use crate::units::*;

/// The longest ebb keeps a guest that deflated its balloon itself at the
/// size it took: its use shows in its stats only once the balloon has
/// settled, and stats that never settle must not pin it for ever.
pub const DEFLATED_HOLD_MS: u64 = 60_000;

/// One eligible VM's numbers for this tick.
pub(super) struct Work {
    /// Index into the id-sorted views.
    pub view: usize,
    pub shares: f64,
    pub current: Bytes,
    /// The dead band at its current size.
    pub band: Bytes,
    pub used: Bytes,
    /// How fast its use grew per second since the last settled reading.
    pub growth: Option<Bytes>,
    /// Its headroom, and the growth rate that sized it when its history's
    /// fastest growth did (rather than the flat max(min, fraction × used)).
    pub headroom: Bytes,
    /// The fastest growth and the reaction time that sized it (ms).
    pub learned: Option<(Bytes, u64)>,
    pub step: Bytes,
    pub min: Bytes,
    /// What it uses, plus the flat headroom, plus its kernel's own: the guarantee.
    pub floor: Bytes,
    /// The floor with a learned headroom: kept as far as the pool has room.
    pub learned_floor: Bytes,
    /// What of its floor is guaranteed even past the pool (not a learned
    /// headroom): the floor, raised by `allot` for pressure only.
    pub guaranteed: Bytes,
    pub ceiling: Bytes,
    /// Where the balloon is already heading (pending target, else current).
    pub heading: Bytes,
    /// What this VM holds of the pool: an unlanded grow is already spoken for.
    pub committed: Bytes,
    pub pressure: Option<String>,
    /// For a pressured VM: the size that relieves it.
    pub want: Bytes,
    pub back_off: bool,
    /// Stuck: the target to hold it at, and how long it had not moved.
    pub stuck: Option<(Bytes, Bytes, u64)>,
    pub entitlement: Bytes,
    pub may_shrink: bool,
    /// Its balloon reads above anything ebb asked for, not yet told apart
    /// (see `read_unasked`): it is held as it was.
    pub unsure: bool,
    /// This tick's new target, if any.
    pub target: Option<(Bytes, Rule)>,
}

/// Reads one managed VM (balloon and stats present) against what the policy
/// remembers of it, updates that memory, and returns its numbers.
pub(super) fn assess(
    st: &mut VmMem,
    s: &VmSettings,
    b: &Balloon,
    stats: &GuestMemStats,
    t: &Tuning,
    now: Millis,
    view: usize,
) -> Work {
    let band = t.band(b.current);
    let asked = st.pending.map_or(Bytes::ZERO, |p| if p.kind == Move::Shrink { Bytes::ZERO } else { p.target });
    let unasked = read_unasked(st, b, stats, t, asked, band, now);
    // An unasked rise not yet told apart is not acted on: the VM is counted
    // at the size it had before it and gets no new target.
    let unsure = matches!(unasked, Unasked::Unsure(_));
    let current = match unasked {
        Unasked::Unsure(before) => before,
        _ => b.current,
    };
    let ceiling = kib_down(s.max.unwrap_or(Bytes(u64::MAX)).min(b.maximum));
    let min = kib_up(s.min.unwrap_or(Bytes::ZERO)).min(ceiling);
    // Measured only from stats taken at the size ebb reads: with nothing
    // in flight, and newer than both the balloon's last move and ebb's
    // last target (libvirt's last-update is host wall-clock seconds).
    // libvirt learns the size from QEMU's events at most once a second, so
    // stats taken meanwhile sit beside the wrong size and mis-state a
    // deflate-on-OOM guest's use by a whole move. Until a reading settles
    // the last settled use stands; a guest ebb first sees, with nothing of
    // its own in flight, is taken as it reads, or one whose balloon moves
    // every tick would never settle.
    let first_look = st.last_current.is_none() && st.pending.is_none();
    let in_flight = st.pending.is_some_and(|p| p.kind != Move::Hold && p.target.abs_diff(current) >= band);
    let settled_since = if st.last_current == Some(current) { st.moved_at } else { now };
    let settled_since = settled_since.max(st.aimed_at.unwrap_or(Millis(0)));
    let settled = !unsure
        && !in_flight
        && (first_look || stats.last_update.is_some_and(|s| s.saturating_mul(1000) >= settled_since.0 + 1000));
    // The size the stats were taken at, for a deflate-on-OOM guest whose
    // MemTotal keeps the balloon's pages: unsettled, the larger of now and
    // the last look, so a shrink in flight never reads as less use.
    let stats_size = if settled { current } else { current.max(st.last_current.unwrap_or(current)) };
    let total = stats.total_beside(b, stats_size);
    // Still, ticks come faster than stats: over several ticks of a shrink
    // the balloon's size now beside free memory from before reads as less
    // use (measured: 337 MiB read as 250), and ebb reclaimed into the
    // guest's pressure every few seconds. Until its stats settle, such a
    // guest's last settled use stands; pressure still reads its free memory.
    let used = match st.last_used {
        Some((u, _)) if b.features.deflate_on_oom && !settled => u,
        _ => total.saturating_sub(stats.usable),
    };
    let flat = t.headroom_min.max(used.scale(t.headroom_fraction));
    // A guest whose history shows fast allocation keeps room for what it
    // allocates before ebb can react: see it (Tuning::sees_in_ms), then
    // grow its balloon at the pace it last grew.
    let react_ms = t.sees_in_ms + st.grow_ms.unwrap_or(0);
    let learned = s.burst_rate.map(|r| (r, react_ms)).filter(|(r, ms)| r.scale(*ms as f64 / 1000.0) > flat);
    let headroom = learned.map_or(flat, |(r, ms)| r.scale(ms as f64 / 1000.0));
    let growth = match st.last_used {
        Some((before, at)) if settled && now.0 > at.0 => Some(Bytes((used.saturating_sub(before).0 as f64 * 1000.0 / now.since(at) as f64) as u64)),
        _ => None,
    };
    if settled {
        st.last_used = Some((used, now));
    }
    // An unsettled reading is only trusted upward: while a balloon
    // shrinks the stale MemTotal makes it read low, which would sink
    // the floor step by step. (While it grows it reads high, which
    // costs a second of caution until the next settled reading.)
    let reading = current.saturating_sub(total);
    let overhead = if settled { reading } else { st.overhead.map_or(reading, |o| o.max(reading)) };
    st.overhead = Some(overhead);

    // The guest took pages back from its balloon itself (deflate-on-OOM).
    // Whatever was in flight is over, and ebb follows it: the size it took
    // is its floor for a while, so no reclaim pushes it back into its OOM
    // path; the pool is made up from the others. (Only that size: what ebb
    // gives it on top, for its pressure, is ebb's to take back once the
    // pressure is gone.)
    let took_back = match unasked {
        Unasked::Deflated(by) => Some(by),
        _ => None,
    };
    if let Some(by) = took_back {
        st.deflated = Some(Deflated { at: now, by, to: current, held: true });
        st.pending = None;
        st.step = t.halve(st.step);
        st.reclaim_until = None;
        st.no_shrink_until = Some(now.plus(t.stuck_after_ms));
    }
    // Held until its stats are settled again after it (they then show what
    // it needs), for stuck_after at least and DEFLATED_HOLD_MS at most; once
    // let go, for good (ebb's own next move unsettles them again).
    if let Some(d) = st.deflated.as_mut() {
        let since = now.since(d.at);
        d.held &= since < DEFLATED_HOLD_MS && (since < t.stuck_after_ms || !settled);
    }
    let took = st.deflated.filter(|d| d.held).map(|d| kib_down(d.to));
    let ceiling = ceiling.max(took.unwrap_or(Bytes::ZERO));
    let floor_with = |headroom: Bytes| kib_up(min.max(used + headroom + overhead)).min(ceiling).max(took.unwrap_or(Bytes::ZERO));
    let (floor, learned_floor) = (floor_with(flat), floor_with(headroom));

    let mut pressure = pressure_words(t, stats, current, st.counters.as_ref(), now);
    if let Some(by) = took_back {
        let words = format!("the guest took {by} back from its balloon itself (deflate-on-OOM)");
        pressure = Some(pressure.map_or(words.clone(), |p| format!("{words} and {p}")));
    }
    st.counters = Some(Counters {
        swap_out: stats.swap_out,
        major_faults: stats.major_faults,
        oom_kills: stats.oom_kills,
        at: now,
    });
    if st.last_current != Some(current) {
        st.last_current = Some(current);
        st.moved_at = now;
    }

    let pressured = pressure.is_some();
    let recent_reclaim = st.reclaim_until.is_some_and(|u| now < u);
    let mut back_off = false;
    let mut stuck = None;
    if unsure {
        // Nothing of the move in flight is judged on a reading not trusted yet.
    } else if let Some(p) = st.pending.as_mut() {
        let since = *p.since.get_or_insert(now);
        if p.kind == Move::Resumed {
            p.kind = if p.target < current { Move::Shrink } else { Move::Grow };
        }
        let p = *p;
        let reached = p.target.abs_diff(current) < band;
        let idle_for = now.since(since.max(st.moved_at));
        if pressured && (p.kind == Move::Shrink || recent_reclaim) {
            back_off = true;
        } else if reached {
            if p.kind == Move::Grow {
                st.grow_ms = Some(now.since(since));
            }
            if p.kind == Move::Shrink {
                st.step = t.double(st.step);
                st.reclaim_until = Some(now.plus(t.stuck_after_ms));
            }
            st.pending = None;
        } else if idle_for >= t.stuck_after_ms {
            st.step = t.halve(st.step);
            st.reclaim_until = None;
            st.no_shrink_until = Some(now.plus(t.stuck_after_ms));
            let hold = current.clamp(min, ceiling.max(min));
            stuck = Some((hold, p.target, idle_for));
        }
    } else if pressured && recent_reclaim {
        back_off = true;
    }
    if back_off {
        st.step = t.halve(st.step);
        st.reclaim_until = None;
        st.no_shrink_until = Some(now.plus(t.stuck_after_ms));
        if st.pending.is_some_and(|p| p.kind == Move::Shrink) {
            st.pending = None;
        }
    }

    let heading = st.pending.map_or(current, |p| p.target);
    let committed = match st.pending {
        Some(p) if p.kind == Move::Grow => current.max(p.target),
        _ => current,
    };
    let want = if pressured {
        let short = current.scale(t.low_free_fraction).saturating_sub(stats.usable);
        kib_up(current + st.step.max(short)).min(ceiling)
    } else {
        Bytes::ZERO
    };
    Work {
        view,
        shares: s.shares as f64,
        current,
        band,
        used,
        growth,
        headroom,
        learned,
        step: st.step,
        min,
        floor,
        learned_floor,
        guaranteed: floor,
        ceiling,
        heading,
        committed,
        pressure,
        want,
        back_off,
        stuck,
        entitlement: Bytes::ZERO,
        may_shrink: !pressured && st.no_shrink_until.is_none_or(|u| now >= u),
        unsure,
        target: None,
    }
}

/// What a balloon that reads above anything ebb asked for is.
enum Unasked {
    /// It does not, or it moved by someone else's hand (`virsh setmem`):
    /// its reading stands.
    No,
    /// The guest deflated it itself on its way to an OOM, by this much.
    Deflated(Bytes),
    /// Not told apart yet: the size it had before.
    Unsure(Bytes),
}

/// Tells a deflate-on-OOM guest taking pages back from its balloon from a
/// stale reading. libvirt's balloon size comes, now and then, from QEMU's
/// size-change events, which QEMU sends at most one a second: measured,
/// a guest just shrunk to 320 MiB read 506 MiB again for 1.3 s. Taken for
/// a deflation, that held the guest at 506 MiB and kept the pool over it.
/// A guest deflates itself only when it is out of memory, so the first
/// stats taken after the rise tell: short of memory, it deflated; with
/// plenty free, the reading was stale. A rise that outlasts `stuck_after`
/// is believed either way (stats that never come must not hide it).
fn read_unasked(st: &mut VmMem, b: &Balloon, stats: &GuestMemStats, t: &Tuning, asked: Bytes, band: Bytes, now: Millis) -> Unasked {
    let rise = match st.last_current {
        Some(last) if b.features.deflate_on_oom && b.current > last.max(asked) + band => Some((last, b.current - last.max(asked))),
        _ => None,
    };
    let Some((before, by)) = rise else {
        st.rose_at = None;
        return Unasked::No;
    };
    let since = *st.rose_at.get_or_insert(now);
    let stats_after = stats.last_update.is_some_and(|s| s.saturating_mul(1000) >= since.0);
    let short = stats.usable < b.current.scale(t.low_free_fraction);
    let outlasted = now.since(since) >= t.stuck_after_ms;
    if (stats_after || outlasted) && (short || !stats_after) {
        st.rose_at = None;
        Unasked::Deflated(by)
    } else if outlasted {
        st.rose_at = None;
        Unasked::No
    } else {
        Unasked::Unsure(before)
    }
}
