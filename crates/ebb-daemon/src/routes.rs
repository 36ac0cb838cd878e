//! Every path of the API, stated once: the server routes these templates
//! and the client fills them in (`Client`'s typed calls).

pub const STATUS: &str = "/v1/status";
pub const VMS: &str = "/v1/vms";
pub const VM: &str = "/v1/vms/{name}";
pub const EXPLAIN: &str = "/v1/vms/{name}/explain";
/// Why the host sleeps or what keeps it awake (the farm).
pub const EXPLAIN_HOST: &str = "/v1/host/explain";
pub const SLEEP: &str = "/v1/vms/{name}/sleep";
pub const WAKE: &str = "/v1/vms/{name}/wake";
pub const CRITICAL: &str = "/v1/vms/{name}/critical/{on}";
pub const VALUE: &str = "/v1/vms/{name}/value/{value}";
pub const NEEDS: &str = "/v1/vms/{name}/needs";
/// The active clients of the VMs, and a client agent's heartbeat (a JSON
/// body: `api_types::Heartbeat`).
pub const CLIENTS: &str = "/v1/clients";
pub const HEARTBEAT: &str = "/v1/clients/{name}/heartbeat";
/// Takes `vm` and `limit` as query parameters.
pub const EVENTS: &str = "/v1/events";
pub const METRICS: &str = "/metrics";
/// The web view's live feed (server-sent events) and the page's assets.
pub const STREAM: &str = "/v1/stream";
pub const WEB_PAGE: &str = "/";
pub const WEB_SCRIPT: &str = "/ebb.js";
pub const WEB_STYLE: &str = "/ebb.css";

/// `template` with each `{…}` replaced by the next of `args`, percent-encoded.
pub fn fill(template: &str, args: &[&str]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut args = args.iter();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
        out.push_str(&url_encode(args.next().expect("an argument for every part of the path")));
        rest = &rest[close..];
    }
    out.push_str(rest);
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so a
/// VM name is one path segment whatever it holds.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled_in_order_and_names_stay_one_segment() {
        assert_eq!(fill(VM, &["web 1/a"]), "/v1/vms/web%201%2Fa");
        assert_eq!(fill(CRITICAL, &["db", "on"]), "/v1/vms/db/critical/on");
        assert_eq!(fill(STATUS, &[]), "/v1/status");
    }
}
