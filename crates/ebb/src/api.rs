//! The HTTP API on a unix socket (axum): status, VMs, journal, explain and
//! Prometheus metrics. It reads the agent's latest snapshot and opens the
//! journal read-side; it never blocks the agent.

use crate::agent::Command;
use crate::api_types::{ApiError, Done, Event, Explain, Needs, Snapshot};
use crate::journal::Journal;
use crate::{explain, metrics};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("another ebb is already serving {0}: stop it first, or set agent.socket to another path")]
    InUse(PathBuf),
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
}

#[derive(Clone)]
pub struct ApiState {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub journal: PathBuf,
    pub commands: mpsc::Sender<Command>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/vms", get(vms))
        .route("/v1/vms/{name}", get(vm))
        .route("/v1/vms/{name}/explain", get(explain_vm))
        .route("/v1/vms/{name}/sleep", post(sleep_vm))
        .route("/v1/vms/{name}/wake", post(wake_vm))
        .route("/v1/vms/{name}/critical/{on}", post(critical_vm))
        .route("/v1/vms/{name}/value/{value}", post(value_vm))
        .route("/v1/vms/{name}/needs", get(needs_vm))
        .route("/v1/events", get(events))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

/// Binds the socket, replacing a stale one left by a crashed agent but
/// never one a live agent still serves.
pub async fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ServeError::InUse(path.to_owned()));
        }
        let _ = std::fs::remove_file(path);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ServeError::Bind { path: path.to_owned(), source })?;
    }
    UnixListener::bind(path).map_err(|source| ServeError::Bind { path: path.to_owned(), source })
}

type ApiResult<T> = Result<T, (StatusCode, Json<ApiError>)>;

fn fail(code: StatusCode, error: impl Into<String>) -> (StatusCode, Json<ApiError>) {
    (code, Json(ApiError { error: error.into() }))
}

async fn status(State(s): State<ApiState>) -> Json<crate::api_types::Status> {
    Json(s.snapshot.borrow().status.clone())
}

async fn vms(State(s): State<ApiState>) -> Json<Vec<crate::api_types::VmInfo>> {
    Json(s.snapshot.borrow().vms.clone())
}

async fn vm(State(s): State<ApiState>, UrlPath(name): UrlPath<String>) -> ApiResult<Json<crate::api_types::VmInfo>> {
    let snap = s.snapshot.borrow().clone();
    snap.vms
        .iter()
        .find(|v| v.name == name)
        .cloned()
        .map(Json)
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, format!("no VM named {name} on this host")))
}

#[derive(Deserialize)]
struct EventsQuery {
    vm: Option<String>,
    limit: Option<usize>,
}

async fn read_journal(path: PathBuf, vm: Option<String>, limit: usize) -> ApiResult<Vec<Event>> {
    tokio::task::spawn_blocking(move || Journal::open(&path).and_then(|j| j.events(vm.as_deref(), limit)))
        .await
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn events(State(s): State<ApiState>, Query(q): Query<EventsQuery>) -> ApiResult<Json<Vec<Event>>> {
    Ok(Json(read_journal(s.journal.clone(), q.vm, q.limit.unwrap_or(50).min(10_000)).await?))
}

async fn explain_vm(State(s): State<ApiState>, UrlPath(name): UrlPath<String>) -> ApiResult<Json<Explain>> {
    let now = s.snapshot.borrow().vms.iter().find(|v| v.name == name).cloned();
    let events = read_journal(s.journal.clone(), Some(name.clone()), 20).await?;
    if now.is_none() && events.is_empty() {
        return Err(fail(StatusCode::NOT_FOUND, format!("ebb knows nothing about a VM named {name}")));
    }
    let summary = explain::summarize(&name, now.as_ref(), &events);
    Ok(Json(Explain { vm: name, now, summary, events }))
}

async fn ask(s: &ApiState, cmd: impl FnOnce(oneshot::Sender<Result<String, String>>) -> Command) -> ApiResult<Json<Done>> {
    let (reply, answer) = oneshot::channel();
    s.commands
        .send(cmd(reply))
        .await
        .map_err(|_| fail(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping"))?;
    match answer.await {
        Ok(Ok(done)) => Ok(Json(Done { done })),
        Ok(Err(e)) => Err(fail(StatusCode::CONFLICT, e)),
        Err(_) => Err(fail(StatusCode::SERVICE_UNAVAILABLE, "the agent stopped before answering")),
    }
}

async fn sleep_vm(State(s): State<ApiState>, UrlPath(name): UrlPath<String>) -> ApiResult<Json<Done>> {
    ask(&s, |reply| Command::Sleep { vm: ebb_core::VmId::new(name), reply }).await
}

async fn wake_vm(State(s): State<ApiState>, UrlPath(name): UrlPath<String>) -> ApiResult<Json<Done>> {
    ask(&s, |reply| Command::Wake { vm: ebb_core::VmId::new(name), reply }).await
}

async fn needs_vm(State(s): State<ApiState>, UrlPath(name): UrlPath<String>) -> ApiResult<Json<Needs>> {
    let (reply, answer) = oneshot::channel();
    let vm = ebb_core::VmId::new(name.clone());
    s.commands
        .send(Command::Needs { vm, reply })
        .await
        .map_err(|_| fail(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping"))?;
    match answer.await {
        Ok(Ok(hours)) => Ok(Json(Needs { vm: name, hours })),
        Ok(Err(e)) => Err(fail(StatusCode::NOT_FOUND, e)),
        Err(_) => Err(fail(StatusCode::SERVICE_UNAVAILABLE, "the agent stopped before answering")),
    }
}

/// `on` is `on` or `off`.
async fn critical_vm(State(s): State<ApiState>, UrlPath((name, on)): UrlPath<(String, String)>) -> ApiResult<Json<Done>> {
    let on = match on.as_str() {
        "on" => true,
        "off" => false,
        other => return Err(fail(StatusCode::BAD_REQUEST, format!("critical takes on or off, not {other:?}"))),
    };
    ask(&s, |reply| Command::Critical { vm: ebb_core::VmId::new(name), on, reply }).await
}

/// `value` is a whole number ≥ 0, or `clear` (back to the config's).
async fn value_vm(State(s): State<ApiState>, UrlPath((name, value)): UrlPath<(String, String)>) -> ApiResult<Json<Done>> {
    let value = match value.as_str() {
        "clear" => None,
        v => Some(v.parse::<u32>().map_err(|_| fail(StatusCode::BAD_REQUEST, format!("a value is a whole number from 0 to {}, or clear; not {v:?}", u32::MAX)))?),
    };
    ask(&s, |reply| Command::Value { vm: ebb_core::VmId::new(name), value, reply }).await
}

async fn metrics_text(State(s): State<ApiState>) -> Response {
    let snap = s.snapshot.borrow().clone();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics::render(&snap)).into_response()
}
