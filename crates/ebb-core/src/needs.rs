//! The needs database of seed 001 ("a database detailing the resource needs
//! of each VM"; anchor: Kubernetes VPA's decaying histograms): per VM and
//! per hour of the day (UTC), histograms of its CPU demand and its disk and
//! network rates, from which percentiles are read, and how fast what it
//! uses of its memory grew. Compact: a VM's whole history is 24 × 87
//! counters, whatever its age. The agent keeps it in the journal; the
//! reallocation policy starts a returning VM from the class its history
//! gives for the hour instead of from nothing, and the memory policy sizes
//! the headroom of a guest that allocates fast from it.

use crate::rates::ActivityRates;
use crate::realloc::{Class, ReallocConfig};
use crate::units::{Bytes, Millis};
use serde::{Deserialize, Serialize};

pub const HOURS: usize = 24;
/// CPU demand (run + wait, as a fraction of its vCPUs) in steps of 5 %.
const CPU_BUCKETS: usize = 21;
/// Rates in powers of two from 1 KiB/s (bucket 1) to 1 GiB/s and above;
/// bucket 0 is under 1 KiB/s.
const RATE_BUCKETS: usize = 22;
/// An hour's history counts once it holds this many samples (a minute of
/// ticks at the default 2 s).
pub const MIN_SAMPLES: u64 = 30;
/// Counts are halved when an hour reaches this many samples, so old weeks
/// fade and the counters stay small.
const HALVE_AT: u64 = 20_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HourHistogram {
    pub samples: u64,
    pub cpu: Vec<u32>,
    pub disk: Vec<u32>,
    pub net: Vec<u32>,
    /// How fast what the guest uses grew per second, one count per settled
    /// look of the memory policy (histories from before it have none).
    #[serde(default = "rate_zeros")]
    pub mem: Vec<u32>,
}

fn rate_zeros() -> Vec<u32> {
    vec![0; RATE_BUCKETS]
}

impl Default for HourHistogram {
    fn default() -> Self {
        HourHistogram { samples: 0, cpu: vec![0; CPU_BUCKETS], disk: rate_zeros(), net: rate_zeros(), mem: rate_zeros() }
    }
}

/// One VM's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmNeeds {
    pub hours: Vec<HourHistogram>,
}

impl Default for VmNeeds {
    fn default() -> Self {
        VmNeeds { hours: vec![HourHistogram::default(); HOURS] }
    }
}

/// What one hour of a VM's history says, for `ebb needs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HourNeeds {
    /// Hour of the day, UTC.
    pub hour: usize,
    pub samples: u64,
    /// CPU demand percentiles, as fractions of its vCPUs (bucket upper bounds).
    pub cpu_p50: f64,
    pub cpu_p90: f64,
    pub disk_p90: Bytes,
    pub net_p90: Bytes,
    /// The class this hour's history gives; None under `MIN_SAMPLES`.
    pub class: Option<Class>,
}

/// The hour of the day (UTC) of a wall-clock time.
pub fn hour_of(now: Millis) -> usize {
    ((now.0 / 3_600_000) % HOURS as u64) as usize
}

fn cpu_bucket(demand: f64) -> usize {
    ((demand.max(0.0) * 20.0).ceil() as usize).min(CPU_BUCKETS - 1)
}

fn rate_bucket(rate: Bytes) -> usize {
    let kib = rate.0 / 1024;
    if kib == 0 {
        0
    } else {
        (1 + kib.ilog2() as usize).min(RATE_BUCKETS - 1)
    }
}

/// The bucket holding the `p` quantile.
fn quantile(counts: &[u32], p: f64) -> usize {
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    if total == 0 {
        return 0;
    }
    let want = (p * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, &c) in counts.iter().enumerate() {
        seen += u64::from(c);
        if seen >= want {
            return i;
        }
    }
    counts.len() - 1
}

/// A rate bucket's upper bound.
fn rate_of(bucket: usize) -> Bytes {
    if bucket == 0 {
        Bytes::from_kib(1)
    } else {
        Bytes::from_kib(1u64 << bucket)
    }
}

