//! The CLI's side of the API: HTTP/1.1 (hyper) over the agent's unix socket.

use crate::api_types::{ApiError, ClientView, Done, Event, Explain, Heartbeat, Needs, Status, VmInfo};
use crate::routes::{self, fill};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes as Body;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no ebb agent answers at {0}: start one with `ebb run --config ebb.toml`, or point --socket at its socket")]
    NotRunning(PathBuf),
    #[error("permission denied on the agent's socket {0}: run as root, or as a member of the group agent.socket_group names")]
    PermissionDenied(PathBuf),
    #[error("cannot reach the agent at {path}: {source}")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("the agent's answer could not be read: {0}")]
    Protocol(String),
    /// The agent answered with an error: its HTTP status and its words.
    #[error("{message}")]
    Api { status: u16, message: String },
}

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client { socket: socket.to_owned() }
    }

    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        self.request(hyper::Method::GET, path, None).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let text = self.request(hyper::Method::POST, path, None).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// POSTs `body` as JSON.
    pub async fn post_json<T: DeserializeOwned>(&self, path: &str, body: &impl serde::Serialize) -> Result<T, ClientError> {
        let body = serde_json::to_string(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let text = self.request(hyper::Method::POST, path, Some(body)).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    async fn request(&self, method: hyper::Method, path: &str, json: Option<String>) -> Result<String, ClientError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => ClientError::NotRunning(self.socket.clone()),
            std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(self.socket.clone()),
            _ => ClientError::Connect { path: self.socket.clone(), source: e },
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder().method(method).uri(path).header(hyper::header::HOST, "ebb");
        if json.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Body::from(json.unwrap_or_default())))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| ClientError::Protocol(e.to_string()))?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| ClientError::Protocol(e.to_string()))?.to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            let message = serde_json::from_str::<ApiError>(&text).map(|e| e.error).unwrap_or(text);
            return Err(ClientError::Api { status: status.as_u16(), message });
        }
        Ok(text)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let text = self.get_text(path).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    pub async fn status(&self) -> Result<Status, ClientError> {
        self.get(routes::STATUS).await
    }

    pub async fn vms(&self) -> Result<Vec<VmInfo>, ClientError> {
        self.get(routes::VMS).await
    }

    pub async fn vm(&self, name: &str) -> Result<VmInfo, ClientError> {
        self.get(&fill(routes::VM, &[name])).await
    }

    /// The journal's latest `limit` entries, of one VM or of all.
    pub async fn events(&self, vm: Option<&str>, limit: usize) -> Result<Vec<Event>, ClientError> {
        let mut path = format!("{}?limit={limit}", routes::EVENTS);
        if let Some(vm) = vm {
            path.push_str(&format!("&vm={}", routes::url_encode(vm)));
        }
        self.get(&path).await
    }

    pub async fn explain(&self, name: &str) -> Result<Explain, ClientError> {
        self.get(&fill(routes::EXPLAIN, &[name])).await
    }

    pub async fn explain_host(&self) -> Result<Explain, ClientError> {
        self.get(routes::EXPLAIN_HOST).await
    }

    pub async fn needs(&self, name: &str) -> Result<Needs, ClientError> {
        self.get(&fill(routes::NEEDS, &[name])).await
    }

    pub async fn sleep(&self, name: &str) -> Result<Done, ClientError> {
        self.post(&fill(routes::SLEEP, &[name])).await
    }

    pub async fn wake(&self, name: &str) -> Result<Done, ClientError> {
        self.post(&fill(routes::WAKE, &[name])).await
    }

    pub async fn critical(&self, name: &str, on: bool) -> Result<Done, ClientError> {
        self.post(&fill(routes::CRITICAL, &[name, if on { "on" } else { "off" }])).await
    }

    /// Sets a VM's value for power drops, or clears it (`None`).
    pub async fn value(&self, name: &str, value: Option<u32>) -> Result<Done, ClientError> {
        let value = value.map_or("clear".to_string(), |v| v.to_string());
        self.post(&fill(routes::VALUE, &[name, &value])).await
    }

    /// The VMs' active clients.
    pub async fn clients(&self) -> Result<Vec<ClientView>, ClientError> {
        self.get(routes::CLIENTS).await
    }

    /// A client agent's heartbeat: `name` is active on `beat.vm` for its TTL.
    pub async fn heartbeat(&self, name: &str, beat: &Heartbeat) -> Result<ClientView, ClientError> {
        self.post_json(&fill(routes::HEARTBEAT, &[name]), beat).await
    }

    pub async fn metrics(&self) -> Result<String, ClientError> {
        self.get_text(routes::METRICS).await
    }
}
