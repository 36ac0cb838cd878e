//! The last hour of the host for the page's charts: each VM's memory and
//! the host's draw, sampled from the agent's snapshots. Kept only while the
//! web view is on, and only in memory: the journal holds what must last.

use crate::api_types::Snapshot;
use ebb_core::{Bytes, Millis};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// One sample every this often…
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// …for an hour.
const KEEP: usize = 720;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    pub at: Millis,
    pub vms: Vec<VmSample>,
    /// None when memory management is off.
    pub pool: Option<Bytes>,
    pub pool_used: Bytes,
    /// The host's draw: the power source's reading, else RAPL's, else the
    /// power model's; None when none is configured.
    pub watts: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VmSample {
    pub name: String,
    pub actual: Option<Bytes>,
    pub target: Option<Bytes>,
    pub used: Option<Bytes>,
}

impl Sample {
    pub fn of(s: &Snapshot, at: Millis) -> Sample {
        let power = s.status.power.as_ref();
        let watts = power
            .and_then(|p| p.reading.as_ref().and_then(|r| r.draw))
            .or_else(|| power.and_then(|p| p.measured.as_ref().map(|m| m.watts)))
            .or_else(|| power.and_then(|p| p.model_draw))
            .map(|w| w.0);
        Sample {
            at,
            vms: s.vms.iter().map(|v| VmSample { name: v.name.clone(), actual: v.memory.actual, target: v.memory.target, used: v.memory.used }).collect(),
            // Without memory management the "pool" is the host's: no line to draw.
            pool: s.status.pool.filter(|_| s.status.memory_enabled),
            pool_used: s.status.pool_used,
            watts,
        }
    }
}

/// The samples so far, and each new one as it is taken.
#[derive(Clone)]
pub struct History {
    samples: Arc<Mutex<VecDeque<Arc<Sample>>>>,
    new: broadcast::Sender<Arc<Sample>>,
}

impl History {
    /// Samples `snapshot` from now on, on a task of its own that ends with
    /// the agent's snapshots.
    pub fn start(mut snapshot: watch::Receiver<Arc<Snapshot>>) -> History {
        let history = History { samples: Arc::default(), new: broadcast::channel(16).0 };
        let keeper = history.clone();
        tokio::spawn(async move {
            loop {
                let at = snapshot.borrow_and_update().status.last_tick_at;
                if let Some(at) = at {
                    keeper.push(Sample::of(&snapshot.borrow(), at));
                    tokio::time::sleep(SAMPLE_EVERY).await;
                }
                if snapshot.changed().await.is_err() {
                    return;
                }
            }
        });
        history
    }

    fn push(&self, sample: Sample) {
        let sample = Arc::new(sample);
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back(sample.clone());
        drop(samples);
        // Nobody listening is fine.
        let _ = self.new.send(sample);
    }

    /// The samples so far, oldest first, and a receiver of those to come
    /// (none taken between the two).
    pub fn follow(&self) -> (Vec<Arc<Sample>>, broadcast::Receiver<Arc<Sample>>) {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.new.subscribe();
        (samples.iter().cloned().collect(), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> History {
        History { samples: Arc::default(), new: broadcast::channel(16).0 }
    }

    fn sample(at: u64) -> Sample {
        Sample { at: Millis(at), vms: vec![], pool: None, pool_used: Bytes(0), watts: None }
    }

    #[test]
    fn an_hour_is_kept_and_a_follower_misses_nothing() {
        let h = history();
        for at in 0..KEEP as u64 + 10 {
            h.push(sample(at));
        }
        let (kept, mut rx) = h.follow();
        assert_eq!(kept.len(), KEEP);
        assert_eq!(kept[0].at, Millis(10), "the oldest went first");
        h.push(sample(9999));
        assert_eq!(rx.try_recv().unwrap().at, Millis(9999));
    }
}
