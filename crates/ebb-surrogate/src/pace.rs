//! The pace of replays to a woken service: how many held clients' requests
//! may wait for their first answer at once.
//!
//! A fixed number is wrong both ways: too many overflow a small guest's
//! listen backlog (busybox httpd listens with 9; a QEMU user-mode forward
//! then accepts on the host side and stalls or drops), too few leave a
//! capable service idle while clients wait. So the window follows what the
//! service does, as TCP's congestion control follows the network (AIMD): it
//! doubles while answers come as fast as the fastest one seen in this wake,
//! then grows by one per window of answers; it shrinks by a quarter when
//! answers queue (slower than twice the fastest) and by half when a turn
//! ends without one (a connect refused or timed out, a close, no first byte
//! within the turn). One decrease per window of turns, so one burst of bad
//! news counts once. Turns are given in arrival order (tokio's semaphore is
//! fair), so the earliest client is replayed first.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// The most replays of one service waiting for their first answer at once.
pub(crate) const MAX_WINDOW: usize = 64;
/// A turn without an answer counts as congestion after this long (time for
/// a slow guest to accept), or after three of the fastest answers when those
/// are slower. Its place then goes to the next client while its replay waits
/// on: a connection the guest's full backlog dropped can sit in QEMU's
/// user-mode stack for tens of seconds (it resends the SYN after 3 s, 6 s,
/// 12 s…), and a few of those must not stop every other replay. The window
/// halves for each such window of turns, so what waits past its turn grows
/// by at most one connection per turn length.
const MIN_TURN: Duration = Duration::from_secs(1);
/// Answers slower than twice the fastest plus this are queueing.
const QUEUE_SLACK: Duration = Duration::from_millis(50);

/// What one turn saw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Outcome {
    /// The service's first byte came this long after the turn began.
    Answered(Duration),
    /// No first byte within the turn: refused, timed out, or closed.
    Congested,
}

/// The window itself: pure, so its rules are tested without sockets.
#[derive(Clone, Debug)]
pub(crate) struct Window {
    size: f64,
    /// The fastest answer in this wake: the service's time without a queue.
    fastest: Option<Duration>,
    /// Until the first sign of congestion the window doubles per window.
    slow_start: bool,
    /// Turns ended since the last decrease.
    since_decrease: usize,
}

impl Window {
    pub(crate) fn new(initial: usize) -> Window {
        Window {
            size: initial.clamp(1, MAX_WINDOW) as f64,
            fastest: None,
            slow_start: true,
            // The first bad news counts at once.
            since_decrease: usize::MAX,
        }
    }

    pub(crate) fn size(&self) -> usize {
        self.size as usize
    }

    pub(crate) fn turn_length(&self) -> Duration {
        self.fastest.map_or(MIN_TURN, |f| (f * 3).max(MIN_TURN))
    }

    pub(crate) fn on(&mut self, outcome: Outcome) {
        self.since_decrease = self.since_decrease.saturating_add(1);
        match outcome {
            Outcome::Answered(took) => {
                let fastest = *self.fastest.get_or_insert(took);
                self.fastest = Some(fastest.min(took));
                if took > fastest * 2 + QUEUE_SLACK {
                    self.decrease(0.75);
                } else if self.slow_start {
                    self.size += 1.0;
                } else {
                    self.size += 1.0 / self.size;
                }
            }
            Outcome::Congested => self.decrease(0.5),
        }
        self.size = self.size.clamp(1.0, MAX_WINDOW as f64);
    }

    fn decrease(&mut self, factor: f64) {
        self.slow_start = false;
        if self.since_decrease >= self.size() {
            self.size *= factor;
            self.since_decrease = 0;
        }
    }
}

/// One service's replay turns.
pub(crate) struct Pacer {
    initial: usize,
    slots: Semaphore,
    state: Mutex<PaceState>,
    /// Clients waiting for a turn or in one.
    queued: AtomicUsize,
}

struct PaceState {
    window: Window,
    /// The wake the window belongs to: each wake starts afresh.
    epoch: u64,
    /// Permits in circulation (given out or available) minus `debt`.
    permits: usize,
    /// Permits to retire as they come back, after the window shrank.
    debt: usize,
}

impl Pacer {
    pub(crate) fn new(initial: usize) -> Pacer {
        let window = Window::new(initial);
        Pacer {
            initial,
            slots: Semaphore::new(window.size()),
            state: Mutex::new(PaceState {
                permits: window.size(),
                window,
                epoch: 0,
                debt: 0,
            }),
            queued: AtomicUsize::new(0),
        }
    }

    /// True while clients wait for a turn or are in one: a client arriving
    /// then queues behind them instead of overtaking them.
    pub(crate) fn busy(&self) -> bool {
        self.queued.load(Relaxed) > 0
    }

