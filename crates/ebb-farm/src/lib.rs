//! ebb's farm (seed 002, issue 11): hosts that share their state through
//! etcd (farm research §3 and §6). The store's keys and calls, each bounded
//! by a timeout; the agent's membership link, a task of its own; one
//! coordinator replica (`ebb coord`), elected through etcd's election API.
//! No store of ebb's own: etcd holds every shared fact, and a lease is
//! each timer (a host's membership, a client's activity).
#![forbid(unsafe_code)]

pub mod coord;
pub mod gateway;
mod error;
pub mod keys;
pub mod member;
pub mod mirror;
mod store;
mod view;
pub mod wake;

pub use error::FarmError;
pub use member::{LinkRequests, LinkState, LinkStatus, MemberLink, MemberSettings};
pub use mirror::ActiveClients;
pub use store::{Change, Drain, HostWatch, Lease, Store};
pub use ebb_core::farm::WakeSettings;
pub use view::{host_of, ClientEntry, FarmView, HostView, Member, Slept, Woke};
/// How a client was seen active: the agent's own kinds.
pub use ebb_core::clients::ClientKind;

/// Puts `value` in `tx` if it differs from what `tx` holds: a change wakes
/// the receivers (the farm link, a mirror), a repeat does not.
pub fn replace_if_changed<T: PartialEq>(tx: &tokio::sync::watch::Sender<T>, value: T) {
    tx.send_if_modified(|held| {
        let changed = *held != value;
        if changed {
            *held = value;
        }
        changed
    });
}

/// The wall clock as the farm's records carry it (shared by every host).
pub(crate) fn now() -> ebb_core::Millis {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    ebb_core::Millis(since_epoch.as_millis() as u64)
}
