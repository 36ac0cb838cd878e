//! The surrogate's share of the process's file descriptors, counted before
//! the kernel runs out: a client past a share is refused with a reason
//! (`503`, or a reset) instead of an accept that fails for every service and
//! for the agent's API alike (reliability review, defect #4).
//!
//! What a TCP connection costs: 1 descriptor while it is held or answered
//! by the surrogate itself, 2 once it has its backend connection, and 4 more
//! for the splice pipes when the share has room for them (else it is
//! copied). A UDP flow costs 1, from a share of its own, so a flood of
//! spoofed source ports cannot take descriptors from TCP clients.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Descriptors a TCP connection needs once it has a backend connection.
pub(crate) const CONNECTED: usize = 2;
/// The two splice pipes, two descriptors each.
pub(crate) const PIPES: usize = 4;

/// Held clients keep this fraction (1/8) of a TCP share free, so a VM that
/// wakes always has descriptors for its replays' backend connections.
pub(crate) const HELD_HEADROOM: usize = 8;
/// Kept for everything but clients: the API's connections, libvirt's
/// socket, the journal (SQLite's database, WAL and shared-memory files, per
/// reader too), logs, the runtime's own descriptors and the listeners.
const RESERVE_MIN: usize = 256;

/// How the agent splits its descriptor limit (`RLIMIT_NOFILE`) between the
/// surrogate's clients and everything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdPlan {
    pub nofile: u64,
    /// Kept for everything but clients: a tenth, at least 256 (half of a
    /// limit under 512).
    pub reserve: usize,
    /// For the TCP clients of all VMs together (`Limits::max_fds`).
    pub tcp: usize,
    /// For one VM's TCP clients (`Limits::max_fds_per_vm`): three quarters,
    /// so a flood at one VM leaves a quarter to the rest.
    pub tcp_per_vm: usize,
    /// UDP flows of all services (`Limits::udp_flows_total`): an eighth of
    /// what the reserve leaves, apart from the TCP share.
    pub udp: usize,
}

impl FdPlan {
    pub fn for_limit(nofile: u64) -> FdPlan {
        let n = usize::try_from(nofile).unwrap_or(usize::MAX);
        let reserve = RESERVE_MIN.max(n / 10).min(n / 2);
        let clients = n - reserve;
        let udp = clients / 8;
        let tcp = clients - udp;
        FdPlan {
            nofile,
            reserve,
            tcp,
            tcp_per_vm: tcp / 4 * 3,
            udp,
        }
    }

}

/// The plan for a limit of 4096, where the agent has not planned from its
/// own `RLIMIT_NOFILE` (`ebb check`, tests).
impl Default for FdPlan {
    fn default() -> FdPlan {
        FdPlan::for_limit(4096)
    }
}

impl fmt::Display for FdPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "limit {}: {} kept for the API, libvirt and the journal; {} for TCP clients \
             (at most {} per VM; a held client takes 1, a spliced one {}), {} for UDP flows",
            self.nofile,
            self.reserve,
            self.tcp,
            self.tcp_per_vm,
            CONNECTED + PIPES,
            self.udp
        )
    }
}

/// A number of descriptors (or flows) that may be in use at once.
#[derive(Debug)]
pub(crate) struct Quota {
    limit: usize,
    used: AtomicUsize,
}

impl Quota {
    pub(crate) fn new(limit: usize) -> Arc<Quota> {
        Arc::new(Quota {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    /// Takes `n` if that leaves at least `leave` of the limit free.
    fn try_take(&self, n: usize, leave: usize) -> bool {
        self.used
            .fetch_update(Relaxed, Relaxed, |u| {
                (u + n + leave <= self.limit).then_some(u + n)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Relaxed);
    }
}

/// Descriptors taken from one or two quotas (a VM's and the surrogate's),
/// given back when dropped.
#[derive(Debug)]
pub(crate) struct Share {
    quotas: Vec<Arc<Quota>>,
    n: usize,
}

impl Share {
    /// `n` from every quota, each left with at least `1/headroom_frac` of
    /// its limit free (0: none kept); or the index of a quota that lacks
    /// them, with nothing taken.
    pub(crate) fn take(quotas: &[&Arc<Quota>], n: usize, headroom_frac: usize) -> Result<Share, usize> {
        let mut share = Share {
            quotas: Vec::with_capacity(quotas.len()),
            n,
        };
        for (i, q) in quotas.iter().enumerate() {
            let leave = q.limit.checked_div(headroom_frac).unwrap_or(0);
            if !q.try_take(n, leave) {
                // Dropping `share` gives back what the earlier quotas gave.
                return Err(i);
            }
            share.quotas.push(Arc::clone(q));
        }
        Ok(share)
    }

    /// Grows the share to `total` descriptors, without headroom; false (and
    /// unchanged) when a quota lacks them.
    pub(crate) fn grow_to(&mut self, total: usize) -> bool {
        let more = total.saturating_sub(self.n);
        if more == 0 {
            return true;
        }
        for (i, q) in self.quotas.iter().enumerate() {
            if !q.try_take(more, 0) {
                for q in &self.quotas[..i] {
                    q.give_back(more);
                }
                return false;
            }
        }
        self.n = total;
        true
    }

    /// Gives back what is above `total`.
    pub(crate) fn shrink_to(&mut self, total: usize) {
        let less = self.n.saturating_sub(total);
        for q in &self.quotas {
            q.give_back(less);
        }
        self.n -= less;
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        for q in &self.quotas {
            q.give_back(self.n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_keep_a_reserve_and_split_the_rest() {
        let p = FdPlan::for_limit(20_000);
        assert_eq!((p.reserve, p.udp, p.tcp, p.tcp_per_vm), (2_000, 2_250, 15_750, 11_811));
        assert_eq!(FdPlan::for_limit(1024).reserve, 256);
        let small = FdPlan::for_limit(300);
        assert_eq!((small.reserve, small.reserve + small.tcp + small.udp), (150, 300));
    }

    #[test]
    fn shares_come_from_every_quota_or_none() {
        let (vm, all) = (Quota::new(4), Quota::new(10));
        let a = Share::take(&[&vm, &all], 3, 0).unwrap();
        assert_eq!(Share::take(&[&vm, &all], 2, 0).unwrap_err(), 0);
        let b = Share::take(&[&all, &vm], 8, 0).unwrap_err();
        assert_eq!(b, 0);
        // The failed take left nothing behind in the first quota.
        assert_eq!((vm.used(), all.used()), (3, 3));
        drop(a);
        assert_eq!((vm.used(), all.used()), (0, 0));
    }

    #[test]
    fn headroom_is_kept_from_held_clients_only() {
        let q = Quota::new(8);
        // With a quarter kept free, six of eight can be held.
        let held: Vec<_> = (0..8).map_while(|_| Share::take(&[&q], 1, 4).ok()).collect();
        assert_eq!(held.len(), 6);
        let mut s = Share::take(&[&q], 1, 0).expect("the headroom serves the rest");
        assert!(s.grow_to(2));
        assert!(!s.grow_to(3));
        assert_eq!(q.used(), 8);
        s.shrink_to(1);
        assert_eq!(q.used(), 7);
    }
}
