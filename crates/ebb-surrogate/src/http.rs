//! Just enough HTTP/1.x for a surrogate: find the first request's method and
//! path so a canned reply can be matched, and write the few responses the
//! surrogate gives itself (canned replies, `503` refusals). Everything else
//! is the VM's business: the surrogate never parses past the request head
//! and never speaks HTTP to the backend, it replays the client's bytes.

use crate::spec::CannedReply;

/// The longest request line the surrogate looks at; a longer one cannot
/// match a canned path, so the connection is held for the VM as it is.
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

/// False as soon as `buf` cannot be the start of a request a canned reply
/// answers, so a request for the VM wakes it without waiting for the rest
/// of a slowly sent request line. It never gives up on a request that
/// `request_line` and `find_canned` match once the line is whole (fuzzed:
/// `fuzzing::http_head`).
pub(crate) fn could_be_canned(buf: &[u8], canned: &[CannedReply]) -> bool {
    let s = match buf.iter().position(|b| *b != b'\r' && *b != b'\n') {
        Some(i) => &buf[i..],
        None => return !canned.is_empty(),
    };
    canned.iter().any(|c| {
        let method = [c.method.as_bytes(), b" "].concat();
        if s.len() <= method.len() {
            return method.starts_with(s);
        }
        let Some(target) = s.strip_prefix(method.as_slice()) else { return false };
        if !target.starts_with(b"/") {
            // Absolute-form (`GET http://host/path`, as proxies receive it):
            // its path comes after the host, so only the whole line tells.
            return true;
        }
        let path = c.path.as_bytes();
        if target.len() <= path.len() {
            path.starts_with(target)
        } else {
            target.starts_with(path) && matches!(target[path.len()], b' ' | b'?' | b'#')
        }
    })
}

/// True once `buf` holds the whole request head (line and headers).
pub(crate) fn head_complete(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n")
}

pub(crate) fn find_canned<'a>(
    canned: &'a [CannedReply],
    method: &str,
    path: &str,
) -> Option<&'a CannedReply> {
    canned.iter().find(|c| c.method == method && c.path == path)
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
    fn canned_prefixes() {
        let c = [CannedReply {
            method: "GET".into(),
            path: "/healthz".into(),
            status: 200,
            content_type: "text/plain".into(),
            body: String::new(),
        }];
        assert!(could_be_canned(b"", &c));
        assert!(!could_be_canned(b"", &[]));
        assert!(could_be_canned(b"\r\nGE", &c));
        assert!(could_be_canned(b"GET /healthz", &c));
        assert!(could_be_canned(b"GET /healthz?a HTTP/1.1", &c));
        assert!(!could_be_canned(b"P", &c));
        assert!(!could_be_canned(b"GET /a", &c));
        assert!(!could_be_canned(b"GET /healthzz", &c));
        // Absolute-form: the path is known once the line is whole…
        assert!(could_be_canned(b"GET http://web", &c));
        assert_eq!(request_line(b"GET http://web/healthz HTTP/1.1\r\n"), Some(Ok(("GET".into(), "/healthz".into()))));
        // …while `://` in an origin-form path is part of the path.
        assert!(!could_be_canned(b"GET /x://web/healthz", &c));
        assert_eq!(request_line(b"GET /x://web/healthz HTTP/1.1\r\n"), Some(Ok(("GET".into(), "/x://web/healthz".into()))));
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
