//! Host CPUs as the policies and the edges name them: a set of CPUs in
//! libvirt's list form, and one CPU's cumulative time. A model type, not a
//! policy: `Action::SetPins` carries `CpuSet`s, so it sits below both the
//! model and the affinity policy (which once held it, and tied them in a cycle).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Linux's largest CPU count (NR_CPUS with x86-64's MAXSMP, and powerpc's):
/// no host has a CPU numbered this or above.
pub const MAX_CPUS: u32 = 8192;

/// A set of host CPUs, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CpuSet(Vec<u32>);

impl CpuSet {
    pub fn new(cpus: impl IntoIterator<Item = u32>) -> CpuSet {
        let mut v: Vec<u32> = cpus.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        CpuSet(v)
    }

    /// libvirt's and taskset's list form: "0-3,6". CPU numbers stop below
    /// `MAX_CPUS`, and the set is built in a bitmap of that size, so no text
    /// ("0-4294967295", or one range repeated) allocates more than it.
    pub fn parse(text: &str) -> Result<CpuSet, String> {
        let mut on = vec![false; MAX_CPUS as usize];
        for part in text.split(',').map(str::trim) {
            let num = |s: &str| {
                let n = s.trim().parse::<u32>().map_err(|_| format!("{text:?} is not a CPU list like \"0-3,6\""))?;
                if n >= MAX_CPUS {
                    return Err(format!("{text:?} names CPU {n}: CPU numbers stop at {}, Linux's largest CPU count", MAX_CPUS - 1));
                }
                Ok(n as usize)
            };
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(format!("{text:?}: the range {a}-{b} runs backwards"));
                    }
                    on[a..=b].fill(true);
                }
                None => on[num(part)?] = true,
            }
        }
        Ok(CpuSet((0..MAX_CPUS).filter(|&c| on[c as usize]).collect()))
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    pub fn contains(&self, cpu: u32) -> bool {
        self.0.binary_search(&cpu).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every CPU of any of `sets`.
    pub fn union<'a>(sets: impl IntoIterator<Item = &'a CpuSet>) -> CpuSet {
        CpuSet::new(sets.into_iter().flat_map(|s| s.iter()))
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if end > start {
                write!(f, "{start}-{end}")?;
            } else {
                write!(f, "{start}")?;
            }
            i += 1;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// One host CPU's cumulative time, busy and in all (libvirt's node CPU stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCpuTime {
    pub busy_ns: u64,
    pub total_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_and_print() {
        assert_eq!(CpuSet::parse("0-3,6").unwrap().to_string(), "0-3,6");
        assert_eq!(CpuSet::parse("5,1,2").unwrap().to_string(), "1-2,5");
        assert!(CpuSet::parse("3-1").unwrap_err().contains("backwards"));
        assert!(CpuSet::parse("a").unwrap_err().contains("CPU list"));
        assert_eq!(CpuSet::default().to_string(), "none");
    }

    #[test]
    fn cpu_numbers_past_linux_s_largest_are_refused_before_any_allocation() {
        for text in ["0-4294967295", "0-99999999", "8192", "1,9000-9001"] {
            let e = CpuSet::parse(text).unwrap_err();
            assert!(e.contains("CPU numbers stop at 8191"), "{text}: {e}");
        }
        assert_eq!(CpuSet::parse("0-8191").unwrap().len(), 8192);
        // One range repeated costs no more than the bitmap.
        let repeated = vec!["0-8191"; 1000].join(",");
        assert_eq!(CpuSet::parse(&repeated).unwrap().len(), 8192);
    }
}
