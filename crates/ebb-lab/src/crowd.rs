//! A crowd of HTTP clients at once, each counted by how its request ended:
//! the service's own answer, a refusal that says why (ebb's `503`), a reset,
//! or lost (an empty close, a connect error, an answer that is not HTTP, or
//! nothing by the limit). For the surrogate's real-guest tests and `ebb bench
//! surrogate`. Run it where the address is reachable (`LabNet::run`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How one client's request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The service's answer: its status and body.
    Answered { status: u16, body: String },
    /// ebb's `503` and the reason it gave.
    Refused(String),
    Reset,
    Lost(String),
}

/// Every client's outcome and the time from its connect to its last byte.
#[derive(Clone, Debug, Default)]
pub struct Crowd {
    pub outcomes: Vec<(Outcome, Duration)>,
}

impl Crowd {
    pub fn answered(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Answered { status: 200..=299, .. }))
    }

    pub fn refused(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Refused(_) | Outcome::Reset))
    }

    /// Lost clients and answers that are not the service's success.
    pub fn lost(&self) -> usize {
        self.outcomes.len() - self.answered() - self.refused()
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.outcomes.iter().filter(|(o, _)| f(o)).count()
    }

    /// How many clients ended each way, by kind and reason.
    pub fn tally(&self) -> BTreeMap<String, usize> {
        let mut t = BTreeMap::new();
        for (o, _) in &self.outcomes {
            let key = match o {
                Outcome::Answered { status, .. } => format!("answered {status}"),
                Outcome::Refused(why) => format!("refused: {why}"),
                Outcome::Reset => "reset".into(),
                Outcome::Lost(how) => format!("lost: {how}"),
            };
            *t.entry(key).or_insert(0) += 1;
        }
        t
    }

    /// The slowest client, whatever its outcome.
    pub fn slowest(&self) -> Duration {
        self.outcomes.iter().map(|(_, t)| *t).max().unwrap_or_default()
    }

    /// The `p` quantile (0..=1) of the answered clients' times.
    pub fn answer_time(&self, p: f64) -> Option<Duration> {
        let mut t: Vec<Duration> = self
            .outcomes
            .iter()
            .filter(|(o, _)| matches!(o, Outcome::Answered { .. }))
            .map(|(_, t)| *t)
            .collect();
        t.sort();
        let i = ((t.len() as f64 * p).ceil() as usize).clamp(1, t.len().max(1)) - 1;
        t.get(i).copied()
    }
}

/// `n` clients at once, client `i` sending `GET path(i) HTTP/1.0` to `addr`
/// and reading until the server closes, each within `limit`.
pub fn run(addr: SocketAddr, n: usize, path: impl Fn(usize) -> String, limit: Duration) -> std::io::Result<Crowd> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let requests: Vec<String> = (0..n).map(|i| format!("GET {} HTTP/1.0\r\nHost: ebb-crowd\r\n\r\n", path(i))).collect();
    let outcomes = rt.block_on(async move {
        let tasks: Vec<_> = requests.into_iter().map(|req| tokio::spawn(one(addr, req, limit))).collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.unwrap_or((Outcome::Lost("client task failed".into()), limit)));
        }
        out
    });
    Ok(Crowd { outcomes })
}

async fn one(addr: SocketAddr, request: String, limit: Duration) -> (Outcome, Duration) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let ended = tokio::time::timeout(limit, async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        s.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    })
    .await;
    let outcome = match ended {
        Err(_) => Outcome::Lost(format!("no end within {} s", limit.as_secs())),
        Ok(Err(e)) if got.is_empty() && e.contains("reset") => Outcome::Reset,
        Ok(Err(e)) if got.is_empty() => Outcome::Lost(e),
        Ok(_) if got.is_empty() => Outcome::Lost("empty close".into()),
        Ok(_) => classify(&got),
    };
    (outcome, t0.elapsed())
}

/// An HTTP answer: ebb's refusal (a `503` with its `Retry-After`) or the
/// service's own.
fn classify(got: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(got);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Outcome::Lost(format!("not HTTP: {:?}", text.chars().take(60).collect::<String>()));
    };
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    if status == 503 && head.contains("Retry-After:") {
        return Outcome::Refused(body.trim().to_string());
    }
    Outcome::Answered { status, body: body.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_told_from_ebbs_refusals() {
        assert_eq!(
            classify(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n\r\nqueue full\n"),
            Outcome::Refused("queue full".into())
        );
        assert_eq!(classify(b"HTTP/1.0 200 OK\r\n\r\nhi"), Outcome::Answered { status: 200, body: "hi".into() });
        assert!(matches!(classify(b"SSH-2.0"), Outcome::Lost(_)));
        let c = Crowd {
            outcomes: vec![
                (Outcome::Answered { status: 200, body: String::new() }, Duration::from_secs(1)),
                (Outcome::Answered { status: 408, body: String::new() }, Duration::from_secs(3)),
                (Outcome::Reset, Duration::from_secs(2)),
            ],
        };
        assert_eq!((c.answered(), c.refused(), c.lost()), (1, 1, 1));
        assert_eq!(c.answer_time(0.99), Some(Duration::from_secs(3)));
        assert_eq!(c.slowest(), Duration::from_secs(3));
    }
}
