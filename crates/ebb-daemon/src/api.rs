//! The HTTP API on a unix socket (axum): status, VMs, journal, explain and
//! Prometheus metrics. It reads the agent's latest snapshot and opens the
//! journal read-side; it never blocks the agent.

use crate::agent::{Command, CommandError, ErrorKind};
use crate::api_types::{ApiError, Done, Event, Explain, Needs, Snapshot};
use crate::journal::JournalHandle;
use crate::routes;
use crate::{explain, metrics};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("another ebb is already serving {path}: stop it first, or set {field} to another path")]
    InUse { path: PathBuf, field: &'static str },
    #[error("{field} {path} exists and is {what}, not a socket: ebb never removes it; set {field} to another path")]
    NotASocket { path: PathBuf, what: &'static str, field: &'static str },
    #[error("{0} is empty: give the path of a unix socket (agent.socket's default is {default})", default = crate::config::DEFAULT_SOCKET)]
    Empty(&'static str),
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
}

#[derive(Clone)]
pub struct ApiState {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub journal: JournalHandle,
    pub commands: mpsc::Sender<Command>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(routes::STATUS, get(status))
        .route(routes::VMS, get(vms))
        .route(routes::VM, get(vm))
        .route(routes::EXPLAIN, get(explain_vm))
        .route(routes::EXPLAIN_HOST, get(explain_host))
        .route(routes::SLEEP, post(sleep_vm))
        .route(routes::WAKE, post(wake_vm))
        .route(routes::CRITICAL, post(critical_vm))
        .route(routes::VALUE, post(value_vm))
        .route(routes::NEEDS, get(needs_vm))
        .route(routes::EVENTS, get(events))
        .route(routes::CLIENTS, get(clients))
        .route(routes::HEARTBEAT, post(heartbeat))
        .route(routes::METRICS, get(metrics_text))
        .with_state(state)
}

/// The socket's mode whatever the umask: the owner (root) and the socket's
/// group may talk to the agent, nobody else.
const SOCKET_MODE: u32 = 0o660;
/// The mode of a folder ebb makes for the socket (an existing one is left as it is).
const SOCKET_DIR_MODE: u32 = 0o755;
/// A client that has not sent its request head by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; past them a client is told to come back.
/// The CLI uses one per command: this bounds memory, not users.
pub const MAX_API_CONNECTIONS: usize = 256;

/// Binds the socket with mode 0660 (group `gid` when given), replacing a
/// stale socket left by a crashed agent, but never a live one and never
/// anything that is not a socket. `field` is the config's name for it.
pub async fn bind(path: &Path, gid: Option<u32>, field: &'static str) -> Result<UnixListener, ServeError> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    if path.as_os_str().is_empty() {
        // Linux would bind an abstract socket that no file mode protects.
        return Err(ServeError::Empty(field));
    }
    let bind_err = |source| ServeError::Bind { path: path.to_owned(), source };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match tokio::net::UnixStream::connect(path).await {
            Ok(_) => return Err(ServeError::InUse { path: path.to_owned(), field }),
            // Nobody listens: a crashed agent's socket.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => std::fs::remove_file(path).map_err(bind_err)?,
            Err(e) => return Err(bind_err(e)),
        },
        Ok(meta) => return Err(ServeError::NotASocket { path: path.to_owned(), what: file_kind(&meta.file_type()), field }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(SOCKET_DIR_MODE).create(dir).map_err(bind_err)?;
    }
    // Bound under a private name, given its mode and group, then renamed
    // into place: no moment exists where the umask decides who may connect.
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let staging = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging).map_err(bind_err)?;
    let ready = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(SOCKET_MODE))
        .and_then(|()| std::os::unix::fs::chown(&staging, None, gid))
        .and_then(|()| {
            rustix::fs::renameat_with(rustix::fs::CWD, &staging, rustix::fs::CWD, path, rustix::fs::RenameFlags::NOREPLACE)
                .map_err(std::io::Error::from)
        });
    if let Err(e) = ready {
        let _ = std::fs::remove_file(&staging);
        return Err(bind_err(e));
    }
    Ok(listener)
}

fn file_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a FIFO"
    } else {
        "a device"
    }
}

/// Removes the agent's socket when dropped (a clean stop, or a start that
/// failed after the bind), if it is still a socket.
pub struct Unbind(pub PathBuf);

