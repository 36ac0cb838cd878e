//! A UPS read through upsd on threads of its own, so the tick never waits on it.

use super::PlatformError;
use crate::nut::{NutClient, NutError, UpsReading};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// A UPS served by upsd: `name@host:port`.
#[derive(Clone, Debug)]
pub struct UpsAddress {
    pub ups: String,
    pub client: NutClient,
}

/// Reads a UPS on threads of its own, so that the tick never waits on upsd:
/// each call takes the last finished reading and starts the next. A reading
/// is bounded as a whole (`power.timeout`), so the one a tick takes is at
/// most a tick and a reading old.
pub struct UpsPoller {
    ups: UpsAddress,
    /// The reading under way: when it started, and where its result comes.
    running: Option<(Instant, mpsc::Receiver<Result<UpsReading, NutError>>)>,
    last: Option<Result<UpsReading, NutError>>,
    /// When upsd last gave a reading (at first, when polling began).
    answered: SystemTime,
}

impl UpsPoller {
    pub fn new(ups: UpsAddress) -> UpsPoller {
        UpsPoller { ups, running: None, last: None, answered: SystemTime::now() }
    }

    /// How long a reading may run: its own deadline, plus a second for its
    /// thread to hand it over. Past it the reading is stuck, which its
    /// deadline should make impossible, and said so rather than trusted.
    fn bound(&self) -> Duration {
        self.ups.client.timeout() + Duration::from_secs(1)
    }

    fn start(&mut self) {
        let (tx, rx) = mpsc::channel();
        let UpsAddress { ups, client } = self.ups.clone();
        // A thread that cannot start drops `tx`: seen below as a reading without result.
        let _ = std::thread::Builder::new().name("ebb-ups".into()).spawn(move || {
            let _ = tx.send(client.read(&ups));
        });
        self.running = Some((Instant::now(), rx));
    }

    /// The UPS in words: `UPS name@host:port`, and whether it is read over TLS.
    pub(super) fn source(&self) -> String {
        let client = &self.ups.client;
        format!("UPS {}@{}{}", self.ups.ups, client.addr(), if client.tls().is_some() { " over TLS" } else { "" })
    }

    /// The last finished reading, or why there is none.
    pub fn reading(&mut self) -> Result<UpsReading, PlatformError> {
        if self.running.is_none() && self.last.is_none() {
            self.start();
        }
        if let Some((started, rx)) = &self.running {
            // The first reading is awaited (within its bound): the agent
            // needs to know its power source from its first tick on.
            let wait = match self.last {
                None => self.bound().saturating_sub(started.elapsed()),
                Some(_) => Duration::ZERO,
            };
            let done = match rx.recv_timeout(wait) {
                Ok(r) => Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => Some(Err(NutError::Io {
                    addr: self.ups.client.addr().to_string(),
                    detail: "the reading's thread ended without a result".into(),
                })),
            };
            if let Some(r) = done {
                if r.is_ok() {
                    self.answered = SystemTime::now();
                }
                self.last = Some(r);
                self.running = None;
            }
        }
        let stuck = self.running.as_ref().is_some_and(|(started, _)| started.elapsed() >= self.bound());
        if self.running.is_none() {
            self.start();
        }
        let since = utc_clock(self.answered);
        match (&self.last, stuck) {
            (Some(Ok(r)), false) => Ok(r.clone()),
            (Some(Err(e)), false) => Err(PlatformError::Ups { error: e.clone(), since }),
            _ => Err(PlatformError::UpsStale { addr: self.ups.client.addr().to_string(), since, bound: self.bound() }),
        }
    }
}

/// `HH:MM:SS` of a wall-clock time, UTC, as the CLI shows times.
fn utc_clock(t: SystemTime) -> String {
    let s = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}