impl VmNeeds {
    /// Counts one tick's rates; `vcpus` turns CPU into a fraction of them.
    pub fn record(&mut self, now: Millis, r: &ActivityRates, vcpus: u32) {
        let h = &mut self.hours[hour_of(now)];
        if h.samples >= HALVE_AT {
            for c in h.cpu.iter_mut().chain(h.disk.iter_mut()).chain(h.net.iter_mut()) {
                *c /= 2;
            }
            h.samples /= 2;
        }
        h.samples += 1;
        h.cpu[cpu_bucket((r.cpu + r.vcpu_wait) / f64::from(vcpus.max(1)))] += 1;
        h.disk[rate_bucket(r.disk)] += 1;
        h.net[rate_bucket(r.net)] += 1;
    }

    pub fn hour(&self, hour: usize, cfg: &ReallocConfig) -> HourNeeds {
        let h = &self.hours[hour % HOURS];
        let cpu = |p| quantile(&h.cpu, p) as f64 / 20.0;
        let (cpu_p50, cpu_p90) = (cpu(0.5), cpu(0.9));
        let (disk_p50, disk_p90) = (rate_of(quantile(&h.disk, 0.5)), rate_of(quantile(&h.disk, 0.9)));
        let (net_p50, net_p90) = (rate_of(quantile(&h.net, 0.5)), rate_of(quantile(&h.net, 0.9)));
        let class = (h.samples >= MIN_SAMPLES).then(|| {
            // Its typical (median) tick says what it is bound on; it is idle
            // only when nine ticks in ten are.
            let (c, d, n) = (cpu_p50 >= cfg.cpu_busy, disk_p50 >= cfg.disk_busy, net_p50 >= cfg.net_busy);
            match (c, d, n) {
                (false, false, false) if cpu_p90 <= cfg.idle_cpu.max(0.05) && disk_p90 <= cfg.idle_disk && net_p90 <= cfg.idle_net => {
                    Class::Idle
                }
                (false, false, false) => Class::Steady,
                (true, false, false) => Class::CpuBound,
                (false, true, false) => Class::DiskBound,
                (false, false, true) => Class::NetBound,
                _ => Class::Mixed,
            }
        });
        HourNeeds { hour: hour % HOURS, samples: h.samples, cpu_p50, cpu_p90, disk_p90, net_p90, class }
    }

    /// Every hour that has samples.
    pub fn summary(&self, cfg: &ReallocConfig) -> Vec<HourNeeds> {
        (0..HOURS).filter(|&h| self.hours[h].samples > 0).map(|h| self.hour(h, cfg)).collect()
    }

    /// What it usually runs at the hour of `now` (p90, a fraction of its
    /// vCPUs); None until the hour has enough samples.
    pub fn usual_cpu(&self, now: Millis, cfg: &ReallocConfig) -> Option<f64> {
        let h = self.hour(hour_of(now), cfg);
        h.class.map(|_| h.cpu_p90)
    }

    /// Counts how fast what the guest uses grew since the memory policy's
    /// last look. Its counts fade like the others'.
    pub fn record_growth(&mut self, now: Millis, per_second: Bytes) {
        let h = &mut self.hours[hour_of(now)];
        if h.mem.len() != RATE_BUCKETS {
            h.mem = rate_zeros();
        }
        if h.mem.iter().map(|&c| u64::from(c)).sum::<u64>() >= HALVE_AT {
            h.mem.iter_mut().for_each(|c| *c /= 2);
        }
        h.mem[rate_bucket(per_second)] += 1;
    }

    /// The fastest its use has grown, per second (its bucket's lower bound:
    /// the rate it surely reached), at any hour: a burst keeps no
    /// timetable. None when it never grew faster than 1 KiB/s.
    pub fn fastest_growth(&self) -> Option<Bytes> {
        let top = self.hours.iter().filter_map(|h| h.mem.iter().rposition(|&c| c > 0)).max()?;
        (top > 1).then(|| rate_of(top - 1))
    }