impl Drop for Unbind {
    fn drop(&mut self) {
        use std::os::unix::fs::FileTypeExt;
        if std::fs::symlink_metadata(&self.0).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// What the API is served on: the agent's unix socket, or the web view's
/// socket or TCP port.
pub trait Listener: Send + 'static {
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn next_connection(&self) -> impl std::future::Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Listener for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn next_connection(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn next_connection(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// Serves the API until `stop`: HTTP/1.1 with a bound on the time to send a
/// request head and on the connections served at once, so a client that
/// opens connections and sends nothing cannot hold the agent's memory or
/// descriptors.
pub async fn serve<L: Listener>(listener: L, app: Router, stop: impl std::future::Future<Output = ()>) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(Semaphore::new(MAX_API_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            r = listener.next_connection() => match r {
                Ok(stream) => stream,
                Err(e) => {
                    // Out of descriptors, most likely: the backlog keeps them.
                    warn!("the API could not accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse_busy(stream));
            continue;
        };
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
        let conn = http.serve_connection(TokioIo::new(stream), hyper_util::service::TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    // In-flight answers get a moment; a client holding its connection does not hold the stop.
    let _ = tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await;
}

async fn refuse_busy(mut stream: impl tokio::io::AsyncWrite + Unpin) {
    use tokio::io::AsyncWriteExt;
    let body = format!(r#"{{"error":"the agent serves {MAX_API_CONNECTIONS} API connections already: try again in a moment"}}"#);
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(reply.as_bytes())).await;
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
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, CommandError::UnknownVm(ebb_core::VmId::new(name)).to_string()))
}

#[derive(Deserialize)]
struct EventsQuery {
    vm: Option<String>,
    limit: Option<usize>,
}

/// Through the journal's writer, so the events include every one the agent
/// sent before this request.
async fn read_journal(journal: &JournalHandle, vm: Option<String>, limit: usize) -> ApiResult<Vec<Event>> {
    journal.call(move |j| j.events(vm.as_deref(), limit)).await.map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn events(State(s): State<ApiState>, Query(q): Query<EventsQuery>) -> ApiResult<Json<Vec<Event>>> {
    Ok(Json(read_journal(&s.journal, q.vm, q.limit.unwrap_or(50).min(10_000)).await?))
}

async fn explain_vm(State(s): State<ApiState>, UrlPath(name): UrlPath<String>) -> ApiResult<Json<Explain>> {
    let now = s.snapshot.borrow().vms.iter().find(|v| v.name == name).cloned();
    let events = read_journal(&s.journal, Some(name.clone()), 20).await?;
    if now.is_none() && events.is_empty() {
        return Err(fail(StatusCode::NOT_FOUND, format!("ebb knows nothing about a VM named {name}")));
    }
    let summary = explain::summarize(&name, now.as_ref(), &events);
    Ok(Json(Explain { vm: name, now, summary, events }))
}

/// The host's own sleep in the farm: where it stands, and its last sleeps and wakes.
async fn explain_host(State(s): State<ApiState>) -> ApiResult<Json<Explain>> {
    let status = s.snapshot.borrow().status.clone();
    let events = read_journal(&s.journal, None, 500).await?;
    let events: Vec<Event> = events.into_iter().filter(|e| e.kind.starts_with("host_")).take(20).collect();
    let summary = explain::host(&status);
    Ok(Json(Explain { vm: "the host".into(), now: None, summary, events }))
}

/// Sends a command to the agent and waits for its answer; a refusal or a
/// failure gets the status that says what happened.
async fn ask<T>(s: &ApiState, cmd: impl FnOnce(oneshot::Sender<Result<T, CommandError>>) -> Command) -> ApiResult<T> {
    let (reply, answer) = oneshot::channel();
    s.commands
        .send(cmd(reply))
        .await
        .map_err(|_| fail(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping"))?;
    match answer.await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => Err(fail(status_of(&e), e.to_string())),
        Err(_) => Err(fail(StatusCode::SERVICE_UNAVAILABLE, "the agent stopped before answering")),
    }
}

fn status_of(e: &CommandError) -> StatusCode {
    match e.kind() {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::WrongState => StatusCode::CONFLICT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn done(_: ()) -> Json<Done> {
    Json(Done { done: "done".into() })
}

async fn sleep_vm(State(s): State<ApiState>, UrlPath(name): UrlPath<String>) -> ApiResult<Json<Done>> {
    ask(&s, |reply| Command::Sleep { vm: ebb_core::VmId::new(name), reply }).await.map(done)
}

async fn wake_vm(State(s): State<ApiState>, UrlPath(name): UrlPath<String>) -> ApiResult<Json<Done>> {
    ask(&s, |reply| Command::Wake { vm: ebb_core::VmId::new(name), reply }).await.map(done)
}

async fn needs_vm(State(s): State<ApiState>, UrlPath(name): UrlPath<String>) -> ApiResult<Json<Needs>> {
    let vm = ebb_core::VmId::new(name.clone());
    let hours = ask(&s, |reply| Command::Needs { vm, reply }).await?;
    Ok(Json(Needs { vm: name, hours }))
}

/// `on` is `on` or `off`.
async fn critical_vm(State(s): State<ApiState>, UrlPath((name, on)): UrlPath<(String, String)>) -> ApiResult<Json<Done>> {
    let on = match on.as_str() {
        "on" => true,
        "off" => false,
        other => return Err(fail(StatusCode::BAD_REQUEST, format!("critical takes on or off, not {other:?}"))),
    };
    let done = ask(&s, |reply| Command::Critical { vm: ebb_core::VmId::new(name), on, reply }).await?;
    Ok(Json(Done { done }))
}

/// `value` is a whole number ≥ 0, or `clear` (back to the config's).
async fn value_vm(State(s): State<ApiState>, UrlPath((name, value)): UrlPath<(String, String)>) -> ApiResult<Json<Done>> {
    let value = crate::api_types::parse_value(&value).map_err(|e| fail(StatusCode::BAD_REQUEST, e))?;
    let done = ask(&s, |reply| Command::Value { vm: ebb_core::VmId::new(name), value, reply }).await?;
    Ok(Json(Done { done }))
}

async fn metrics_text(State(s): State<ApiState>) -> Response {
    let snap = s.snapshot.borrow().clone();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics::render(&snap)).into_response()
}

async fn clients(State(s): State<ApiState>) -> Json<Vec<crate::api_types::ClientView>> {
    Json(s.snapshot.borrow().clients.clone())
}

/// The body is read here, not by axum's `Json`, so a bad one gets a 400
/// that says what a heartbeat looks like.
async fn heartbeat(State(s): State<ApiState>, UrlPath(name): UrlPath<String>, body: axum::body::Bytes) -> ApiResult<Json<crate::api_types::ClientView>> {
    let beat: crate::api_types::Heartbeat = serde_json::from_slice(&body).map_err(|e| {
        fail(StatusCode::BAD_REQUEST, format!(r#"a heartbeat's body is JSON like {{"vm": "web", "ttl": "30s"}} (ttl optional, in seconds or with a unit): {e}"#))
    })?;
    Ok(Json(ask(&s, |reply| Command::Heartbeat { name, beat, reply }).await?))
}
