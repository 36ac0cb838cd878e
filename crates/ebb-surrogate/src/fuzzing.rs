//! The checks of the fuzz target `http_head` (`fuzz/fuzz_targets/`), here
//! so that the inputs it found run as unit tests too. Not the surrogate's
//! API: hidden from its docs.

use crate::http;
use crate::spec::{CannedReply, ServiceSpec};

/// `data` is a first line `METHOD PATH` declaring a canned reply (kept when
/// a config could declare it), then what a client sends a sleeping VM's
/// HTTP service: the request head the surrogate reads to match the reply.
pub fn http_head(data: &[u8]) {
    let (first, request) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let canned = canned(first);
    let _ = http::head_complete(request);
    let line = http::request_line(request);
    let Some(end) = line_end(request) else { return };
    // Once the line is whole, what follows it changes nothing.
    assert_eq!(http::request_line(&request[..=end]), line);
    // The surrogate decides on the whole line only (it waits for it), so
    // how the line is cut into reads cannot change the answer: no prefix
    // of it is taken for a line.
    for k in 0..end {
        assert_eq!(http::request_line(&request[..k]), None, "decided on {:?}", String::from_utf8_lossy(&request[..k]));
    }
    // A canned reply matches its own method and path, or GET's for a HEAD.
    let Some(Ok((method, path))) = &line else { return };
    if let Some(c) = http::find_canned(&canned, method, path) {
        assert!(&c.path == path && (&c.method == method || (method == "HEAD" && c.method == "GET")), "{c:?} for {method} {path}");
    }
}

/// The canned reply `METHOD PATH` declares, if a config may declare it.
fn canned(line: &[u8]) -> Vec<CannedReply> {
    let Some((method, path)) = std::str::from_utf8(line).ok().and_then(|l| l.split_once(' ')) else { return vec![] };
    let reply = CannedReply { method: method.into(), path: path.into(), status: 200, content_type: "text/plain".into(), body: String::new() };
    let mut spec = ServiceSpec::http("fuzz", ([127, 0, 0, 1], 1).into(), ([127, 0, 0, 1], 2).into());
    spec.canned = vec![reply];
    match spec.validate() {
        Ok(()) => spec.canned,
        Err(_) => vec![],
    }
}

/// Where the request line ends: its `\n`, after any empty lines before it.
fn line_end(buf: &[u8]) -> Option<usize> {
    let start = buf.iter().position(|b| *b != b'\r' && *b != b'\n')?;
    Some(start + buf[start..].iter().position(|b| *b == b'\n')?)
}

#[cfg(test)]
mod tests {
    /// Every input of the fuzz target `target`: its seeds (`fuzz/seeds/`) and
    /// the inputs it found, kept in this crate's `fuzz-regressions/` once fixed.
    fn fuzz_inputs(target: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let seeds = std::fs::read_dir(crate_dir.join("../../fuzz/seeds").join(target)).expect("the target's seeds");
        let found = std::fs::read_dir(crate_dir.join("fuzz-regressions").join(target)).into_iter().flatten();
        seeds.chain(found).map(|e| e.unwrap().path()).map(|p| (p.clone(), std::fs::read(p).unwrap())).collect()
    }

    #[test]
    fn fuzz_inputs_keep_their_properties() {
        for (path, data) in fuzz_inputs("http_head") {
            println!("{}", path.display());
            super::http_head(&data);
        }
    }
}
