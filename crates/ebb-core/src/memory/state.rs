//! What the memory policy remembers about each VM between ticks, and how
//! that state is kept in step with the id-sorted observation.

use crate::model::*;
use crate::units::*;
use std::sync::Arc;

/// Per-VM memory as the agent restores it from its journal after a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct Resumed {
    pub step: Bytes,
    pub last_target: Option<Bytes>,
}

/// What the policy remembers about one VM between ticks.
#[derive(Debug, Clone)]
pub(super) struct VmMem {
    pub step: Bytes,
    pub pending: Option<Pending>,
    pub counters: Option<Counters>,
    pub last_current: Option<Bytes>,
    /// Last time the balloon moved at all: "stuck" is no movement, not a
    /// missed deadline, so a slow but moving balloon is left alone.
    pub moved_at: Millis,
    /// When ebb last sent it a target: its balloon may move from then on
    /// before libvirt's reading shows it (QEMU sends a size at most once a
    /// second), so stats taken since may be at a size not read yet.
    pub aimed_at: Option<Millis>,
    /// Distress seen before this instant is blamed on the reclaim that just
    /// landed: swapping shows up a tick after the balloon got there.
    pub reclaim_until: Option<Millis>,
    /// No new reclaim before this (after a stuck balloon or a failed call),
    /// so a guest that cannot give memory up is not hammered every tick.
    pub no_shrink_until: Option<Millis>,
    /// Memory the guest kernel holds outside its MemTotal (balloon size −
    /// MemTotal, ~55 MiB on a small Linux guest): the floor adds it, or a
    /// guest "at used + headroom" would really have almost nothing free.
    /// None until measured on settled stats.
    pub overhead: Option<Bytes>,
    /// When a deflate-on-OOM guest last took pages back from its balloon
    /// itself: ebb then keeps it at least at the size it took for a while
    /// (`DEFLATED_HOLD_MS`), so a reclaim never pushes it back into its own
    /// OOM path.
    pub deflated: Option<Deflated>,
    /// Since when its balloon reads above anything ebb asked for, while
    /// that is not told apart (`assess::read_unasked`).
    pub rose_at: Option<Millis>,
    /// How long its last grow took to land (ms): its balloon's own part
    /// of ebb's reaction time.
    pub grow_ms: Option<u64>,
    /// What the guest used at its last settled reading, and when: its
    /// growth per second is measured between settled readings only.
    pub last_used: Option<(Bytes, Millis)>,
    pub last_reason: Option<Arc<Reason>>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Deflated {
    pub at: Millis,
    /// How much it took back.
    pub by: Bytes,
    /// The size it took itself to.
    pub to: Bytes,
    /// Still kept at least at that size.
    pub held: bool,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    pub target: Bytes,
    pub kind: Move,
    /// When this move began; None for a target restored from the journal,
    /// whose clock starts at the first observation after the restart.
    pub since: Option<Millis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Move {
    Shrink,
    Grow,
    Hold,
    /// From the journal: direction unknown until the first observation.
    Resumed,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Counters {
    pub swap_out: Bytes,
    pub major_faults: u64,
    pub oom_kills: Option<u64>,
    pub at: Millis,
}

impl VmMem {
    pub fn new(step: Bytes, now: Millis) -> VmMem {
        VmMem {
            step,
            pending: None,
            counters: None,
            last_current: None,
            moved_at: now,
            aimed_at: None,
            reclaim_until: None,
            no_shrink_until: None,
            overhead: None,
            deflated: None,
            rose_at: None,
            grow_ms: None,
            last_used: None,
            last_reason: None,
        }
    }

    pub fn resume(&mut self, r: Resumed) {
        self.step = r.step;
        self.pending = r.last_target.map(|target| Pending { target, kind: Move::Resumed, since: None });
        self.last_current = None;
    }

    /// The VM is not managed this tick: whatever was in flight is no longer
    /// ours to judge.
    pub fn let_go(&mut self) {
        self.pending = None;
        self.counters = None;
        self.reclaim_until = None;
        self.last_current = None;
        self.rose_at = None;
    }
}

/// The indices of `obs.vms` in id order, and the state of each VM in that
/// order. Usually the same VMs are observed as last tick, in the same
/// order: the state is reused in place, and since it is sorted by id the
/// observation is too (one pointer comparison per VM, no string compared).
/// Otherwise a merge walk (both sides sorted by id) rebuilds it, dropping
/// VMs that are gone and starting new ones at `step`.
pub(super) fn align(
    states: Vec<(VmId, VmMem)>,
    obs: &Observation,
    step: Bytes,
    now: Millis,
) -> (Vec<usize>, Vec<(VmId, VmMem)>) {
    if states.len() == obs.vms.len() && obs.vms.iter().zip(&states).all(|(v, (id, _))| &v.id == id) {
        return ((0..obs.vms.len()).collect(), states);
    }
    let mut order: Vec<usize> = (0..obs.vms.len()).collect();
    if !obs.vms.windows(2).all(|w| w[0].id <= w[1].id) {
        order.sort_by(|&a, &b| obs.vms[a].id.cmp(&obs.vms[b].id));
    }
    let mut old = states.into_iter().peekable();
    let mut aligned = Vec::with_capacity(order.len());
    for &i in &order {
        let id = &obs.vms[i].id;
        while old.peek().is_some_and(|(o, _)| o < id) {
            old.next();
        }
        aligned.push(match old.peek() {
            Some((o, _)) if o == id => old.next().expect("peeked"),
            _ => (id.clone(), VmMem::new(step, now)),
        });
    }
    (order, aligned)
}
