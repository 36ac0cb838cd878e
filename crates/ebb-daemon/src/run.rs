//! `ebb run`: lock and open the journal, bind the API socket, start the
//! agent, and stop cleanly on SIGTERM, SIGINT or SIGHUP (ebb has no live
//! reload: a restart applies a new config).

use crate::agent::{Agent, Connector};
use crate::clock::Clock;
use crate::api::{self, ApiState};
use crate::config::Config;
use crate::journal::{Journal, JournalError, JournalLock, JournalWriter};
use ebb_core::human::FieldError;
use ebb_surrogate::SurrogateError;
use ebb_surrogate::FdPlan;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use std::future::Future;
use tracing::{info, warn};

pub fn libvirt_connector() -> Connector {
    Box::new(ebb_backends::connect)
}

/// Why the agent could not start; each names what to fix, and nothing was
/// left half started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] FieldError),
    #[error(transparent)]
    Socket(#[from] api::ServeError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Services(#[from] SurrogateError),
}

pub async fn run(cfg: Config) -> Result<(), StartError> {
    run_with(cfg, libvirt_connector(), shutdown_signal()).await
}

/// The agent with any hypervisor: tests pass the sim backend or a shutdown of their own.
pub async fn run_with(cfg: Config, connect: Connector, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    run_with_clock(cfg, connect, Clock::System, shutdown).await
}

/// `run_with` on a clock of the caller's: tests pass tokio's, to run on paused time.
pub async fn run_with_clock(mut cfg: Config, connect: Connector, clock: Clock, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    // The socket first: a second agent on the same config is told another
    // serves this socket; one with its own socket, that the journal is taken.
    let gid = cfg.agent.socket_gid()?;
    let listener = api::bind(&cfg.agent.socket, gid, "agent.socket").await?;
    let _socket = api::Unbind(cfg.agent.socket.clone());
    let web = crate::web::bind(&cfg).await?;
    let _lock = JournalLock::acquire(&cfg.agent.journal)?;
    let plan = FdPlan::for_limit(raise_fd_limit());
    info!("file descriptors: {plan}");
    cfg.fd_plan = plan;
    let journal = Journal::open(&cfg.agent.journal)?;
    let keep_ms = u64::from(cfg.agent.journal_keep_days) * 86_400_000;
    if let Ok(n) = journal.prune(ebb_core::Millis(clock.now().since(ebb_core::Millis(keep_ms)))) {
        if n > 0 {
            info!("pruned {n} journal entries older than {} days", cfg.agent.journal_keep_days);
        }
    }
    // The boot reads use this connection; every write goes through the
    // writer's own, on its thread.
    let writer = JournalWriter::start(Journal::open(&cfg.agent.journal)?);
    info!("ebb {} serving its API at {}", env!("CARGO_PKG_VERSION"), cfg.agent.socket.display());
    let farm = cfg.farm.as_ref().map(|f| ebb_farm::MemberSettings::from_config(f, env!("CARGO_PKG_VERSION"))).transpose()?;
    let (mut agent, snapshot, commands) = Agent::new(cfg, &journal, writer.handle(), connect, clock)?;
    drop(journal);
    agent.serve_services()?;
    // The farm link on its own task: the tick never waits on etcd.
    let farm = farm.map(|s| ebb_farm::MemberLink::start(s, agent.farm_clients(), agent.farm_vms()));
    if let Some(link) = &farm {
        agent.use_farm_link(link);
    }
    let (stop_api, api_stopped) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = api_stopped.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let notifier = crate::notify::Notifier::from_env().map(std::sync::Arc::new);
    if let Some(n) = &notifier {
        tokio::spawn(tell_systemd(n.clone(), snapshot.clone()));
    }
    let api_state = ApiState { snapshot, journal: writer.handle(), commands };
    let web = web.map(|w| w.serve(api_state.clone(), stopped()));
    let server = tokio::spawn(api::serve(listener, api::router(api_state), stopped()));
    agent.run(shutdown).await;
    if let Some(n) = &notifier {
        n.stopping();
    }
    // A clean stop leaves the farm at once (the membership lease revoked).
    if let Some(link) = farm {
        link.leave().await;
    }
    let _ = stop_api.send(true);
    let _ = server.await;
    if let Some(web) = web {
        let _ = web.await;
    }
    // The journal's last entries ("ebb stopped") land before ebb exits.
    let _ = tokio::task::spawn_blocking(move || writer.stop()).await;
    Ok(())
}

/// systemd hears that ebb is ready (the API's socket is bound by now), then
/// each published snapshot: a status line and, with a watchdog, a ping.
async fn tell_systemd(n: std::sync::Arc<crate::notify::Notifier>, mut snapshot: tokio::sync::watch::Receiver<std::sync::Arc<crate::api_types::Snapshot>>) {
    n.ready(&snapshot.borrow_and_update());
    while snapshot.changed().await.is_ok() {
        n.ticked(&snapshot.borrow_and_update());
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the soft
/// limit in force. The surrogate's clients need descriptors (six for a
/// spliced connection), and systemd's soft default of 1024 would refuse
/// them long before the machine has to.
fn raise_fd_limit() -> u64 {
    // `None` is "unlimited": more than any split needs.
    const UNLIMITED: u64 = 1 << 20;
    let was = getrlimit(Resource::Nofile);
    let soft = was.current.unwrap_or(UNLIMITED);
    let Some(hard) = was.maximum else {
        return soft;
    };
    if soft >= hard {
        info!("file descriptors: soft limit {soft} is the hard limit already");
        return soft;
    }
    match setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: Some(hard) }) {
        Ok(()) => {
            info!("file descriptors: soft limit raised from {soft} to {hard} (the hard limit)");
            hard
        }
        Err(e) => {
            warn!("file descriptors: could not raise the soft limit {soft} to the hard limit {hard}: {e}");
            soft
        }
    }
}

/// Resolves on SIGTERM, SIGINT or SIGHUP. The signals are watched from
/// this call on, not from the future's first poll: the agent polls it only
/// between ticks, and a signal during the first tick would otherwise kill
/// ebb uncleanly. SIGHUP (a closed terminal, or an operator's reload) stops
/// cleanly too; SIGUSR1/2 mean nothing to ebb and are ignored, where by
/// default they would kill it with nothing given back.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let watch = |kind: SignalKind, name: &str| signal(kind).unwrap_or_else(|e| panic!("cannot watch {name}: {e}"));
    let mut int = watch(SignalKind::interrupt(), "SIGINT");
    let mut term = watch(SignalKind::terminate(), "SIGTERM");
    let mut hup = watch(SignalKind::hangup(), "SIGHUP");
    let mut usr1 = watch(SignalKind::user_defined1(), "SIGUSR1");
    let mut usr2 = watch(SignalKind::user_defined2(), "SIGUSR2");
    async move {
        loop {
            tokio::select! {
                _ = int.recv() => return,
                _ = term.recv() => return,
                _ = hup.recv() => return info!("SIGHUP: stopping cleanly (ebb has no live reload; start it again to apply a new config)"),
                _ = usr1.recv() => info!("SIGUSR1 ignored: ebb takes SIGTERM, SIGINT or SIGHUP to stop"),
                _ = usr2.recv() => info!("SIGUSR2 ignored: ebb takes SIGTERM, SIGINT or SIGHUP to stop"),
            }
        }
    }
}
