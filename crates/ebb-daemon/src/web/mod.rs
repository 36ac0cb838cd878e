//! The live web view (`[web]`): the API and a page that shows it, served
//! on a unix socket or a TCP port. The page's assets are in the binary; it
//! reads the API's own types and follows the agent over server-sent events
//! (`stream`). A TCP listener asks for a token: the read token lets a
//! browser look, the write token also lets it act.

mod farm;
mod history;
mod stream;

pub use history::{History, Sample};

use crate::api::{self, ApiState, ServeError};
use crate::api_types::ApiError;
use crate::config::{Config, WebListen, WebTokens};
use crate::run::StartError;
use crate::routes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::info;

/// What a request may do, by the token it brings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    Read,
    Write,
}

/// Decides a request's grant from its token; no token configured (a unix
/// socket, which its file mode guards) grants everything.
#[derive(Clone, Debug)]
pub struct Access {
    tokens: Arc<WebTokens>,
}

impl Access {
    pub fn new(tokens: WebTokens) -> Access {
        Access { tokens: Arc::new(tokens) }
    }

    /// No token is asked for (a unix socket).
    pub fn open(&self) -> bool {
        self.tokens.read.is_none() && self.tokens.write.is_none()
    }

    /// None: the token is missing or wrong.
    pub fn grant(&self, presented: Option<&str>) -> Option<Grant> {
        if self.open() {
            return Some(Grant::Write);
        }
        let (read, write) = (self.tokens.read.as_deref(), self.tokens.write.as_deref());
        let presented = presented?;
        if write.is_some_and(|w| same(w, presented)) {
            Some(Grant::Write)
        } else if read.is_some_and(|r| same(r, presented)) {
            Some(Grant::Read)
        } else {
            None
        }
    }
}

/// Compares in time that does not depend on where the strings differ, so
/// a token cannot be guessed a character at a time.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of a request: `Authorization: Bearer …`, or `?token=…` (an
/// EventSource cannot set headers).
fn token_of(req: &Request) -> Option<String> {
    let auth = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some((scheme, token)) = auth.and_then(|v| v.split_once(' ')) {
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(token.trim().to_string());
        }
    }
    let query = req.uri().query()?;
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
}

/// Looking needs a token; acting (any method but GET and HEAD) the write
/// token. The page and its assets hold no data of the host: they load
/// without one, and the page asks for it.
async fn check_access(State(access): State<Access>, mut req: Request, next: Next) -> Response {
    let reading = req.method() == Method::GET || req.method() == Method::HEAD;
    if reading && [routes::WEB_PAGE, routes::WEB_SCRIPT, routes::WEB_STYLE].contains(&req.uri().path()) {
        return next.run(req).await;
    }
    if !reading && cross_site(&req) {
        return refuse(StatusCode::FORBIDDEN, "a request from another site's page may not act: open the view itself to act from it");
    }
    if access.open() && !to_loopback(&req) {
        return refuse(StatusCode::FORBIDDEN, "without tokens the view answers only requests to localhost (through an SSH tunnel to its socket): set web.read_token_file to serve it under another name");
    }
    let grant = access.grant(token_of(&req).as_deref());
    match grant {
        None => refuse(StatusCode::UNAUTHORIZED, "this token is not accepted: open the view with ?token= and the read or write token (web.read_token_file, web.write_token_file)"),
        Some(Grant::Read) if !reading => refuse(StatusCode::FORBIDDEN, "this token may only look: the actions need the write token (web.write_token_file)"),
        Some(grant) => {
            req.extensions_mut().insert(grant);
            next.run(req).await
        }
    }
}

/// A browser names the page a request comes from (`Origin`): another
/// site's page may not act, or any page the operator has open could POST
/// to the view.
fn cross_site(req: &Request) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return false };
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    origin.split_once("://").map(|(_, h)| h) != Some(host)
}