    /// Waits for a turn, in arrival order, in the wake `epoch`.
    pub(crate) async fn turn(&self, epoch: u64) -> Turn<'_> {
        let queued = Queued::new(&self.queued);
        self.update(|st| {
            if st.epoch != epoch {
                st.epoch = epoch;
                st.window = Window::new(self.initial);
            }
        });
        let permit = self
            .slots
            .acquire()
            .await
            .expect("the pacer's semaphore is never closed");
        self.started(Some(permit), queued)
    }

    /// A turn at once, beside the window: for the connection that proved
    /// the service answers, which must not wait idle on it (a service that
    /// serves one connection at a time would wait on it in turn).
    pub(crate) fn extra_turn(&self) -> Turn<'_> {
        self.started(None, Queued::new(&self.queued))
    }

    fn started<'a>(&'a self, permit: Option<SemaphorePermit<'a>>, queued: Queued<'a>) -> Turn<'a> {
        let length = self.state.lock().expect("pace lock").window.turn_length();
        Turn {
            pacer: self,
            permit,
            started: Instant::now(),
            length,
            told: false,
            _queued: queued,
        }
    }

    /// Applies `f` to the state, then matches the permits to the window.
    fn update(&self, f: impl FnOnce(&mut PaceState)) {
        let mut st = self.state.lock().expect("pace lock");
        f(&mut st);
        let want = st.window.size();
        if want > st.permits {
            let more = want - st.permits;
            let cancelled = more.min(st.debt);
            st.debt -= cancelled;
            self.slots.add_permits(more - cancelled);
        } else {
            st.debt += st.permits - want;
        }
        st.permits = want;
    }
}

/// Counts a client as queued for as long as it lives.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn new(n: &'a AtomicUsize) -> Queued<'a> {
        n.fetch_add(1, Relaxed);
        Queued(n)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A replay's turn; dropped without an outcome it tells the window nothing.
pub(crate) struct Turn<'a> {
    pacer: &'a Pacer,
    permit: Option<SemaphorePermit<'a>>,
    started: Instant,
    length: Duration,
    /// An outcome was told already: the window hears one per turn.
    told: bool,
    _queued: Queued<'a>,
}

impl Turn<'_> {
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// When a turn without an answer counts as congestion.
    pub(crate) fn ends(&self) -> Instant {
        self.started + self.length
    }

    /// Tells the window what this turn saw, once; the turn is kept.
    pub(crate) fn tell(&mut self, outcome: Outcome) {
        if !std::mem::replace(&mut self.told, true) {
            self.pacer.update(|st| st.window.on(outcome));
        }
    }

    /// Tells the window and gives the turn back.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.tell(outcome);
    }

    /// The turn outlasted its length without an answer: counts as
    /// congestion and gives its place to the next client, while the replay
    /// goes on waiting for its answer (see `MIN_TURN`).
    pub(crate) fn outlasted(&mut self) {
        self.tell(Outcome::Congested);
        self.give_back();
    }

    fn give_back(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let mut st = self.pacer.state.lock().expect("pace lock");
        if st.debt > 0 {
            st.debt -= 1;
            permit.forget();
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grows_while_answers_are_fast_and_shrinks_once_per_window_when_they_queue() {
        let mut w = Window::new(4);
        for _ in 0..4 {
            w.on(Outcome::Answered(20 * MS));
        }
        assert_eq!(w.size(), 8, "slow start: one more per answer");
        // Answers now take 10x the fastest: the service queues them.
        w.on(Outcome::Answered(200 * MS));
        assert_eq!(w.size(), 6);
        w.on(Outcome::Answered(200 * MS));
        assert_eq!(w.size(), 6, "one decrease per window of turns");
        for _ in 0..6 {
            w.on(Outcome::Answered(200 * MS));
        }
        assert_eq!(w.size(), 4);
        // Out of slow start, fast answers add one per window.
        for _ in 0..4 {
            w.on(Outcome::Answered(20 * MS));
        }
        assert_eq!(w.size(), 5);
    }

    #[test]
    fn halves_on_congestion_and_never_leaves_its_bounds() {
        let mut w = Window::new(40);
        w.on(Outcome::Congested);
        assert_eq!(w.size(), 20);
        for _ in 0..1000 {
            w.on(Outcome::Congested);
        }
        assert_eq!(w.size(), 1);
        let mut w = Window::new(1000);
        assert_eq!(w.size(), MAX_WINDOW);
        w.on(Outcome::Answered(MS));
        assert_eq!(w.size(), MAX_WINDOW);
        assert_eq!(Window::new(0).size(), 1);
    }

    #[test]
    fn turns_count_as_congested_after_a_second_or_three_of_the_fastest_answers() {
        let mut w = Window::new(1);
        assert_eq!(w.turn_length(), MIN_TURN);
        w.on(Outcome::Answered(2 * MIN_TURN));
        assert_eq!(w.turn_length(), 6 * MIN_TURN);
    }

    #[tokio::test]
    async fn the_semaphore_follows_the_window() {
        let p = Pacer::new(2);
        let (a, b) = (p.turn(1).await, p.turn(1).await);
        assert!(p.busy());
        assert!(p.slots.try_acquire().is_err());
        // Two congested turns: the window halves to 1, so one permit retires.
        // A turn tells the window once, however often it is told.
        let mut a = a;
        a.tell(Outcome::Congested);
        a.tell(Outcome::Answered(Duration::from_millis(1)));
        drop(a);
        b.finish(Outcome::Congested);
        assert_eq!(p.slots.available_permits(), 1);
        assert!(!p.busy());
        // A new wake starts over at the initial window.
        let c = p.turn(2).await;
        assert_eq!(p.slots.available_permits(), 1);
        drop(c);
        assert_eq!(p.slots.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_turn_that_outlasts_its_length_makes_way_for_the_next() {
        let p = Pacer::new(1);
        let mut first = p.turn(1).await;
        assert!(p.slots.try_acquire().is_err());
        first.outlasted();
        // The window stays at its floor of one, and the next client has it
        // while the first still waits for its answer.
        let second = p.turn(1).await;
        assert!(p.busy());
        drop(second);
        drop(first);
        assert_eq!(p.slots.available_permits(), 1, "a permit given back early is not given back twice");
    }
}