    /// The class its history gives for the hour of `now`.
    pub fn expected(&self, now: Millis, cfg: &ReallocConfig) -> Option<Class> {
        self.hour(hour_of(now), cfg).class
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(cpu: f64, disk_kib: u64) -> ActivityRates {
        ActivityRates { cpu, vcpu_wait: 0.0, disk: Bytes::from_kib(disk_kib), ..ActivityRates::default() }
    }

    #[test]
    fn percentiles_and_class_per_hour() {
        let cfg = ReallocConfig::default();
        let mut n = VmNeeds::default();
        let nine = Millis(9 * 3_600_000 + 5);
        for i in 0..100 {
            // Busy 70 ticks in 100 at nine o'clock, 1 vCPU.
            n.record(nine, &rates(if i < 70 { 0.97 } else { 0.02 }, 0), 1);
        }
        let h = n.hour(9, &cfg);
        assert_eq!((h.samples, h.cpu_p50, h.cpu_p90), (100, 1.0, 1.0));
        assert_eq!(h.class, Some(Class::CpuBound));
        assert_eq!(n.expected(nine, &cfg), Some(Class::CpuBound));
        // Other hours know nothing yet.
        assert_eq!(n.expected(Millis(10 * 3_600_000), &cfg), None);
        // A quiet hour with a backup's disk writes nine ticks in a hundred.
        let three = Millis(3 * 3_600_000);
        for i in 0..100 {
            n.record(three, &rates(0.01, if i < 9 { 8192 } else { 0 }), 2);
        }
        assert_eq!(n.hour(3, &cfg).class, Some(Class::Idle));
        assert_eq!(n.summary(&cfg).iter().map(|h| h.hour).collect::<Vec<_>>(), vec![3, 9]);
        // Too few samples: no class.
        let mut few = VmNeeds::default();
        for _ in 0..MIN_SAMPLES - 1 {
            few.record(nine, &rates(1.0, 0), 1);
        }
        assert_eq!(few.expected(nine, &cfg), None);
    }

    #[test]
    fn old_counts_fade() {
        let mut n = VmNeeds::default();
        for _ in 0..HALVE_AT + 10 {
            n.record(Millis(0), &rates(0.5, 0), 1);
        }
        assert!(n.hours[0].samples < HALVE_AT);
        assert_eq!(n.hours[0].cpu.iter().map(|&c| u64::from(c)).sum::<u64>(), n.hours[0].samples);
    }

    #[test]
    fn the_fastest_growth_is_remembered_whatever_the_hour_and_fades() {
        let mut n = VmNeeds::default();
        assert_eq!(n.fastest_growth(), None);
        for _ in 0..100 {
            n.record_growth(Millis(3 * 3_600_000), Bytes::ZERO);
        }
        assert_eq!(n.fastest_growth(), None, "a guest that never grew teaches nothing");
        n.record_growth(Millis(9 * 3_600_000), Bytes::from_mib(300));
        n.record_growth(Millis(3 * 3_600_000), Bytes::from_mib(2));
        assert_eq!(n.fastest_growth(), Some(Bytes::from_mib(256)), "300 MiB/s is in the bucket from 256");
        // A history from before the memory counters reads as none.
        let old: HourHistogram = serde_json::from_str(r#"{"samples":0,"cpu":[],"disk":[],"net":[]}"#).unwrap();
        assert_eq!(old.mem.len(), RATE_BUCKETS);
        // Enough quiet looks halve the one burst away.
        for _ in 0..=HALVE_AT {
            n.record_growth(Millis(9 * 3_600_000), Bytes::ZERO);
        }
        assert_eq!(n.fastest_growth(), Some(Bytes::from_mib(2)), "2 MiB/s is in the bucket from 2");
    }

    #[test]
    fn rate_buckets_are_powers_of_two() {
        assert_eq!(rate_bucket(Bytes(10)), 0);
        assert_eq!(rate_bucket(Bytes::from_kib(1)), 1);
        assert_eq!(rate_bucket(Bytes::from_mib(4)), 13);
        assert_eq!(rate_of(13), Bytes::from_mib(8));
        assert_eq!(rate_bucket(Bytes::from_gib(64)), RATE_BUCKETS - 1);
    }
}
