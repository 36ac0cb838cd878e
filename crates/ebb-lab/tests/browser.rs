//! The headless-Chromium driver against a tiny web server of its own: load,
//! status, eval, waiting on a page's script, screenshots, console errors,
//! and chromium gone once the browser is dropped. Needs Debian's chromium
//! (scripts/setup-host.sh installs it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ebb_lab::browser::{screenshot_dir, Browser, BrowserError};

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>ebb browser test</title></head>
<body style="font-family: sans-serif; margin: 2em">
<h1 id="msg">waiting</h1>
<p>A page served by the test: its script changes the heading 300 ms after it has loaded.</p>
<ul><li>first line of text</li><li>second line of text</li><li>third line of text</li></ul>
<script>
addEventListener('load', () => setTimeout(() => {
  document.getElementById('msg').textContent = 'changed by the page';
}, 300));
</script>
</body></html>"#;

const BROKEN: &str = r#"<!doctype html>
<html><head><title>broken</title></head><body><p>broken page</p>
<script>console.error('something is off', 42);</script>
<script>throw new Error('boom from the page');</script>
</body></html>"#;

/// Serves PAGE at /, BROKEN at /broken and a 401 at /denied, one thread a
/// connection (chromium opens speculative connections it may never use).
fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test server");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream));
        }
    });
    format!("http://{addr}")
}

fn answer(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buf = [0; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/" => ("200 OK", PAGE),
        "/broken" => ("200 OK", BROKEN),
        "/denied" => ("401 Unauthorized", "<p>denied</p>"),
        "/denied-empty" => ("401 Unauthorized", ""),
        "/auth" => ("401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"ebb\"", "<p>log in</p>"),
        _ => ("404 Not Found", "<p>not found</p>"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
}

#[test]
fn drives_a_page_in_headless_chromium() {
    let base = serve();
    let started = Instant::now();
    let mut browser = Browser::launch().expect("launch chromium");
    let pid = browser.pid();
    let profile = browser.profile_dir().to_path_buf();
    println!("launch took {:?} (chromium pid {pid})", started.elapsed());

    let started = Instant::now();
    let mut page = browser.open(&format!("{base}/")).expect("open the page");
    println!("open took {:?}", started.elapsed());
    let waited = page
        .wait_for("document.getElementById('msg').textContent === 'changed by the page'", Duration::from_secs(5))
        .expect("the page's script changes the heading");
    println!("the heading changed after {waited:?}");
    assert!(waited >= Duration::from_millis(200), "waited only {waited:?} for a 300 ms timer");
    assert_eq!(page.status(), Some(200));
    assert_eq!(page.eval("document.title").unwrap(), "ebb browser test");
    assert_eq!(page.eval("Promise.resolve(6 * 7)").unwrap(), 42);
    assert!(page.console_errors().is_empty(), "{:?}", page.console_errors());

    let err = page.eval("null.nothing").unwrap_err();
    assert!(matches!(err, BrowserError::Js { .. }), "{err}");
    assert!(err.to_string().contains("TypeError"), "{err}");
    let err = page.wait_for("document.title === 'never'", Duration::from_millis(200)).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("document.title === 'never'") && message.contains("false"), "{message}");

    let shot = screenshot_dir().join("browser-test.png");
    page.screenshot(&shot).expect("screenshot");
    println!("screenshot: {}", shot.display());
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert!(png.len() > 5_000, "a PNG of only {} bytes", png.len());

    let mut denied = browser.open(&format!("{base}/denied")).expect("open the 401 page");
    assert_eq!(denied.status(), Some(401));
    // Chromium fails these navigations (an empty error page, a login it
    // cannot ask for) but the status is what a test wants.
    assert_eq!(denied.goto(&format!("{base}/denied-empty")).unwrap(), Some(401));
    assert_eq!(denied.goto(&format!("{base}/auth")).unwrap(), Some(401));
    assert_eq!(denied.goto(&format!("{base}/")).unwrap(), Some(200));
    drop(denied);

    let broken = browser.open(&format!("{base}/broken")).expect("open the broken page");
    let errors = broken.console_errors();
    println!("console errors of /broken: {errors:?}");
    assert!(errors.iter().any(|e| e.contains("boom from the page")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("something is off 42")), "{errors:?}");
    assert!(page.console_errors().is_empty(), "{:?}", page.console_errors());

    drop(browser);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "chromium {pid} outlived its Browser");
    assert!(!profile.exists(), "{} was left behind", profile.display());
    // Nor any of its other processes (renderers, zygotes, crash handlers).
    if let Some(left) = processes_mentioning(&profile) {
        panic!("chromium process {left} outlived its Browser");
    }
    // The page outlives its browser harmlessly: calls fail, dropping is fine.
    assert!(page.eval("1").is_err());
}

/// A live process whose command line names `dir`, if any.
fn processes_mentioning(dir: &Path) -> Option<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline).contains(&needle).then(|| entry.file_name().to_string_lossy().into_owned())
    })
}

#[test]
fn a_missing_chromium_is_named() {
    let err = Browser::launch_program("/nonexistent/chromium".as_ref()).err().expect("no browser without chromium");
    assert!(err.to_string().contains("install Debian's chromium package"), "{err}");
}

/// Chromium dies with the test process even when that is killed outright
/// and no Drop runs (a test's timeout): the kernel kills it (setpriv --pdeathsig).
#[test]
fn chromium_dies_with_its_test_process() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "launch_and_hang", "--ignored", "--nocapture"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run this test binary again");
    let line = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|line| line.starts_with("chromium pid "))
        .expect("the helper prints chromium's pid and profile");
    let mut words = line.split_whitespace().skip(2);
    let (pid, profile) = (words.next().unwrap().to_string(), words.next().unwrap().to_string());
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    // Gone, or a zombie waiting for init to reap it.
    while let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        if stat.rsplit(") ").next().is_some_and(|rest| rest.starts_with('Z')) {
            break;
        }
        assert!(Instant::now() < deadline, "chromium {pid} outlived its killed test process");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its other processes follow it (the kernel killed only the browser process).
    while let Some(left) = processes_mentioning(Path::new(&profile)) {
        assert!(Instant::now() < deadline, "chromium process {left} outlived its killed test process");
        std::thread::sleep(Duration::from_millis(50));
    }
    // No Drop ran to remove it.
    std::fs::remove_dir_all(&profile).unwrap();
}

#[test]
#[ignore = "a helper that chromium_dies_with_its_test_process runs in a process of its own"]
fn launch_and_hang() {
    let browser = Browser::launch().expect("launch chromium");
    println!("chromium pid {} {}", browser.pid(), browser.profile_dir().display());
    std::thread::sleep(Duration::from_secs(30));
}
