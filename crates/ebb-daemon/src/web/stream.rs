//! `GET /v1/stream`: the page's live feed, as server-sent events. First
//! `hello` (what the token may do), the hour's `history`, the `snapshot`
//! and the journal's last `events`; then each new snapshot, sample,
//! journal entry and farm view as it comes.

use super::{Grant, WebState};
use crate::api_types::Event;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Extension;
use serde::Serialize;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

/// A page is sent at most this many snapshots a second: the agent ticks
/// every 100 ms while a balloon moves, faster than anyone reads.
const MIN_GAP: Duration = Duration::from_millis(250);
/// Journal entries a page starts with.
const FIRST_EVENTS: usize = 200;
/// New entries are read and sent in batches of this many.
const NEW_EVENTS: usize = 500;

#[derive(Serialize)]
struct Hello {
    /// The token may act (sleep, wake, critical, value).
    write: bool,
    /// The farm is configured: `farm` events follow.
    farm: bool,
    sample_every_ms: u64,
}

type Tx = mpsc::Sender<Result<SseEvent, Infallible>>;

pub async fn stream(State(st): State<WebState>, Extension(grant): Extension<Grant>) -> impl IntoResponse {
    let (tx, rx) = mpsc::channel(32);
    tokio::spawn(async move {
        // Err: the page left.
        let _ = feed(&tx, st, grant).await;
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}

async fn send(tx: &Tx, name: &str, data: &impl Serialize) -> Result<(), ()> {
    let event = SseEvent::default().event(name).json_data(data).map_err(|_| ())?;
    tx.send(Ok(event)).await.map_err(|_| ())
}

async fn feed(tx: &Tx, st: WebState, grant: Grant) -> Result<(), ()> {
    let mut snapshot = st.api.snapshot.clone();
    let mut farm = st.farm.clone();
    send(tx, "hello", &Hello { write: grant == Grant::Write, farm: farm.is_some(), sample_every_ms: super::history::SAMPLE_EVERY.as_millis() as u64 }).await?;
    let (history, mut samples) = st.history.follow();
    send(tx, "history", &history).await?;
    let first = snapshot.borrow_and_update().clone();
    send(tx, "snapshot", &*first).await?;
    // A journal that cannot be read shows none rather than closing the feed.
    let mut events = st.api.journal.call(|j| j.events(None, FIRST_EVENTS)).await.unwrap_or_default();
    let mut last_id = events.first().map_or(0, |e| e.id);
    events.reverse();
    send(tx, "events", &events).await?;
    if let Some(f) = &mut farm {
        let view = f.borrow_and_update().clone();
        send(tx, "farm", &view).await?;
    }
    loop {
        tokio::select! {
            changed = snapshot.changed() => {
                changed.map_err(|_| ())?;
                let now = snapshot.borrow_and_update().clone();
                send(tx, "snapshot", &*now).await?;
                // Every entry since the last sent, however many the tick journaled.
                loop {
                    let after = last_id;
                    let new: Vec<Event> = st.api.journal.call(move |j| j.events_after(after, NEW_EVENTS)).await.unwrap_or_default();
                    let Some(newest) = new.last() else { break };
                    last_id = newest.id;
                    let full = new.len() == NEW_EVENTS;
                    send(tx, "events", &new).await?;
                    if !full {
                        break;
                    }
                }
                tokio::time::sleep(MIN_GAP).await;
            }
            sample = samples.recv() => match sample {
                Ok(s) => send(tx, "sample", &*s).await?,
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Err(()),
            },
            Some(changed) = async { match &mut farm { Some(f) => Some(f.changed().await), None => None } } => {
                changed.map_err(|_| ())?;
                if let Some(f) = &mut farm {
                    let view = f.borrow_and_update().clone();
                    send(tx, "farm", &view).await?;
                }
            }
            () = tx.closed() => return Err(()),
        }
    }
}

