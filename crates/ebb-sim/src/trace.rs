//! PlanetLab CPU traces: one file per VM, 288 integer percentages at 300 s
//! steps. VMs are numbered by sorted file name (byte order), which is what
//! the reference figures use: CloudSim itself takes readdir order.

use std::path::{Path, PathBuf};

/// Samples per file (24 h at 300 s).
pub const SAMPLES: usize = 288;
/// Seconds between samples.
pub const SAMPLE_SECONDS: f64 = 300.0;

/// One VM's CPU demand over the day, as fractions of its MIPS.
#[derive(Debug, Clone)]
pub struct Trace {
    pub name: String,
    /// 289 points: the 288 samples and the last one repeated, as
    /// `UtilizationModelPlanetLabInMemory` holds them.
    points: Vec<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a trace file (a day folder holds only trace files, one per VM)")]
    NotAFile { path: PathBuf },
    #[error("{path}:{line}: {problem}")]
    Bad { path: PathBuf, line: usize, problem: String },
    #[error("{path}: no trace files")]
    Empty { path: PathBuf },
}

impl Trace {
    /// A trace from its samples (percent), as a file holds them.
    pub fn from_percent(name: &str, samples: &[u32]) -> Trace {
        let mut points: Vec<f64> = samples.iter().map(|&p| p as f64 / 100.0).collect();
        points.push(*points.last().unwrap_or(&0.0));
        Trace {
            name: name.to_string(),
            points,
        }
    }

    /// Parses one file's text: exactly 288 lines, an integer 0–100 each.
    pub fn parse(path: &Path, text: &str) -> Result<Trace, TraceError> {
        let bad = |line: usize, problem: String| TraceError::Bad {
            path: path.to_path_buf(),
            line,
            problem,
        };
        let mut samples = Vec::with_capacity(SAMPLES);
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if n > SAMPLES {
                return Err(bad(n, format!("more than {SAMPLES} lines")));
            }
            let value: u32 = line
                .trim()
                .parse()
                .map_err(|_| bad(n, format!("{:?} is not a whole percentage", line)))?;
            if value > 100 {
                return Err(bad(n, format!("{value} is over 100 %")));
            }
            samples.push(value);
        }
        if samples.len() < SAMPLES {
            return Err(bad(samples.len() + 1, format!("{} lines, a day has {SAMPLES}", samples.len())));
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Trace::from_percent(&name, &samples))
    }

    /// Demand at `time` seconds: linear between the 300 s samples, as
    /// `UtilizationModelPlanetLabInMemory.getUtilization` computes it.
    pub fn utilization(&self, time: f64) -> f64 {
        if time % SAMPLE_SECONDS == 0.0 {
            return self.points[(time as i64 / SAMPLE_SECONDS as i64) as usize];
        }
        // floor and ceil of a non-negative value, without libm's calls.
        let steps = time / SAMPLE_SECONDS;
        let i1 = steps as usize;
        let i2 = (i1 + usize::from(steps > i1 as f64)).min(self.points.len() - 1);
        let (u1, u2) = (self.points[i1], self.points[i2]);
        let delta = (u2 - u1) / ((i2 as f64 - i1 as f64) * SAMPLE_SECONDS);
        u1 + delta * (time - i1 as f64 * SAMPLE_SECONDS)
    }
}

/// Every file of a day folder, sorted by name. Anything else in the folder
/// (a subfolder, a bad file) is an error naming it.
pub fn load_day(dir: &Path) -> Result<Vec<Trace>, TraceError> {
    let io = |path: &Path, source| TraceError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let path = entry.path();
        if !std::fs::metadata(&path).map_err(|e| io(&path, e))?.is_file() {
            return Err(TraceError::NotAFile { path });
        }
        paths.push(path);
    }
    if paths.is_empty() {
        return Err(TraceError::Empty { path: dir.to_path_buf() });
    }
    // Byte order of the names, = Java's File.compareTo for these ASCII names.
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|e| io(p, e))?;
            Trace::parse(p, &text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day_text(first: &[u32]) -> String {
        let mut v: Vec<String> = first.iter().map(|x| x.to_string()).collect();
        v.resize(SAMPLES, "0".into());
        v.join("\n") + "\n"
    }

    #[test]
    fn demand_is_linear_between_samples_and_the_last_sample_holds() {
        let mut samples = vec![10, 40];
        samples.resize(SAMPLES, 0);
        samples[SAMPLES - 1] = 70;
        let t = Trace::from_percent("vm", &samples);
        assert_eq!(t.utilization(0.0), 0.10);
        assert!((t.utilization(150.0) - 0.25).abs() < 1e-12);
        assert!((t.utilization(300.1) - (0.40 - 0.40 * 0.1 / 300.0)).abs() < 1e-12);
        // After the last sample (287 × 300 s) the trace holds its value.
        assert!((t.utilization(86_200.0) - 0.70).abs() < 1e-12);
    }

    #[test]
    fn files_load_in_sorted_name_order() {
        let dir = tempfile::tempdir().unwrap();
        for (name, first) in [("b_vm", 20), ("a_vm", 10), ("C_vm", 30)] {
            std::fs::write(dir.path().join(name), day_text(&[first])).unwrap();
        }
        let names: Vec<String> = load_day(dir.path()).unwrap().into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["C_vm", "a_vm", "b_vm"]);
    }

    #[test]
    fn a_bad_trace_is_named_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = day_text(&[5, 6]);
        text = text.replacen("6\n", "six\n", 1);
        std::fs::write(dir.path().join("vm1"), text).unwrap();
        let err = load_day(dir.path()).unwrap_err().to_string();
        assert!(err.ends_with("vm1:2: \"six\" is not a whole percentage"), "{err}");

        std::fs::write(dir.path().join("vm1"), "1\n2\n").unwrap();
        let err = load_day(dir.path()).unwrap_err().to_string();
        assert!(err.ends_with("vm1:3: 2 lines, a day has 288"), "{err}");
    }

    #[test]
    fn a_folder_with_other_entries_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vm1"), day_text(&[5])).unwrap();
        std::fs::create_dir(dir.path().join("results")).unwrap();
        let err = load_day(dir.path()).unwrap_err().to_string();
        assert!(err.contains("results: not a trace file"), "{err}");
    }
}
