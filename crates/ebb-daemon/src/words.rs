//! Words shared by the agent's journal, the API's explanations and the CLI
//! (a VM's state says its own: `VmState`'s Display).

use ebb_core::Millis;

/// A time of day (UTC) for people: `14:03:27`.
pub fn clock(at: Millis) -> String {
    let s = at.0 / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

