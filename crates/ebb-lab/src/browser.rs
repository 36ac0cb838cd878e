//! A small headless-Chromium driver for tests, over the Chrome DevTools
//! Protocol (CDP), so a test can load a live web view in a real browser and
//! look at it: Debian's `chromium` package, no node.
//!
//! Blocking and single-threaded: one websocket to the browser, pages as
//! flattened sessions on it. Replies and events arrive interleaved; while a
//! call waits for its reply the events it reads are filed by session (the
//! few a page waits on are queued, console errors are collected). Every read
//! has a deadline, so a test fails with what it was doing instead of hanging.
//! Chromium runs in its own process group, killed with the [`Browser`] even
//! when a test panics, and by the kernel if the test process is killed.
//! `EBB_CDP_TRACE=1` prints every message to stderr.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, ErrorKind};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// How long chromium may take to print its DevTools address.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one protocol call, or a page's load, may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("launching chromium: {0}")]
    Launch(String),
    #[error("{doing}: {source}")]
    Io {
        doing: String,
        source: std::io::Error,
    },
    #[error("{doing}: timed out after {after:?}")]
    Timeout { doing: String, after: Duration },
    /// The websocket failed, or chromium answered a call with an error.
    #[error("{doing}: {message}")]
    Cdp { doing: String, message: String },
    #[error("JavaScript exception in {expression:?}: {text}")]
    Js { expression: String, text: String },
    #[error("navigating to {url}: {text}")]
    Navigate { url: String, text: String },
    #[error("waiting for {expression:?}: still not true after {after:?}, last value {last}")]
    WaitFor {
        expression: String,
        after: Duration,
        last: String,
    },
}

fn io_err(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> BrowserError {
    let doing = doing.into();
    move |source| BrowserError::Io { doing, source }
}

/// Where tests put their screenshots: `target/screenshots/` of the workspace
/// (or of `CARGO_TARGET_DIR`), created if missing.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            let root = manifest.ancestors().find(|d| d.join("Cargo.lock").exists());
            root.unwrap_or(manifest).join("target")
        });
    let dir = target.join("screenshots");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// A headless chromium and the websocket to it. Dropping it kills chromium
/// and removes its temporary profile.
pub struct Browser {
    conn: Rc<RefCell<Conn>>,
    chromium: Chromium,
}

/// The chromium process group and its profile; killed and removed on drop
/// (a field of its own so that a launch failing halfway cleans up too).
struct Chromium {
    child: Child,
    profile: tempfile::TempDir,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The process group holds the zygotes, renderers and the GPU process.
        let group = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its crash handlers leave the group (they daemonize) but name the
        // profile, which holds their crash reports: end them before it goes.
        // (--disable-crashpad-for-testing would spare this but breaks navigation.)
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left = processes_naming(self.profile.path());
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in left {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The live processes whose command line names `dir` (a zombie's is empty).
fn processes_naming(dir: &Path) -> Vec<rustix::process::Pid> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let named = cmdline.windows(needle.len()).any(|w| w == needle);
            named.then(|| rustix::process::Pid::from_raw(pid)).flatten()
        })
        .collect()
}

impl Browser {
    /// Starts chromium headless (the `chromium` on PATH, or `$EBB_CHROMIUM`)
    /// with a fresh profile and connects to its DevTools websocket.
    pub fn launch() -> Result<Browser, BrowserError> {
        let program = std::env::var_os("EBB_CHROMIUM").unwrap_or_else(|| OsString::from("chromium"));
        Browser::launch_program(&program)
    }

