//! A client for NUT's network protocol (upsd, TCP 3493), written against the
//! protocol text (NUT's docs/net-protocol.txt): one request per line;
//! `LIST VAR <ups>` answers `BEGIN LIST VAR <ups>`, lines
//! `VAR <ups> <name> "<value>"` and `END LIST VAR <ups>`; `GET VAR <ups>
//! <name>` answers one `VAR` line; any request may answer `ERR <code>`.
//!
//! Each reading opens its own connection: a UPS is polled once a tick, and a
//! fresh connection is the simplest recovery from upsd restarting or the
//! network dropping in between. A reading is bounded as a whole, not per
//! read: one deadline covers the name lookup, the connect and every line, and
//! the answer is capped in line length, bytes and variables, so neither a
//! slow nor an endless upsd can hold a reading or grow ebb's memory. The
//! answer is parsed by [`ListVarReply`], a pure parser over the bytes as they
//! arrive (fuzzed: `fuzz/fuzz_targets/nut_reply.rs`).
//!
//! `reply.rs` parses an answer (no I/O), `tls.rs` sets up the trust in
//! upsd's certificate, `client.rs` holds the connection and its deadline.
//!
//! Plain, the reading is unauthenticated: whatever answers on the address
//! can report low battery, and ebb then saves every VM and powers the host
//! off. Given a CA ([`NutTls`]), every reading starts with `STARTTLS` (upsd
//! answers `OK STARTTLS`, then a TLS handshake on the same connection, as
//! net-protocol.txt has it) and goes on only once upsd's certificate chains
//! to that CA and holds the expected name; a upsd that does not take up TLS
//! is refused, never read in the clear. The STARTTLS exchange and the
//! handshake count against the reading's one deadline.

mod client;
mod reply;
mod tls;

use std::time::Duration;

pub use client::NutClient;
pub use reply::{fuzz_reply, parse_list_var, ListVarReply, ReplyError, UpsReading, MAX_LINE, MAX_REPLY_BYTES, MAX_VARS};
pub use tls::{NutTls, TlsSetupError, MAX_CA_BYTES};

#[derive(Clone, Debug, thiserror::Error)]
pub enum NutError {
    #[error("the host name in {addr} does not resolve ({detail}): check power.ups")]
    Resolve { addr: String, detail: String },
    #[error("upsd at {addr} is not reachable ({detail}): is upsd running and listening there?")]
    Connect { addr: String, detail: String },
    #[error("upsd at {addr} accepted the connection but sent nothing within {timeout:?}")]
    Silent { addr: String, timeout: Duration },
    #[error("upsd at {addr} did not finish its answer within {timeout:?}")]
    Unfinished { addr: String, timeout: Duration },
    #[error("upsd at {addr} closed the connection before its answer was complete")]
    Closed { addr: String },
    #[error("the connection to upsd at {addr} failed: {detail}")]
    Io { addr: String, detail: String },
    #[error("upsd at {addr} {problem}")]
    Reply { addr: String, problem: ReplyError },
    #[error("UPS {ups} at {addr} reports no ups.status")]
    NoStatus { addr: String, ups: String },
    #[error(
        "upsd at {addr} did not take up TLS (it answered STARTTLS with {answer:?}): power.ups_ca is set, so ebb reads this UPS \
         only over TLS; give upsd a certificate (CERTPATH and CERTIDENT in upsd.conf)"
    )]
    NoTls { addr: String, answer: String },
    #[error("upsd at {addr} presented a certificate ebb does not trust ({detail}): {hint}")]
    Untrusted { addr: String, detail: String, hint: String },
    #[error("the TLS handshake with upsd at {addr} failed: {detail}")]
    Handshake { addr: String, detail: String },
}
