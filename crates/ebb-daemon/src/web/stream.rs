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
/// Entries read per snapshot to find the new ones: more than the agent
/// journals between two snapshots sent.
const NEW_EVENTS: usize = 100;

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
    let mut events = journal(&st, FIRST_EVENTS).await;
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
                // Newest first from the journal; sent oldest first.
                let new: Vec<Event> = journal(&st, NEW_EVENTS).await.into_iter().take_while(|e| e.id > last_id).collect();
                if let Some(newest) = new.first() {
                    last_id = newest.id;
                    send(tx, "events", &new.into_iter().rev().collect::<Vec<_>>()).await?;
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

/// The journal's newest entries; a journal that cannot be read shows
/// none rather than closing the page's feed.
async fn journal(st: &WebState, limit: usize) -> Vec<Event> {
    st.api.journal.call(move |j| j.events(None, limit)).await.unwrap_or_default()
}