    /// Starts `program` as [`Browser::launch`] starts chromium.
    pub fn launch_program(program: &OsStr) -> Result<Browser, BrowserError> {
        let shown = program.to_string_lossy().into_owned();
        if !is_program(program) {
            return Err(BrowserError::Launch(format!(
                "{shown} not found: install Debian's chromium package \
                 (apt-get install chromium, as scripts/setup-host.sh does) or set EBB_CHROMIUM"
            )));
        }
        let profile = tempfile::Builder::new()
            .prefix("ebb-chromium-")
            .tempdir()
            .map_err(io_err("making chromium's temporary profile"))?;
        // setpriv (util-linux) has the kernel kill chromium when the thread
        // that started it dies, even by SIGKILL, where no Drop runs; it execs
        // chromium, so the pid is chromium's. (Browser is not Send: the thread
        // that launches it is the one that uses it.)
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .arg(program)
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(["--no-first-run", "--hide-scrollbars"])
            .args(["--window-size=1400,1000", "about:blank"])
            // Keep chromium's other files (its crash reports) out of the home directory.
            .env("XDG_CONFIG_HOME", profile.path())
            .env("XDG_CACHE_HOME", profile.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| BrowserError::Launch(format!("cannot start {shown} under setpriv: {e}")))?;
        let mut chromium = Chromium { child, profile };
        let url = devtools_url(&mut chromium.child, &shown)?;
        let conn = Conn::connect(&url)?;
        Ok(Browser {
            conn: Rc::new(RefCell::new(conn)),
            chromium,
        })
    }

    /// The pid of chromium's browser process (its process group's id).
    pub fn pid(&self) -> u32 {
        self.chromium.child.id()
    }

    /// The temporary profile directory, removed with the browser.
    pub fn profile_dir(&self) -> &Path {
        self.chromium.profile.path()
    }

    /// Opens `url` in a new tab and waits until it has loaded.
    pub fn open(&mut self, url: &str) -> Result<Page, BrowserError> {
        let mut conn = self.conn.borrow_mut();
        let target = conn.call(None, "Target.createTarget", json!({"url": "about:blank"}))?;
        let target = target["targetId"].as_str().unwrap_or_default().to_string();
        let attach = json!({"targetId": target, "flatten": true});
        let session = conn.call(None, "Target.attachToTarget", attach)?;
        let session = session["sessionId"].as_str().unwrap_or_default().to_string();
        for method in ["Page.enable", "Runtime.enable", "Network.enable"] {
            conn.call(Some(&session), method, json!({}))?;
        }
        let lifecycle = json!({"enabled": true});
        conn.call(Some(&session), "Page.setLifecycleEventsEnabled", lifecycle)?;
        drop(conn);
        let mut page = Page {
            conn: self.conn.clone(),
            session,
            target,
            status: None,
        };
        page.goto(url)?;
        Ok(page)
    }
}

/// Whether `program` is a file, or names one on PATH.
fn is_program(program: &OsStr) -> bool {
    if Path::new(program).components().count() > 1 {
        return Path::new(program).is_file();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

/// Reads chromium's stderr until it prints its DevTools address, then keeps
/// draining it in a thread so chromium never blocks on a full pipe.
fn devtools_url(child: &mut Child, shown: &str) -> Result<String, BrowserError> {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut tail = VecDeque::new();
        let mut reader = BufReader::new(stderr);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line).trim().to_string();
            line.clear();
            if let Some(url) = text.strip_prefix("DevTools listening on ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Ok(url.to_string()));
                }
            } else if tx.is_some() {
                tail.push_back(text);
                if tail.len() > 15 {
                    tail.pop_front();
                }
            }
        }
        if let Some(tx) = tx {
            let _ = tx.send(Err(Vec::from(tail).join("\n")));
        }
    });
    match rx.recv_timeout(LAUNCH_TIMEOUT) {
        Ok(Ok(url)) => Ok(url),
        Ok(Err(tail)) => Err(BrowserError::Launch(format!(
            "{shown} exited without giving its DevTools address; its stderr ended with:\n{tail}"
        ))),
        Err(_) => Err(BrowserError::Launch(format!(
            "{shown} gave no DevTools address within {LAUNCH_TIMEOUT:?}"
        ))),
    }
}

