//! The journal's writer: one thread owns the connection the agent writes
//! through, so the agent never waits on the disk. A slow or full disk
//! stalls this thread, not the ticks, the API or SIGTERM.
//!
//! Writes are sent and forgotten: one that fails is kept and tried again
//! (before any later write, so the journal keeps their order) until it
//! goes through, the queue's bound is reached, or the agent stops. Calls
//! (a read, or a write whose caller must know it landed) queue behind the
//! writes sent before them, so a reader sees every write the agent made
//! before it asked; a failing write never holds a call back, so no API
//! client waits on a full disk.

use super::{Journal, JournalError};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// Writes kept while the journal fails, beyond which the oldest are dropped
/// (and counted): memory stays bounded through a long outage.
pub const MAX_WAITING: usize = 10_000;
/// How often waiting writes are tried again when nothing new arrives.
const RETRY_EVERY: Duration = Duration::from_secs(5);

type Write = Box<dyn FnMut(&Journal) -> Result<(), JournalError> + Send>;
type Call = Box<dyn FnOnce(&Journal) + Send>;

enum Message {
    Write(Write),
    Call(Call),
    Stop,
}

/// Where the agent and the API send their journal work. Cheap to clone.
#[derive(Clone)]
pub struct JournalHandle {
    tx: mpsc::Sender<Message>,
    path: Arc<PathBuf>,
    trouble: Arc<Mutex<Option<String>>>,
}

/// The writer thread; `stop` lets it finish what it holds.
pub struct JournalWriter {
    handle: JournalHandle,
    thread: std::thread::JoinHandle<()>,
}

impl JournalWriter {
    /// Moves `journal` onto its own thread.
    pub fn start(journal: Journal) -> JournalWriter {
        let (tx, rx) = mpsc::channel();
        let trouble = Arc::new(Mutex::new(None));
        let handle = JournalHandle { tx, path: Arc::new(journal.path().to_owned()), trouble: trouble.clone() };
        let thread = std::thread::Builder::new()
            .name("ebb-journal".into())
            .spawn(move || Queue { journal, waiting: VecDeque::new(), dropped: 0, trouble }.run(rx))
            .expect("cannot start the journal's thread");
        JournalWriter { handle, thread }
    }

    pub fn handle(&self) -> JournalHandle {
        self.handle.clone()
    }

    /// Writes what was sent before, then ends the thread. Blocks on the
    /// disk: call it off the async runtime (`spawn_blocking`).
    pub fn stop(self) {
        let _ = self.handle.tx.send(Message::Stop);
        let _ = self.thread.join();
    }
}

impl JournalHandle {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends a write; it lands in order, and is retried while it fails.
    pub fn write(&self, write: impl FnMut(&Journal) -> Result<(), JournalError> + Send + 'static) {
        if self.tx.send(Message::Write(Box::new(write))).is_err() {
            warn!("the journal has stopped: an entry was not written");
        }
    }

