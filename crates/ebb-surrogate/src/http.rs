//! Just enough HTTP/1.x for a surrogate: find the first request's method and
//! path so a canned reply can be matched, and write the few responses the
//! surrogate gives itself (canned replies, `503` refusals). Everything else
//! is the VM's business: the surrogate never parses past the request head
//! and never speaks HTTP to the backend, it replays the client's bytes.

use crate::spec::CannedReply;

/// The longest request line the surrogate takes while its VM sleeps: a
/// longer one is refused without waking the VM (servers refuse them too:
/// 8 KiB is nginx's and Apache's default).
pub(crate) const MAX_REQUEST_LINE: usize = 8 * 1024;

/// The method and path of a complete request line at the start of `buf`,
/// `None` while the line is incomplete, `Some(Err)` when it is not HTTP.
pub(crate) fn request_line(buf: &[u8]) -> Option<Result<(String, String), ()>> {
    // RFC 9112 §2.2: a server should ignore empty lines before the request.
    let start = buf.iter().position(|b| *b != b'\r' && *b != b'\n')?;
    let rest = &buf[start..];
    let end = rest.iter().position(|b| *b == b'\n')?;
    let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
    let line = match std::str::from_utf8(line) {
        Ok(l) => l,
        Err(_) => return Some(Err(())),
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(Err(()));
    };
    if method.is_empty() || !version.starts_with("HTTP/") {
        return Some(Err(()));
    }
    Some(Ok((method.to_string(), path_of(target).to_string())))
}

/// The path of a request target, without query; absolute-form targets
/// (`http://host/path`, sent to proxies) are reduced to their path. An
/// origin-form target (`/…`) is a path already, even with `://` in it.
fn path_of(target: &str) -> &str {
    let target = match target.split_once("://") {
        Some((_, rest)) if !target.starts_with('/') => rest.find('/').map_or("/", |i| &rest[i..]),
        _ => target,
    };
    let end = target.find(['?', '#']).unwrap_or(target.len());
    &target[..end]
}

/// True once `buf` holds the whole request head (line and headers).
pub(crate) fn head_complete(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n")
}

/// The canned reply for a request: same method and exact path, or a GET
/// entry for a HEAD request (RFC 9110 §9.3.2: HEAD is GET without the body).
pub(crate) fn find_canned<'a>(
    canned: &'a [CannedReply],
    method: &str,
    path: &str,
) -> Option<&'a CannedReply> {
    let matches = |c: &&CannedReply| c.path == path && (c.method == method || (method == "HEAD" && c.method == "GET"));
    canned.iter().find(|c| c.method == method && c.path == path).or_else(|| canned.iter().find(matches))
}

pub(crate) fn canned_response(c: &CannedReply, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        c.status,
        reason_phrase(c.status),
        c.content_type,
        c.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(c.body.as_bytes());
    }
    out
}

pub(crate) fn unavailable_response(why: &str) -> Vec<u8> {
    let body = format!("{why}\n");
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nRetry-After: 5\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        // RFC 9112 allows an empty reason phrase; clients read the code.
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(request_line(b"GET /heal"), None);
        assert_eq!(
            request_line(b"GET /healthz?x=1 HTTP/1.1\r\nHost: a\r\n"),
            Some(Ok(("GET".into(), "/healthz".into())))
        );
        assert_eq!(
            request_line(b"\r\nHEAD http://h:80/a/b HTTP/1.0\n"),
            Some(Ok(("HEAD".into(), "/a/b".into())))
        );
        assert_eq!(request_line(b"\x16\x03\x01 junk\n"), Some(Err(())));
        assert_eq!(request_line(b"GET /\r\n"), Some(Err(())));
    }

    #[test]
    fn canned_replies_match_method_and_exact_path_and_head_takes_get() {
        let entry = |method: &str| CannedReply {
            method: method.into(),
            path: "/healthz".into(),
            status: 200,
            content_type: "text/plain".into(),
            body: String::new(),
        };
        let c = [entry("GET")];
        assert!(find_canned(&c, "GET", "/healthz").is_some());
        assert!(find_canned(&c, "HEAD", "/healthz").is_some_and(|c| c.method == "GET"));
        assert!(find_canned(&c, "POST", "/healthz").is_none());
        assert!(find_canned(&c, "GET", "/healthz/").is_none());
        // A HEAD entry of its own wins over the GET one.
        let both = [entry("GET"), entry("HEAD")];
        assert_eq!(find_canned(&both, "HEAD", "/healthz").unwrap().method, "HEAD");
    }

    #[test]
    fn heads() {
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    }

    #[test]
    fn responses_carry_length_and_close() {
        let c = CannedReply {
            method: "GET".into(),
            path: "/h".into(),
            status: 200,
            content_type: "text/plain".into(),
            body: "ok".into(),
        };
        let r = String::from_utf8(canned_response(&c, false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r.contains("Content-Length: 2\r\n") && r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\nok"));
        let r = String::from_utf8(unavailable_response("queue full")).unwrap();
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(r.contains("Retry-After: 5\r\n") && r.ends_with("queue full\n"));
    }
}