/// The CDP websocket: numbered calls, and the events read meanwhile filed by
/// session ("" for the browser's own).
struct Conn {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    /// The events a page waits on (load, document response), by session.
    events: HashMap<String, VecDeque<Value>>,
    /// Console errors and uncaught exceptions, by session.
    errors: HashMap<String, Vec<String>>,
}

impl Conn {
    fn connect(url: &str) -> Result<Conn, BrowserError> {
        let doing = format!("connecting to chromium's DevTools at {url}");
        let addr = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| BrowserError::Launch(format!("unexpected DevTools address {url}")))?;
        let stream = TcpStream::connect(addr).map_err(io_err(&doing))?;
        stream.set_read_timeout(Some(CALL_TIMEOUT)).map_err(io_err(&doing))?;
        stream.set_write_timeout(Some(CALL_TIMEOUT)).map_err(io_err(&doing))?;
        let _ = stream.set_nodelay(true);
        let (mut ws, _) = tungstenite::client(url, stream).map_err(|e| BrowserError::Cdp {
            doing: doing.clone(),
            message: e.to_string(),
        })?;
        // A full-page screenshot comes as one large message.
        ws.set_config(|c| {
            c.max_message_size = Some(256 << 20);
            c.max_frame_size = Some(256 << 20);
        });
        Ok(Conn {
            ws,
            next_id: 0,
            events: HashMap::new(),
            errors: HashMap::new(),
        })
    }

    /// Sends a call and waits for its reply, filing the events read meanwhile.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value, BrowserError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = session.into();
        }
        if std::env::var_os("EBB_CDP_TRACE").is_some() {
            eprintln!("cdp > {message}");
        }
        let sent = self.ws.send(Message::text(message.to_string()));
        sent.map_err(|e| ws_err(method, e))?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let mut reply = self.recv(deadline, method)?;
            if reply["id"].as_u64() != Some(id) {
                continue;
            }
            if let Some(error) = reply.get("error") {
                let message = error["message"].as_str().unwrap_or("(no message)");
                return Err(BrowserError::Cdp {
                    doing: method.to_string(),
                    message: format!("chromium answered: {message}"),
                });
            }
            return Ok(reply["result"].take());
        }
    }

    /// Waits for an event of `session` that `wanted` accepts, taking it from the queue.
    fn wait_event(
        &mut self,
        session: &str,
        deadline: Instant,
        doing: &str,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<Value, BrowserError> {
        loop {
            let queue = self.events.entry(session.to_string()).or_default();
            if let Some(at) = queue.iter().position(&wanted) {
                return Ok(queue.remove(at).expect("position is in the queue"));
            }
            self.recv(deadline, doing)?;
        }
    }

    /// Reads one message before `deadline`; an event is filed before it is returned.
    fn recv(&mut self, deadline: Instant, doing: &str) -> Result<Value, BrowserError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(BrowserError::Timeout {
                    doing: doing.to_string(),
                    after: CALL_TIMEOUT,
                });
            }
            if let Some(message) = self.read(left, doing)? {
                return Ok(message);
            }
        }
    }

    /// Reads what has already arrived, so the console errors are current.
    fn pump(&mut self) {
        while let Ok(Some(_)) = self.read(Duration::from_millis(1), "reading pending events") {}
    }

    /// One message within `timeout`, or None when nothing came in time.
    fn read(&mut self, timeout: Duration, doing: &str) -> Result<Option<Value>, BrowserError> {
        let stream = self.ws.get_mut();
        stream.set_read_timeout(Some(timeout)).map_err(io_err(doing))?;
        let text = match self.ws.read() {
            Ok(Message::Text(text)) => text,
            Ok(_) => return Ok(None),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(ws_err(doing, e)),
        };
        if std::env::var_os("EBB_CDP_TRACE").is_some() {
            eprintln!("cdp < {}", text.chars().take(400).collect::<String>());
        }
        let message: Value = serde_json::from_str(&text).map_err(|e| BrowserError::Cdp {
            doing: doing.to_string(),
            message: format!("unreadable message from chromium: {e}"),
        })?;
        if message.get("method").is_some() {
            self.file_event(&message);
        }
        Ok(Some(message))
    }

    fn file_event(&mut self, event: &Value) {
        let session = event["sessionId"].as_str().unwrap_or_default().to_string();
        let params = &event["params"];
        match event["method"].as_str().unwrap_or_default() {
            "Page.lifecycleEvent" | "Network.responseReceived" => {
                let queue = self.events.entry(session).or_default();
                queue.push_back(event.clone());
                if queue.len() > 1000 {
                    queue.pop_front();
                }
            }
            "Runtime.exceptionThrown" => {
                let details = &params["exceptionDetails"];
                // The description holds the message and the stack; without
                // one, the text and where it was thrown.
                let text = match details["exception"]["description"].as_str() {
                    Some(description) => description.to_string(),
                    None => format!(
                        "{} at {}:{}",
                        details["text"].as_str().unwrap_or("(no text)"),
                        details["url"].as_str().unwrap_or("?"),
                        details["lineNumber"].as_u64().unwrap_or(0) + 1
                    ),
                };
                self.errors.entry(session).or_default().push(format!("uncaught {text}"));
            }
            "Runtime.consoleAPICalled" if params["type"] == "error" => {
                let args = params["args"].as_array().map(Vec::as_slice).unwrap_or_default();
                let words: Vec<String> = args.iter().map(remote_text).collect();
                self.errors.entry(session).or_default().push(format!("console.error: {}", words.join(" ")));
            }
            _ => {}
        }
    }
}

