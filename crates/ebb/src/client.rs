//! The CLI's side of the API: HTTP/1.1 (hyper) over the agent's unix socket.

use crate::api_types::ApiError;
use http_body_util::{BodyExt, Empty};
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
    #[error("{0}")]
    Api(String),
}

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client { socket: socket.to_owned() }
    }

    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        self.request(hyper::Method::GET, path).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let text = self.request(hyper::Method::POST, path).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    async fn request(&self, method: hyper::Method, path: &str) -> Result<String, ClientError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => ClientError::NotRunning(self.socket.clone()),
            std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(self.socket.clone()),
            _ => ClientError::Connect { path: self.socket.clone(), source: e },
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "ebb")
            .body(Empty::<Body>::new())
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| ClientError::Protocol(e.to_string()))?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| ClientError::Protocol(e.to_string()))?.to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            let msg = serde_json::from_str::<ApiError>(&text).map(|e| e.error).unwrap_or(text);
            return Err(ClientError::Api(msg));
        }
        Ok(text)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let text = self.get_text(path).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol(e.to_string()))
    }
}
