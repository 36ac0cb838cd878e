//! The `ebb` binary: the agent (`ebb run`) and the CLI that talks to it.
#![forbid(unsafe_code)]

mod cli;
mod farm;
mod sim;

use clap::{Parser, Subcommand};
use ebb_daemon::client::Client;
use ebb_daemon::config::{Config, DEFAULT_SOCKET};
use ebb_daemon::run;
use std::path::PathBuf;
use std::process::ExitCode;

/// ebb gives back what idle VMs hold on a libvirt host, and hands it back
/// the moment they need it.
#[derive(Parser)]
#[command(name = "ebb", version, about, long_about = None)]
struct Args {
    /// The agent's API socket (for the CLI commands).
    #[arg(long, global = true, env = "EBB_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: observe every domain each tick, balloon their memory, reallocate CPU, serve the API; stops cleanly on SIGTERM, SIGINT or SIGHUP.
    Run {
        /// The config file (every field is documented in ebb.example.toml).
        #[arg(long, short, default_value = "/etc/ebb/ebb.toml")]
        config: PathBuf,
    },
    /// Check a config file and print what it resolves to; exits non-zero on an error.
    Check {
        /// The config file (every field is documented in ebb.example.toml).
        #[arg(long, short, default_value = "/etc/ebb/ebb.toml")]
        config: PathBuf,
    },
    /// Check this host for what the config asks of it (libvirt, each managed guest's balloon and statistics, the guest agent for vcpus_min, the socket's and journal's folders, space for saves, cgroups, the UPS, cpufreq, descriptors): one line each with what to fix; exits non-zero when something blocks a configured feature.
    Doctor {
        /// The config file (every field is documented in ebb.example.toml).
        #[arg(long, short, default_value = "/etc/ebb/ebb.toml")]
        config: PathBuf,
    },
    /// The agent's connection, pool and counters.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Every VM: its memory, its activity class and CPU weight and cap, where each setting came from.
    Vms {
        #[arg(long)]
        json: bool,
    },
    /// Recent journal entries: actions with reason and outcome, and the agent's events.
    Events {
        /// Only this VM's entries.
        #[arg(long)]
        vm: Option<String>,
        #[arg(long, default_value_t = 30)]
        limit: usize,
        /// Then print each new entry as it is journaled (a JSON object a line with --json), until interrupted.
        #[arg(long, short)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// What ebb is doing with one VM and why, in plain words (`--host`: why the host sleeps or stays awake).
    Explain {
        #[arg(required_unless_present = "host")]
        vm: Option<String>,
        /// Explain the host's own sleep in the farm instead of a VM.
        #[arg(long, conflicts_with = "vm")]
        host: bool,
        #[arg(long)]
        json: bool,
    },
    /// Put a running VM to sleep now (save to disk, or pause, as its sleep mode says).
    Sleep { vm: String },
    /// Wake a VM that sleeps: put to sleep by ebb, or saved or paused by hand (never boots a VM shut off).
    Wake { vm: String },
    /// The host's power: its source, battery, draw, what ebb did on power events, and its CPUs and disks under device power.
    Power {
        #[arg(long)]
        json: bool,
    },
    /// The power-drop plan as it stands: which VMs keep running on the battery budget, which are saved and in what order.
    Plan {
        #[arg(long)]
        json: bool,
    },
    /// A VM's resource needs by hour of the day (UTC), from the needs history.
    Needs {
        vm: String,
        #[arg(long)]
        json: bool,
    },
    /// Mark a VM time-critical (put first: its highest CPU weight and cap) or clear it.
    Critical {
        vm: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Set a VM's value when power drops (the most valuable VMs that fit the
    /// budget keep running), over its config's; `clear` goes back to the config's.
    Value {
        vm: String,
        /// A whole number (higher: kept longer), or `clear`.
        value: String,
    },
    /// The VMs' active clients (console sessions, service clients through the surrogate, heartbeats) and their timers.
    Clients {
        #[arg(long)]
        json: bool,
    },
    /// Prometheus metrics, as the agent serves them at /metrics.
    Metrics,
    /// Shell completions on stdout, e.g. `ebb completions bash > /usr/share/bash-completion/completions/ebb`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The manual page (roff) on stdout, e.g. `ebb man > /usr/share/man/man1/ebb.1`.
    Man,
    /// Run a coordinator replica of the farm: replicas elect one leader through etcd; the leader wakes the sleeping hosts clients wait for (IPMI, Redfish, Wake-on-LAN), and with [gateway.VM] sections the replica holds those clients until their host is awake. Stops cleanly on SIGTERM, SIGINT or SIGHUP.
    Coord {
        /// The config file (every field is documented in ebb.example.toml).
        #[arg(long, short, default_value = "/etc/ebb/ebb.toml")]
        config: PathBuf,
        /// etcd's client URL (repeatable), instead of the config's [farm].
        #[arg(long)]
        etcd: Vec<String>,
        /// This replica's name in the election; default: the hostname.
        #[arg(long)]
        name: Option<String>,
    },
    /// The farm as etcd has it: each host's agent, state, VMs, active clients, wake methods and last sleep, wakes under way and hosts that could not be woken, and the coordinators' leader.
    Farm {
        /// The config file (every field is documented in ebb.example.toml).
        #[arg(long, short, default_value = "/etc/ebb/ebb.toml")]
        config: PathBuf,
        /// etcd's client URL (repeatable), instead of the config's [farm].
        #[arg(long)]
        etcd: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Simulate a day of a data centre from VM CPU traces (PlanetLab, CloudSim 3.0.3's model) under a consolidation policy: energy, SLA violations, migrations, a plot.
    Sim(sim::SimArgs),
    #[cfg(feature = "lab")]
    /// Live demo on three real guests: memory moves from idle guests to a busy one.
    Demo(ebb_lab::demo::DemoArgs),
    #[cfg(feature = "lab")]
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(ebb_lab::bench::BenchCommand),
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The demo draws its own display: the agent inside it only speaks up for trouble.
    #[cfg(feature = "lab")]
    let demo = matches!(args.command, Command::Demo(_));
    #[cfg(not(feature = "lab"))]
    let demo = false;
    let default_filter = if demo { "warn" } else { "ebb=info,warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("EBB_LOG").unwrap_or_else(|_| default_filter.into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot start the async runtime");
    match rt.block_on(dispatch(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("ebb: {}", cli::for_terminal(&msg));
            ExitCode::from(2)
        }
    }
}

async fn dispatch(args: Args) -> Result<(), String> {
    let client = Client::new(&args.socket);
    let e = |e: ebb_daemon::client::ClientError| e.to_string();
    match args.command {
        Command::Run { config } => {
            let cfg = Config::load(&config).map_err(|e| e.to_string())?;
            run::run(cfg).await.map_err(|e| e.to_string())
        }
        Command::Doctor { config } => {
            let cfg = Config::load(&config).map_err(|e| e.to_string())?;
            let findings = tokio::task::spawn_blocking(move || ebb_daemon::doctor::doctor(&cfg)).await.map_err(|e| e.to_string())?;
            for f in &findings {
                println!("{}", cli::for_terminal(&f.to_string()));
            }
            match findings.iter().filter(|f| f.verdict == ebb_daemon::doctor::Verdict::Blocks).count() {
                0 => Ok(()),
                n => Err(format!("{n} finding(s) above block what the config asks for")),
            }
        }
        Command::Check { config } => {
            let cfg = Config::load(&config).map_err(|e| e.to_string())?;
            println!("{}", cli::for_terminal(&format!("{}: ok\n{}", config.display(), cli::describe_config(&cfg))));
            // The guests are advice, not the config's validity: a libvirt
            // that is not up yet does not fail the check.
            let guests = tokio::task::spawn_blocking(move || ebb_daemon::check::unsafe_balloons(&cfg)).await.map_err(|e| e.to_string())?;
            println!("{}", cli::for_terminal(&cli::balloon_check_text(&guests)));
            Ok(())
        }
        Command::Status { json } => print_or_json(json, &client.status().await.map_err(e)?, cli::status_text),
        Command::Vms { json } => print_or_json(json, &client.vms().await.map_err(e)?, |v| cli::vms_table(v)),
        Command::Events { vm, limit, follow, json } => {
            let events = client.events(vm.as_deref(), limit).await.map_err(e)?;
            print_or_json(json, &events, |ev| cli::events_table(ev))?;
            if follow {
                follow_events(&client, vm.as_deref(), events.first().map_or(0, |ev| ev.id), json).await?;
            }
            Ok(())
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut <Args as clap::CommandFactory>::command(), "ebb", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let page = clap_mangen::Man::new(<Args as clap::CommandFactory>::command());
            page.render(&mut std::io::stdout()).map_err(|e| format!("cannot write the manual page: {e}"))
        }
        Command::Explain { vm: Some(vm), json, .. } => print_or_json(json, &client.explain(&vm).await.map_err(e)?, cli::explain_text),
        Command::Explain { vm: None, json, .. } => print_or_json(json, &client.explain_host().await.map_err(e)?, cli::explain_text),
        Command::Sleep { vm } => {
            let d = client.sleep(&vm).await.map_err(e)?;
            println!("{}", cli::for_terminal(&format!("{vm}: asleep ({})", d.done)));
            Ok(())
        }
        Command::Wake { vm } => {
            let d = client.wake(&vm).await.map_err(e)?;
            println!("{}", cli::for_terminal(&format!("{vm}: awake ({})", d.done)));
            Ok(())
        }
        Command::Power { json } => print_or_json(json, &client.status().await.map_err(e)?.power, cli::power_text),
        Command::Plan { json } => {
            let plan = client.status().await.map_err(e)?.power.and_then(|p| p.plan);
            print_or_json(json, &plan, cli::plan_text)
        }
        Command::Needs { vm, json } => print_or_json(json, &client.needs(&vm).await.map_err(e)?, cli::needs_table),
        Command::Critical { vm, state } => {
            let d = client.critical(&vm, state == "on").await.map_err(e)?;
            println!("{}", cli::for_terminal(&d.done));
            Ok(())
        }
        Command::Value { vm, value } => {
            let d = client.value(&vm, ebb_daemon::api_types::parse_value(&value)?).await.map_err(e)?;
            println!("{}", cli::for_terminal(&d.done));
            Ok(())
        }
        Command::Clients { json } => print_or_json(json, &client.clients().await.map_err(e)?, |c| cli::clients_table(c)),
        Command::Metrics => {
            print!("{}", cli::for_terminal(&client.metrics().await.map_err(e)?));
            Ok(())
        }
        Command::Coord { config, etcd, name } => farm::coord(&config, etcd, name).await,
        Command::Farm { config, etcd, json } => print_or_json(json, &farm::view(&farm::settings(&config, etcd)?).await?, farm::farm_text),
        Command::Sim(a) => sim::run(a),
        #[cfg(feature = "lab")]
        Command::Demo(a) => ebb_lab::demo::run(a).await,
        #[cfg(feature = "lab")]
        Command::Bench(b) => ebb_lab::bench::run(b).await,
    }
}

fn print_or_json<T: serde::Serialize>(json: bool, value: &T, text: impl Fn(&T) -> String) -> Result<(), String> {
    if json {
        println!("{}", serde_json::to_string_pretty(value).map_err(|e| e.to_string())?);
    } else {
        print!("{}", cli::for_terminal(&text(value)));
    }
    Ok(())
}

/// Prints the journal's entries after `last` as they come, a poll a second
/// (the journal's newest first; a poll reads more than a second can add).
async fn follow_events(client: &Client, vm: Option<&str>, mut last: i64, json: bool) -> Result<(), String> {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let events = client.events(vm, 500).await.map_err(|e| e.to_string())?;
        let since = last;
        for ev in events.iter().rev().filter(|ev| ev.id > since) {
            let line = if json { serde_json::to_string(ev).map_err(|e| e.to_string())? } else { cli::for_terminal(&cli::event_line(ev)).into_owned() };
            println!("{line}");
            last = ev.id;
        }
    }
}
