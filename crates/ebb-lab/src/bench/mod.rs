//! `ebb bench`: benchmarks that print figures, each beside a baseline
//! measured in the same run. No thresholds are asserted: the targets are
//! printed next to the figures for a person to read.
//!
//! One file per benchmark: `overhead`, `reclaim`, `burst`, `power`, `realloc`,
//! `farm` (a wake through the coordinator's gateway, the coordinator at
//! scale), `surrogate` (wake latency, a crowd at a sleeping VM) with `awake` (the
//! awake paths' cost), `net_crowd` (a crowd on the lab's network), and `sim`
//! (`ebb sim` on the PlanetLab days against CloudSim's figures).

mod awake;
mod burst;
mod farm;
mod net_crowd;
mod overhead;
mod power;
mod realloc;
mod reclaim;
mod sim;
mod surrogate;

use std::path::Path;
use std::time::{Duration, Instant};

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// CPU share and peak RSS of `ebb run` watching many libvirt test-driver domains.
    Overhead {
        #[arg(long, default_value_t = 100)]
        domains: usize,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(long, default_value = "2s")]
        tick: String,
    },
    /// The surrogate on a real guest. Wake latency: a request to the sleeping
    /// VM through ebb, against starting the same managed save by hand and
    /// asking the service directly. Awake, on both awake paths (ebb's splice
    /// and the kernel path's nftables DNAT): bulk throughput, the request
    /// rate of 50 concurrent clients and small-request p99 through ebb
    /// against the host forward directly. 200 clients at once, through ebb
    /// to the sleeping VM and directly to the awake one. Then a crowd
    /// (`--crowd` clients at once) at a guest on a real network path (a tap
    /// in the lab's network namespace): through ebb to the sleeping VM, and
    /// straight at the awake one (0 skips it).
    Surrogate {
        #[arg(long, default_value = "qemu:///system")]
        uri: String,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 10_000)]
        crowd: usize,
    },
    /// Reallocation's benefit on real guests: a cpu-bound guest counts the
    /// rounds of a fixed computation it gets through per minute, with ebb
    /// against static weights, same run: capped at 30 % of a CPU (cpu_cap_max
    /// 1.0) beside an idle and a busy neighbour, then uncapped and pinned to
    /// one CPU with the busy neighbour (cpus = "0-1").
    Realloc {
        #[arg(long, default_value = "qemu:///system")]
        uri: String,
        /// Length of each measured window.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Power events on real guests and a real upsd (dummy-ups): the time from
    /// the UPS reporting low battery to the last of 3 guests saved, and from
    /// mains power back to all restored.
    Power {
        #[arg(long, default_value = "qemu:///system")]
        uri: String,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Reclaim on real guests: ebb's adaptive step against a one-shot setmem,
    /// for an idle guest (time) and a guest under memory load (oom kills).
    Reclaim {
        #[arg(long, default_value = "qemu:///system")]
        uri: String,
    },
    /// A burst faster than any tick on real guests: 300 MiB in one write on
    /// a guest at its share of a 700 MiB pool, beside an idle one, with
    /// deflate-on-OOM, on a stock balloon, and on a stock balloon with the
    /// learned headroom: time to the pool restored, balloon moves, OOM
    /// kills, probes answered.
    Burst {
        #[arg(long, default_value = "qemu:///system")]
        uri: String,
    },
    /// The farm on a real etcd with the real `ebb coord` and `ebb run`: a
    /// request through the coordinator's gateway to a VM whose host sleeps
    /// (its sleep recorded), against the same request straight to the
    /// service; a wake by each method on the lab's farm (network
    /// namespaces); then `hosts` × `clients` simulated agents' keys in etcd:
    /// the leader's read of the farm, its reaction to a sleeping host's
    /// client, and the writes the farm costs etcd.
    Farm {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 1000)]
        hosts: usize,
        #[arg(long, default_value_t = 20)]
        clients: usize,
        /// Rounds of a wake by each method (Wake-on-LAN, IPMI, Redfish) on
        /// the lab's farm of three hosts in network namespaces; 0: none.
        #[arg(long, default_value_t = 3)]
        lab_rounds: usize,
    },
    /// `ebb sim` on each PlanetLab day with each policy, one process per
    /// run: energy, SLAV and migrations against CloudSim 3.0.3's, and wall
    /// time and peak memory against CloudSim's on this kind of machine.
    Sim {
        /// The folder of day folders.
        #[arg(long, default_value = "../shared/planetlab")]
        traces: std::path::PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "20110303,20110306,20110309,20110322,20110325")]
        days: Vec<String>,
        #[arg(long, value_delimiter = ',', default_value = "npa,dvfs,thr-mmt-0.8,lr-mmt-1.2,ebb")]
        policies: Vec<String>,
    },
}

pub async fn run(cmd: BenchCommand) -> Result<(), String> {
    match cmd {
        BenchCommand::Overhead { domains, seconds, tick } => overhead::overhead(domains, seconds, &tick),
        BenchCommand::Reclaim { uri } => reclaim::reclaim(&uri).await,
        BenchCommand::Burst { uri } => burst::burst(&uri).await,
        BenchCommand::Farm { rounds, hosts, clients, lab_rounds } => farm::farm(rounds, hosts, clients, lab_rounds).await,
        BenchCommand::Realloc { uri, seconds } => realloc::realloc(&uri, seconds).await,
        BenchCommand::Power { uri, rounds } => power::power(&uri, rounds).await,
        BenchCommand::Sim { traces, days, policies } => sim::sim(&traces, &days, &policies),
        BenchCommand::Surrogate { uri, rounds, crowd } => {
            surrogate::surrogate(&uri, rounds).await?;
            match crowd {
                0 => Ok(()),
                n => net_crowd::surrogate_crowd(n).await,
            }
        }
    }
}

/// Starts `ebb run --config config` through `cmd` (this binary, or a
/// wrapper that runs it), quiet: the benches print their own figures.
fn spawn_ebb_run(mut cmd: std::process::Command, config: &Path) -> std::io::Result<std::process::Child> {
    cmd.args(["run", "--config"])
        .arg(config)
        .env("EBB_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
}

fn wait_path(p: &Path, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !p.exists() {
        if Instant::now() > deadline {
            return Err(format!("{} did not appear", p.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}
