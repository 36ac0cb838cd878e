//! `ebb run`: open the journal, bind the API socket, start the agent, and
//! stop cleanly on SIGINT or SIGTERM.

use crate::agent::{self, Agent, Connector};
use crate::api::{self, ApiState};
use crate::config::Config;
use crate::journal::Journal;
use ebb_backends::libvirt::LibvirtHypervisor;
use ebb_backends::Hypervisor;
use std::future::Future;
use tracing::info;

pub fn libvirt_connector() -> Connector {
    Box::new(|uri| LibvirtHypervisor::connect(uri).map(|h| Box::new(h) as Box<dyn Hypervisor>))
}

pub async fn run(cfg: Config) -> Result<(), String> {
    run_with(cfg, libvirt_connector(), shutdown_signal()).await
}

/// The agent with any hypervisor: tests pass the sim backend or a shutdown of their own.
pub async fn run_with(cfg: Config, connect: Connector, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let journal = Journal::open(&cfg.agent.journal).map_err(|e| e.to_string())?;
    let keep_ms = u64::from(cfg.agent.journal_keep_days) * 86_400_000;
    if let Ok(n) = journal.prune(ebb_core::Millis(agent::now().since(ebb_core::Millis(keep_ms)))) {
        if n > 0 {
            info!("pruned {n} journal entries older than {} days", cfg.agent.journal_keep_days);
        }
    }
    let listener = api::bind(&cfg.agent.socket).await.map_err(|e| e.to_string())?;
    let socket = cfg.agent.socket.clone();
    let journal_path = cfg.agent.journal.clone();
    info!("ebb {} serving its API at {}", env!("CARGO_PKG_VERSION"), socket.display());
    let (mut agent, snapshot, commands) = Agent::new(cfg, journal, connect);
    agent.serve_services()?;
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let app = api::router(ApiState { snapshot, journal: journal_path, commands });
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = api_stopped.await;
            })
            .await
    });
    agent.run(shutdown).await;
    let _ = stop_api.send(());
    let _ = server.await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. Both are watched from this call on, not
/// from the future's first poll: the agent polls it only between ticks, and
/// a signal during the first tick would otherwise kill ebb uncleanly.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).expect("cannot watch SIGINT");
    let mut term = signal(SignalKind::terminate()).expect("cannot watch SIGTERM");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}