    /// Runs `f` on the journal after every write sent before it, and waits
    /// for its answer without blocking the runtime.
    pub async fn call<T: Send + 'static>(&self, f: impl FnOnce(&Journal) -> Result<T, JournalError> + Send + 'static) -> Result<T, JournalError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let call: Call = Box::new(move |j| {
            let _ = reply.send(f(j));
        });
        self.tx.send(Message::Call(call)).map_err(|_| JournalError::Stopped)?;
        answer.await.map_err(|_| JournalError::Stopped)?
    }

    /// Why writes are waiting, while they are.
    pub fn trouble(&self) -> Option<String> {
        self.trouble.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

struct Queue {
    journal: Journal,
    /// Writes not yet in the journal, oldest first.
    waiting: VecDeque<Write>,
    dropped: u64,
    trouble: Arc<Mutex<Option<String>>>,
}

impl Queue {
    fn run(mut self, rx: mpsc::Receiver<Message>) {
        loop {
            let message = if self.waiting.is_empty() { rx.recv().map_err(|_| RecvTimeoutError::Disconnected) } else { rx.recv_timeout(RETRY_EVERY) };
            match message {
                Ok(Message::Write(w)) => self.keep(w),
                Ok(Message::Call(call)) => {
                    self.flush();
                    call(&self.journal);
                    continue;
                }
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.flush();
        }
        self.flush();
        if !self.waiting.is_empty() {
            warn!("{} journal writes were lost at stop: {}", self.waiting.len(), self.trouble().unwrap_or_default());
        }
    }

    fn keep(&mut self, w: Write) {
        if self.waiting.len() >= MAX_WAITING {
            self.waiting.pop_front();
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                warn!("the journal has failed for {MAX_WAITING} writes: {} of the oldest dropped so far", self.dropped);
            }
        }
        self.waiting.push_back(w);
    }

    /// Writes the waiting writes in order, up to the first that fails.
    fn flush(&mut self) {
        while let Some(w) = self.waiting.front_mut() {
            if let Err(e) = w(&self.journal) {
                let text = format!("cannot write the journal ({} writes wait): {e}", self.waiting.len());
                if self.trouble().is_none() {
                    warn!("{text}");
                }
                *self.trouble.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
                return;
            }
            self.waiting.pop_front();
        }
        if self.trouble.lock().unwrap_or_else(|e| e.into_inner()).take().is_some() {
            info!("the journal is written again");
        }
    }

    fn trouble(&self) -> Option<String> {
        self.trouble.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Entry, Kind};
    use ebb_core::Millis;

    fn entry(text: &str) -> impl FnMut(&Journal) -> Result<(), JournalError> + Send + 'static {
        let text = text.to_owned();
        move |j| j.record(&Entry::event(Millis(1), Kind::Started, &text)).map(drop)
    }

    #[tokio::test]
    async fn a_call_sees_every_write_sent_before_it_and_stop_writes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let writer = JournalWriter::start(Journal::open(&path).unwrap());
        let h = writer.handle();
        for i in 0..100 {
            h.write(entry(&format!("e{i}")));
        }
        let n = h.call(|j| j.events(None, 1000)).await.unwrap().len();
        assert_eq!(n, 100);
        h.write(entry("last"));
        tokio::task::spawn_blocking(move || writer.stop()).await.unwrap();
        assert_eq!(Journal::open(&path).unwrap().events(None, 1).unwrap()[0].text, "last");
    }

    #[tokio::test]
    async fn on_a_full_journal_writes_wait_in_order_calls_are_answered_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let journal = Journal::open(&path).unwrap();
        // SQLite's own "database or disk is full": the journal may not grow.
        let pages: i64 = journal.conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        journal.conn.pragma_update(None, "max_page_count", pages).unwrap();
        let writer = JournalWriter::start(journal);
        let h = writer.handle();
        let texts: Vec<String> = (0..50).map(|i| format!("entry {i} {}", "x".repeat(200))).collect();
        for t in &texts {
            h.write(entry(t));
        }
        // A reader is answered at once, with what could be written.
        let written = h.call(|j| j.events(None, 1000)).await.unwrap().len();
        assert!(written < texts.len(), "the journal never filled: {written}");
        let trouble = h.trouble().expect("the trouble is shown");
        assert!(trouble.contains("the disk is full") && trouble.contains("writes wait"), "{trouble}");
        // Space comes back: the waiting writes land, in their order.
        h.call(|j| Ok(j.conn.pragma_update(None, "max_page_count", 1_000_000)?)).await.unwrap();
        h.write(entry("after"));
        let events = h.call(|j| j.events(None, 1000)).await.unwrap();
        let got: Vec<&str> = events.iter().rev().map(|e| e.text.as_str()).collect();
        let want: Vec<&str> = texts.iter().map(String::as_str).chain(["after"]).collect();
        assert_eq!(got, want);
        assert_eq!(h.trouble(), None);
        tokio::task::spawn_blocking(move || writer.stop()).await.unwrap();
    }
}
