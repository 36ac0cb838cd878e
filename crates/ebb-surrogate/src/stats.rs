//! Per-VM traffic counters, shared lock-free between a VM's connection tasks
//! and the agent's `stats` reads, and the stream wrapper that feeds them.
//!
//! Only real client traffic through the splice counts as activity (SPEC §2):
//! what the surrogate answers itself (echo, canned replies) and its own
//! backend probes never touch `bytes_in`, `bytes_out` or `last_activity`,
//! or the idle detector would keep a VM awake for its health checks.

use serde::Serialize;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A snapshot of one VM's traffic through the surrogate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Default)]
pub struct TrafficStats {
    /// Client → VM bytes through the splice (replayed buffers included) and
    /// UDP datagrams relayed to the VM.
    pub bytes_in: u64,
    /// VM → client bytes.
    pub bytes_out: u64,
    /// Spliced connections open now.
    pub open_connections: usize,
    /// Connections held now, waiting for the VM to wake.
    pub held_connections: usize,
    /// Bytes held now across those connections and queued datagrams.
    pub held_bytes: usize,
    /// Connections and requests the surrogate answered itself.
    pub answered_locally: u64,
    /// Connections refused (reset or `503`).
    pub refused: u64,
    /// Datagrams dropped: queue full, too old, the wake failed, or no flow
    /// could be opened.
    pub datagrams_dropped: u64,
    /// UDP clients relayed for now (one socket each).
    pub udp_flows: usize,
    /// Last time real client traffic crossed the surrogate; `now` while a
    /// spliced connection of a `hold_open_counts_as_activity` service is
    /// open.
    #[serde(skip)]
    pub last_activity: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Counters {
    base: Instant,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    open: AtomicUsize,
    /// Open spliced connections whose mere openness counts as activity.
    open_active: AtomicUsize,
    pub(crate) held: AtomicUsize,
    pub(crate) held_bytes: AtomicUsize,
    answered_locally: AtomicU64,
    refused: AtomicU64,
    datagrams_dropped: AtomicU64,
    pub(crate) udp_flows: AtomicUsize,
    /// Nanoseconds since `base` plus one; zero means never.
    last_activity: AtomicU64,
}

impl Counters {
    pub(crate) fn new() -> Counters {
        Counters {
            base: Instant::now(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            open_active: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            held_bytes: AtomicUsize::new(0),
            answered_locally: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            datagrams_dropped: AtomicU64::new(0),
            udp_flows: AtomicUsize::new(0),
            last_activity: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.last_activity.fetch_max(nanos + 1, Relaxed);
    }

    pub(crate) fn add_in(&self, n: usize) {
        if n > 0 {
            self.bytes_in.fetch_add(n as u64, Relaxed);
            self.touch();
        }
    }

    pub(crate) fn add_out(&self, n: usize) {
        if n > 0 {
            self.bytes_out.fetch_add(n as u64, Relaxed);
            self.touch();
        }
    }

    pub(crate) fn answered_locally(&self) {
        self.answered_locally.fetch_add(1, Relaxed);
    }

    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Relaxed);
    }

    pub(crate) fn dropped_datagrams(&self, n: usize) {
        self.datagrams_dropped.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> TrafficStats {
        let last = match self.open_active.load(Relaxed) {
            0 => match self.last_activity.load(Relaxed) {
                0 => None,
                n => Some(self.base + std::time::Duration::from_nanos(n - 1)),
            },
            _ => Some(Instant::now()),
        };
        TrafficStats {
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            open_connections: self.open.load(Relaxed),
            held_connections: self.held.load(Relaxed),
            held_bytes: self.held_bytes.load(Relaxed),
            answered_locally: self.answered_locally.load(Relaxed),
            refused: self.refused.load(Relaxed),
            datagrams_dropped: self.datagrams_dropped.load(Relaxed),
            udp_flows: self.udp_flows.load(Relaxed),
            last_activity: last,
        }
    }
}

/// Marks one spliced connection open for as long as it lives.
pub(crate) struct OpenGuard<'a> {
    counters: &'a Counters,
    active: bool,
}

impl<'a> OpenGuard<'a> {
    pub(crate) fn new(counters: &'a Counters, hold_open_is_activity: bool) -> OpenGuard<'a> {
        counters.open.fetch_add(1, Relaxed);
        if hold_open_is_activity {
            counters.open_active.fetch_add(1, Relaxed);
        }
        OpenGuard {
            counters,
            active: hold_open_is_activity,
        }
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Relaxed);
        if self.active {
            // The connection was activity until this instant.
            self.counters.touch();
            self.counters.open_active.fetch_sub(1, Relaxed);
        }
    }
}

/// A place in a VM's wait queue and the bytes it holds; both are released
/// when it drops, whichever way the held client's story ends.
pub(crate) struct HeldSlot<'a> {
    counters: &'a Counters,
    bytes: usize,
    max_vm_bytes: usize,
}

impl<'a> HeldSlot<'a> {
    /// A place in the queue, unless `depth` clients already wait.
    pub(crate) fn acquire(
        counters: &'a Counters,
        depth: usize,
        max_vm_bytes: usize,
    ) -> Option<Self> {
        counters
            .held
            .fetch_update(Relaxed, Relaxed, |h| (h < depth).then_some(h + 1))
            .ok()
            .map(|_| HeldSlot {
                counters,
                bytes: 0,
                max_vm_bytes,
            })
    }

    /// Accounts `n` more held bytes against the VM's budget; false when the
    /// budget is exhausted (nothing is accounted then).
    pub(crate) fn add_bytes(&mut self, n: usize) -> bool {
        let ok = self
            .counters
            .held_bytes
            .fetch_update(Relaxed, Relaxed, |b| {
                b.checked_add(n).filter(|t| *t <= self.max_vm_bytes)
            })
            .is_ok();
        if ok {
            self.bytes += n;
        }
        ok
    }
}

impl Drop for HeldSlot<'_> {
    fn drop(&mut self) {
        self.counters.held.fetch_sub(1, Relaxed);
        self.counters.held_bytes.fetch_sub(self.bytes, Relaxed);
    }
}

/// The client side of a splice: counts what the client sends (`bytes_in`)
/// and what it receives (`bytes_out`) as it flows, so a long-lived stream
/// shows up as activity while it carries data, not only when it closes.
pub(crate) struct Metered<'a, S> {
    pub(crate) inner: &'a mut S,
    pub(crate) counters: &'a Counters,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.counters.add_in(buf.filled().len() - before);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.counters.add_out(n);
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}
