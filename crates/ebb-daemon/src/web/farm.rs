//! The farm for the page (`ebb farm`'s view): read from etcd every few
//! seconds while the web view is on, on a task of its own so neither the
//! agent nor a page ever waits on etcd.

use ebb_core::farm::FarmConfig;
use ebb_farm::{FarmView, Store};
use serde::Serialize;
use std::time::Duration;
use tokio::sync::watch;

const EVERY: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FarmShown {
    /// Not read yet.
    Reading,
    View(FarmView),
    /// etcd could not be read, and why.
    Error(String),
}

/// Reads the farm until every receiver is gone.
pub fn watch(cfg: FarmConfig) -> watch::Receiver<FarmShown> {
    let (tx, rx) = watch::channel(FarmShown::Reading);
    tokio::spawn(async move {
        let timeout = cfg.timeout.as_duration();
        let mut store = None;
        while !tx.is_closed() {
            if store.is_none() {
                match Store::connect(&cfg.endpoints, timeout).await {
                    Ok(s) => store = Some(s),
                    Err(e) => ebb_farm::replace_if_changed(&tx, FarmShown::Error(e.to_string())),
                }
            }
            if let Some(s) = &store {
                match s.farm().await {
                    Ok(view) => ebb_farm::replace_if_changed(&tx, FarmShown::View(view)),
                    Err(e) => {
                        ebb_farm::replace_if_changed(&tx, FarmShown::Error(e.to_string()));
                        store = None;
                    }
                }
            }
            tokio::time::sleep(EVERY).await;
        }
    });
    rx
}