fn ws_err(doing: &str, e: tungstenite::Error) -> BrowserError {
    BrowserError::Cdp {
        doing: doing.to_string(),
        message: format!("websocket to chromium: {e}"),
    }
}

/// A CDP RemoteObject as text: its value, or its description.
fn remote_text(object: &Value) -> String {
    match &object["value"] {
        Value::String(s) => s.clone(),
        Value::Null => object["description"].as_str().unwrap_or("undefined").to_string(),
        value => value.to_string(),
    }
}

/// The HTTP status of the document that navigation `loader` received, if seen.
fn document_status(conn: &Conn, session: &str, loader: &str) -> Option<u16> {
    let queue = conn.events.get(session)?;
    let response = queue.iter().rev().find(|e| {
        e["method"] == "Network.responseReceived"
            && e["params"]["type"] == "Document"
            && e["params"]["loaderId"] == loader
    })?;
    response["params"]["response"]["status"].as_u64().map(|s| s as u16)
}

/// JavaScript's truthiness of a value returned by value.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// A tab of the browser. Dropping it closes the tab.
pub struct Page {
    conn: Rc<RefCell<Conn>>,
    session: String,
    target: String,
    status: Option<u16>,
}

impl Page {
    /// Navigates to `url` and waits for its load event; gives the main
    /// document's HTTP status (also kept for [`Page::status`]). Chromium
    /// fails some navigations that did get an answer (a 4xx/5xx without a
    /// body, a 401 asking for a login): those give their status at once,
    /// without waiting for chromium's error page.
    pub fn goto(&mut self, url: &str) -> Result<Option<u16>, BrowserError> {
        let doing = format!("loading {url}");
        let mut conn = self.conn.borrow_mut();
        conn.events.remove(&self.session);
        let nav = conn.call(Some(&self.session), "Page.navigate", json!({"url": url}))?;
        let loader = nav["loaderId"].as_str().unwrap_or_default();
        // The document's response comes before the navigation commits, so
        // before the reply: it is in the queue already, if there was one.
        self.status = document_status(&conn, &self.session, loader);
        if let Some(error) = nav["errorText"].as_str().filter(|t| !t.is_empty()) {
            // Chromium reports an HTTP error without a body as a failed
            // navigation; with a status, that is an answer all the same.
            if self.status.is_none() {
                return Err(BrowserError::Navigate {
                    url: url.to_string(),
                    text: error.to_string(),
                });
            }
            return Ok(self.status);
        }
        if !loader.is_empty() {
            let deadline = Instant::now() + CALL_TIMEOUT;
            conn.wait_event(&self.session, deadline, &doing, |e| {
                e["method"] == "Page.lifecycleEvent"
                    && e["params"]["name"] == "load"
                    && e["params"]["loaderId"] == loader
            })?;
            self.status = self.status.or(document_status(&conn, &self.session, loader));
        }
        Ok(self.status)
    }

