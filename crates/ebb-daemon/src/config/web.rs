//! `[web]`: the live web view's listener and its tokens. Off unless
//! `listen` is set.

use ebb_core::human::FieldError;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSection {
    /// A TCP address ("127.0.0.1:8740") or a unix socket's path
    /// ("/run/ebb/web.sock"); None: no web view.
    pub listen: Option<String>,
    /// A file holding the token that lets a browser look (GET only).
    pub read_token_file: Option<PathBuf>,
    /// A file holding the token that also lets it act (sleep, wake,
    /// critical, value).
    pub write_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// The tokens a request may present; neither: the listener is a unix
/// socket and its file mode decides who may connect.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct WebTokens {
    pub read: Option<String>,
    pub write: Option<String>,
}

impl std::fmt::Debug for WebTokens {
    // Never print a token (a panic message, a debug log).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebTokens {{ read: {}, write: {} }}", self.read.is_some(), self.write.is_some())
    }
}

/// Shorter tokens are guessable over a network.
const MIN_TOKEN_LEN: usize = 16;

impl WebSection {
    /// Where the view listens; None when it is off.
    pub fn listen(&self) -> Result<Option<WebListen>, FieldError> {
        let Some(text) = &self.listen else { return Ok(None) };
        if text.starts_with('/') {
            if text.len() > super::MAX_SOCKET_PATH {
                return Err(FieldError::new("web.listen", format!("web.listen = {text:?} is {} bytes long: a unix socket path holds at most {} bytes", text.len(), super::MAX_SOCKET_PATH)));
            }
            return Ok(Some(WebListen::Unix(PathBuf::from(text))));
        }
        text.parse::<SocketAddr>().map(|a| Some(WebListen::Tcp(a))).map_err(|_| {
            FieldError::new(
                "web.listen",
                format!("web.listen = {text:?} is neither an address with a port (\"127.0.0.1:8740\", \"[::1]:8740\") nor a unix socket's absolute path (\"/run/ebb/web.sock\")"),
            )
        })
    }

    /// Reads the token files. A TCP listener must have one: anyone who
    /// reaches the port could otherwise read the host and, with actions,
    /// put its VMs to sleep.
    pub fn tokens(&self) -> Result<WebTokens, FieldError> {
        let tokens = WebTokens {
            read: self.read_token_file.as_deref().map(|p| read_token(p, "web.read_token_file")).transpose()?,
            write: self.write_token_file.as_deref().map(|p| read_token(p, "web.write_token_file")).transpose()?,
        };
        if tokens.read.is_some() && tokens.read == tokens.write {
            return Err(FieldError::new("web.write_token_file", "web.read_token_file and web.write_token_file hold the same token: then every reader could act; give the write token a file of its own"));
        }
        if matches!(self.listen()?, Some(WebListen::Tcp(_))) && tokens.read.is_none() && tokens.write.is_none() {
            let addr = self.listen.as_deref().unwrap_or_default();
            return Err(FieldError::new(
                "web.listen",
                format!("web.listen = {addr:?} is a TCP address, and a TCP listener needs a token: set web.read_token_file (and web.write_token_file for the actions), e.g. a file made with `openssl rand -hex 16 > /etc/ebb/web-read.token; chmod 600 /etc/ebb/web-read.token`; or listen on a unix socket's path"),
            ));
        }
        Ok(tokens)
    }

    pub(crate) fn validate(&self) -> Result<(), FieldError> {
        if self.listen.is_none() && (self.read_token_file.is_some() || self.write_token_file.is_some()) {
            return Err(FieldError::new("web.listen", "[web] has token files but no listen: set web.listen (a TCP address or a unix socket's path) to serve the web view"));
        }
        self.tokens().map(|_| ())
    }
}

fn read_token(path: &Path, field: &str) -> Result<String, FieldError> {
    use std::os::unix::fs::PermissionsExt;
    let refuse = |why: String| Err(FieldError::new(field, format!("{field} = {}: {why}", path.display())));
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return refuse(format!("cannot be read ({e})")),
    };
    if meta.permissions().mode() & 0o004 != 0 {
        return refuse(format!("every user may read it (mode {:o}): chmod 600 it (or 640 with a group)", meta.permissions().mode() & 0o777));
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return refuse(format!("cannot be read ({e})")),
    };
    let token = text.trim();
    // Only characters that pass through a URL as they are: the page is
    // opened with ?token=, where + / # & = would change it.
    let url_safe = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    if token.len() < MIN_TOKEN_LEN || !token.bytes().all(url_safe) {
        return refuse(format!("a token is one line of at least {MIN_TOKEN_LEN} letters, digits or - . _ ~ (it travels in a URL; e.g. `openssl rand -hex 16`)"));
    }
    Ok(token.to_string())
}
