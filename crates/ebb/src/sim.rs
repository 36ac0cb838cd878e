//! `ebb sim`: one day of PlanetLab traces under a consolidation policy, on
//! the model of CloudSim 3.0.3 (crate ebb-sim). Prints the figures, writes
//! them as JSON and a plot of active hosts and power next to each other.

use ebb_sim::policy::Policy;
use ebb_sim::Report;
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// A day folder: one trace file per VM, nothing else.
    #[arg(long)]
    trace: PathBuf,
    /// npa, dvfs, ebb (ebb_core::consolidate), thr-mmt-T (e.g. thr-mmt-0.8), lr-mmt-S (e.g. lr-mmt-1.2), iqr-mmt-S, mad-mmt-S.
    #[arg(long)]
    policy: String,
    /// One JSON object on stdout instead of the text.
    #[arg(long)]
    json: bool,
    /// Where the results (JSON) and the plot (SVG) go.
    #[arg(long, default_value = ".")]
    out: PathBuf,
}

/// The report with what the run cost.
#[derive(Serialize)]
struct Output<'a> {
    day: String,
    #[serde(flatten)]
    report: &'a Report,
    wall_s: f64,
    peak_rss_kib: u64,
    plot: String,
}

pub fn run(args: SimArgs) -> Result<(), String> {
    let started = Instant::now();
    let policy: Policy = args.policy.parse().map_err(|e: ebb_sim::policy::UnknownPolicy| e.to_string())?;
    let traces = ebb_sim::trace::load_day(&args.trace).map_err(|e| e.to_string())?;
    let day = args
        .trace
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "day".into());
    let show_progress = std::io::stderr().is_terminal();
    let report = ebb_sim::simulate(traces, policy, &mut |done, total| {
        if show_progress && (done % 8 == 0 || done == total) {
            let width = 40;
            let filled = done * width / total;
            eprint!("\r[{}{}] {done}/{total} decisions", "#".repeat(filled), " ".repeat(width - filled));
            if done == total {
                eprintln!();
            }
        }
    });
    let wall_s = started.elapsed().as_secs_f64();
    let peak_rss_kib = peak_rss_kib();

    std::fs::create_dir_all(&args.out).map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let stem = format!("{day}-{}", report.policy);
    let plot = args.out.join(format!("{stem}.svg"));
    write_file(&plot, &plot_svg(&report, &day))?;
    let out = Output {
        day,
        report: &report,
        wall_s,
        peak_rss_kib,
        plot: plot.display().to_string(),
    };
    let mut json = serde_json::to_value(&out).map_err(|e| e.to_string())?;
    write_file(&args.out.join(format!("{stem}.json")), &json.to_string())?;
    if args.json {
        // The per-step series stays in the file: stdout gets the figures.
        if let Some(o) = json.as_object_mut() {
            o.remove("steps");
        }
        println!("{json}");
    } else {
        print!("{}", text(&out));
    }
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Peak resident memory of this process (VmHWM), KiB.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn text(o: &Output) -> String {
    let r = o.report;
    let active: Vec<usize> = r.steps.iter().map(|s| s.active_hosts).collect();
    let mean = active.iter().sum::<usize>() as f64 / active.len().max(1) as f64;
    let (min, max) = (active.iter().min().copied().unwrap_or(0), active.iter().max().copied().unwrap_or(0));
    // Mean active hosts per 4 hours: 48 decisions of 300 s.
    let by_4h: Vec<String> = r
        .steps
        .chunks(48)
        .map(|c| format!("{:.0}", c.iter().map(|s| s.active_hosts).sum::<usize>() as f64 / c.len() as f64))
        .collect();
    format!(
        "{day}, {policy}: {vms} VMs on {hosts} hosts\n\
         energy      {energy:.2} kWh\n\
         SLATAH      {slatah:.4} %\n\
         PDM         {pdm:.5} %\n\
         SLAV        {slav:.4e}\n\
         ESV         {esv:.4e}\n\
         migrations  {migrations}\n\
         active hosts  mean {mean:.0}, min {min}, max {max}; asleep (off) mean {asleep:.0}\n\
         active hosts per 4 h  {by_4h}\n\
         wall {wall:.2} s, peak memory {mib:.1} MiB\n\
         plot {plot}\n",
        day = o.day,
        policy = r.policy,
        vms = r.vms,
        hosts = r.hosts,
        energy = r.energy_kwh,
        slatah = r.slatah * 100.0,
        pdm = r.pdm * 100.0,
        slav = r.slav,
        esv = r.esv,
        migrations = r.migrations,
        asleep = r.hosts as f64 - mean,
        by_4h = by_4h.join(" "),
        wall = o.wall_s,
        mib = o.peak_rss_kib as f64 / 1024.0,
        plot = o.plot,
    )
}