    /// The HTTP status of the main document last loaded.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// Evaluates `js` in the page (awaiting a promise) and gives its value
    /// as JSON; a thrown exception is [`BrowserError::Js`].
    pub fn eval(&mut self, js: &str) -> Result<Value, BrowserError> {
        let params = json!({"expression": js, "returnByValue": true, "awaitPromise": true});
        let mut reply = self.conn.borrow_mut().call(Some(&self.session), "Runtime.evaluate", params)?;
        if let Some(details) = reply.get("exceptionDetails") {
            let text = details["exception"]["description"].as_str().or(details["text"].as_str());
            return Err(BrowserError::Js {
                expression: js.to_string(),
                text: text.unwrap_or("(no text)").to_string(),
            });
        }
        let result = &mut reply["result"];
        if let Some(special) = result["unserializableValue"].as_str() {
            return Ok(Value::String(special.to_string())); // NaN, Infinity, -0, bigints
        }
        Ok(result["value"].take())
    }

    /// Evaluates `js_predicate` every 50 ms until it is truthy and gives how
    /// long that took. An exception counts as not yet (the element may not be
    /// there yet); the error names the expression and its last value.
    pub fn wait_for(&mut self, js_predicate: &str, timeout: Duration) -> Result<Duration, BrowserError> {
        let start = Instant::now();
        loop {
            let last = match self.eval(js_predicate) {
                Ok(value) if truthy(&value) => return Ok(start.elapsed()),
                Ok(value) => value.to_string(),
                Err(BrowserError::Js { text, .. }) => format!("exception {text}"),
                Err(e) => return Err(e),
            };
            if start.elapsed() >= timeout {
                return Err(BrowserError::WaitFor {
                    expression: js_predicate.to_string(),
                    after: timeout,
                    last,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes a PNG of the whole page (beyond the window if it is longer).
    pub fn screenshot(&mut self, path: &Path) -> Result<(), BrowserError> {
        let mut conn = self.conn.borrow_mut();
        let metrics = conn.call(Some(&self.session), "Page.getLayoutMetrics", json!({}))?;
        // The content's size, or the window's where the content is smaller.
        let (content, window) = (&metrics["cssContentSize"], &metrics["cssLayoutViewport"]);
        let width = content["width"].as_f64().unwrap_or(0.0).max(window["clientWidth"].as_f64().unwrap_or(0.0));
        let height = content["height"].as_f64().unwrap_or(0.0).max(window["clientHeight"].as_f64().unwrap_or(0.0));
        let mut params = json!({"format": "png", "captureBeyondViewport": true});
        if width > 0.0 && height > 0.0 {
            params["clip"] = json!({"x": 0, "y": 0, "width": width, "height": height, "scale": 1});
        }
        let shot = conn.call(Some(&self.session), "Page.captureScreenshot", params)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .map_err(|e| BrowserError::Cdp {
                doing: "Page.captureScreenshot".into(),
                message: format!("undecodable image: {e}"),
            })?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        std::fs::write(path, png).map_err(io_err(format!("writing {}", path.display())))
    }

    /// The console errors and uncaught exceptions the page has had so far.
    pub fn console_errors(&self) -> Vec<String> {
        let mut conn = self.conn.borrow_mut();
        conn.pump();
        conn.errors.get(&self.session).cloned().unwrap_or_default()
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        if let Ok(mut conn) = self.conn.try_borrow_mut() {
            let _ = conn.call(None, "Target.closeTarget", json!({"targetId": self.target}));
            conn.events.remove(&self.session);
            conn.errors.remove(&self.session);
        }
    }
}