/// The request names a loopback host: a page of another name that resolves
/// to 127.0.0.1 (DNS rebinding) cannot read a view that has no tokens.
fn to_loopback(req: &Request) -> bool {
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn refuse(code: StatusCode, why: &str) -> Response {
    (code, Json(ApiError { error: why.into() })).into_response()
}

/// What the page's stream reads besides the API's state.
#[derive(Clone)]
pub struct WebState {
    pub api: ApiState,
    pub history: History,
    /// The farm as etcd has it, with `[farm]`.
    pub farm: Option<watch::Receiver<farm::FarmShown>>,
}

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/ebb.js");
const STYLE: &str = include_str!("assets/ebb.css");

fn asset(kind: &'static str, body: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, kind)], body).into_response();
    // Nothing from elsewhere: the page works on a host without internet.
    r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub fn router(state: WebState, access: Access) -> Router {
    let pages = Router::new()
        .route(routes::WEB_PAGE, get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route(routes::WEB_SCRIPT, get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route(routes::WEB_STYLE, get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route(routes::STREAM, get(stream::stream))
        .with_state(state.clone());
    api::router(state.api).merge(pages).layer(axum::middleware::from_fn_with_state(access, check_access))
}

/// `[web]`'s listener, bound before the agent starts so that a taken port
/// or a bad socket path stops `ebb run` with the reason.
pub struct Bound {
    listener: Listening,
    tokens: WebTokens,
    farm: Option<ebb_core::farm::FarmConfig>,
}

enum Listening {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, api::Unbind),
}

/// None when the view is off.
pub async fn bind(cfg: &Config) -> Result<Option<Bound>, StartError> {
    let Some(listen) = cfg.web.listen()? else { return Ok(None) };
    let tokens = cfg.web.tokens()?;
    let listener = match listen {
        WebListen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { path: addr.to_string().into(), source })?;
            info!("the web view is at http://{}/ (open it with ?token=…)", listener.local_addr().unwrap_or(addr));
            Listening::Tcp(listener)
        }
        WebListen::Unix(path) => {
            let listener = api::bind(&path, cfg.agent.socket_gid()?, "web.listen").await?;
            info!("the web view is on the unix socket {}", path.display());
            Listening::Unix(listener, api::Unbind(path))
        }
    };
    Ok(Some(Bound { listener, tokens, farm: cfg.farm.clone() }))
}

impl Bound {
    /// Serves the view until `stop`; the socket (if one) is removed after.
    pub fn serve(self, api: ApiState, stop: impl Future<Output = ()> + Send + 'static) -> tokio::task::JoinHandle<()> {
        let history = History::start(api.snapshot.clone());
        let farm = self.farm.map(farm::watch);
        let app = router(WebState { api, history, farm }, Access::new(self.tokens));
        match self.listener {
            Listening::Tcp(l) => tokio::spawn(api::serve(l, app, stop)),
            Listening::Unix(l, unbind) => tokio::spawn(async move {
                api::serve(l, app, stop).await;
                drop(unbind);
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(read: Option<&str>, write: Option<&str>) -> Access {
        Access::new(WebTokens { read: read.map(Into::into), write: write.map(Into::into) })
    }

    #[test]
    fn a_token_grants_what_its_file_says_and_nothing_else_does() {
        let a = tokens(Some("read-token-0123456789"), Some("write-token-0123456789"));
        assert_eq!(a.grant(Some("read-token-0123456789")), Some(Grant::Read));
        assert_eq!(a.grant(Some("write-token-0123456789")), Some(Grant::Write));
        assert_eq!(a.grant(Some("read-token-012345678")), None);
        assert_eq!(a.grant(Some("")), None);
        assert_eq!(a.grant(None), None);
        // Without tokens (a unix socket) the socket's mode guards it.
        assert_eq!(tokens(None, None).grant(None), Some(Grant::Write));
        // A read token alone: nobody may act.
        assert_eq!(tokens(Some("read-token-0123456789"), None).grant(Some("write-token-0123456789")), None);
    }

    #[test]
    fn another_sites_page_may_not_act_and_a_view_without_tokens_answers_only_localhost() {
        let req = |host: &str, origin: Option<&str>| {
            let mut b = Request::builder().method("POST").uri("/v1/vms/a/sleep").header("host", host);
            if let Some(o) = origin {
                b = b.header("origin", o);
            }
            b.body(axum::body::Body::empty()).unwrap()
        };
        assert!(cross_site(&req("127.0.0.1:8740", Some("https://evil.example"))));
        assert!(!cross_site(&req("127.0.0.1:8740", Some("http://127.0.0.1:8740"))));
        assert!(!cross_site(&req("127.0.0.1:8740", None)), "curl sends no Origin");
        for host in ["localhost:8740", "127.0.0.1:8740", "[::1]:8740", "LOCALHOST", "127.0.0.2"] {
            assert!(to_loopback(&req(host, None)), "{host}");
        }
        for host in ["evil.example:8740", "10.0.0.5:8740", "[2001:db8::1]:80"] {
            assert!(!to_loopback(&req(host, None)), "{host}");
        }
    }

    #[test]
    fn a_token_in_the_query_is_percent_decoded() {
        let req = Request::builder().uri("/v1/stream?x=1&token=a%2Bb+c").body(axum::body::Body::empty()).unwrap();
        assert_eq!(token_of(&req).as_deref(), Some("a+b c"));
        let req = Request::builder().uri("/").header("authorization", "bearer tok").body(axum::body::Body::empty()).unwrap();
        assert_eq!(token_of(&req).as_deref(), Some("tok"));
    }
}
