//! Words shared by the agent's journal, the API's explanations and the CLI.

use ebb_core::{Millis, VmState};

/// A time of day (UTC) for people: `14:03:27`.
pub fn clock(at: Millis) -> String {
    let s = at.0 / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// Plain-words state of a VM for `ebb vms`.
pub fn vm_state_word(s: VmState) -> &'static str {
    match s {
        VmState::Running => "running",
        VmState::Paused => "paused",
        VmState::ShutOff => "shut off",
        VmState::Other => "other",
    }
}