/// Active hosts (left axis) and power in kW (right axis) over the day.
fn plot_svg(r: &Report, day: &str) -> String {
    let (w, h, left, right, top, bottom) = (800.0, 360.0, 60.0, 60.0, 30.0, 40.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let max_hosts = r.steps.iter().map(|s| s.active_hosts).max().unwrap_or(1).max(1) as f64;
    let max_kw = r.steps.iter().map(|s| s.power_w / 1000.0).fold(0.0, f64::max).max(0.001);
    let x = |t: f64| left + t / ebb_sim::DAY * pw;
    let line = |value: &dyn Fn(&ebb_sim::Step) -> f64, max: f64| -> String {
        r.steps
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.time_s), top + ph - value(s) / max * ph))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let hosts = line(&|s| s.active_hosts as f64, max_hosts);
    let power = line(&|s| s.power_w / 1000.0, max_kw);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\">{day}, {policy}: {energy:.2} kWh, {migrations} migrations, SLAV {slav:.3e}</text>\n\
         <rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#888\"/>\n\
         <polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{hosts}\"/>\n\
         <polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"1.5\" points=\"{power}\"/>\n\
         <text x=\"8\" y=\"{ty}\" fill=\"#1f77b4\">hosts</text>\n\
         <text x=\"{rx}\" y=\"{ty}\" fill=\"#d62728\">kW</text>\n",
        policy = r.policy,
        energy = r.energy_kwh,
        migrations = r.migrations,
        slav = r.slav,
        ty = top + 12.0,
        rx = w - right + 8.0,
    );
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let y = top + ph - f * ph;
        svg += &format!(
            "<text x=\"{}\" y=\"{y:.1}\" text-anchor=\"end\" fill=\"#1f77b4\">{:.0}</text><text x=\"{}\" y=\"{y:.1}\" fill=\"#d62728\">{:.1}</text>\n",
            left - 6.0,
            f * max_hosts,
            w - right + 6.0,
            f * max_kw
        );
    }
    for hour in (0..=24).step_by(4) {
        let xh = x(hour as f64 * 3600.0);
        svg += &format!(
            "<text x=\"{xh:.1}\" y=\"{}\" text-anchor=\"middle\">{hour} h</text>\n",
            h - bottom + 16.0
        );
    }
    svg += "</svg>\n";
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_draws_both_series_over_the_day() {
        let r = Report {
            policy: "dvfs".into(),
            vms: 2,
            hosts: 800,
            energy_kwh: 1.0,
            slatah: 0.0,
            pdm: 0.0,
            slav: 0.0,
            esv: 0.0,
            migrations: 0,
            steps: vec![
                ebb_sim::Step {
                    time_s: 300.1,
                    active_hosts: 10,
                    power_w: 1000.0,
                },
                ebb_sim::Step {
                    time_s: 86_100.1,
                    active_hosts: 5,
                    power_w: 600.0,
                },
            ],
        };
        let svg = plot_svg(&r, "day");
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        // The busiest step sits at the top of the plot area (y = 30).
        assert!(svg.contains(",30.0 "), "{svg}");
    }
}
