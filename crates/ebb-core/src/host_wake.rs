//! Waking a sleeping host of the farm (seed 002), as the coordinator's
//! leader decides it. Pure: the leader reads the host from etcd, this says
//! the next step, the leader carries it out with etcd transactions (so a
//! host is woken once, whichever replica leads) and the wake methods.
//!
//! A host is woken when a client of it is active in the farm (a key under
//! its `clients/`: the gateway holding a connection, or another agent's
//! client) while it sleeps. Each send tries the host's methods in DPM's
//! order (IPMI, then Redfish, then Wake-on-LAN) until one is taken; the
//! wake is confirmed when the host's agent says `awake` again, re-sent
//! every `resend` until then, and given up after `give_up`: the host is
//! marked `wake-failed` and no longer put to sleep.

use crate::farm::HostState;
use crate::human::Span;
use crate::Millis;
use serde::{Deserialize, Serialize};

/// `hosts/{h}/waking`: a wake under way, written before each send so a new
/// leader carries it on rather than starting again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeRecord {
    pub started: Millis,
    /// Why: the clients that wait for the host.
    pub why: String,
    pub sends: u32,
    /// When the last send began (None before the first).
    pub last_send: Option<Millis>,
}

/// What the leader knows of one host.
#[derive(Debug, Clone)]
pub struct WakeFacts<'a> {
    pub now: Millis,
    pub state: Option<HostState>,
    /// Its active clients in the farm, by name.
    pub clients: Vec<&'a str>,
    pub has_method: bool,
    pub record: Option<&'a WakeRecord>,
}

/// The wake's timing (`[farm] wake_resend`, `wake_give_up`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WakeTiming {
    pub resend: Span,
    pub give_up: Span,
}

/// The leader's next step for one host.
#[derive(Debug, Clone, PartialEq)]
pub enum WakeStep {
    Nothing,
    /// Mark the host `waking` (only if it still sleeps), then send.
    Begin { why: String },
    /// Send again: the host has not said it is awake.
    Send,
    /// The host's agent said `awake`: the wake is done.
    Confirmed { took: Span },
    /// No answer by the deadline: mark it `wake-failed`.
    Fail { why: String },
}

pub fn step(t: WakeTiming, f: &WakeFacts) -> WakeStep {
    match (f.state, f.record) {
        (Some(HostState::Sleeping), _) if !f.clients.is_empty() => {
            let mut names: Vec<&str> = f.clients.clone();
            names.sort();
            let shown = names.iter().take(3).copied().collect::<Vec<_>>().join(", ");
            let more = if names.len() > 3 { format!(" and {} more", names.len() - 3) } else { String::new() };
            let why = format!("{} client(s) wait for it: {shown}{more}", names.len());
            if f.has_method {
                WakeStep::Begin { why }
            } else {
                WakeStep::Fail { why: format!("{why}, but it has no wake method") }
            }
        }
        (Some(HostState::Waking), Some(r)) => {
            let since = f.now.since(r.started);
            if since >= t.give_up.as_millis() {
                return WakeStep::Fail {
                    why: format!("it did not say it was awake within {} of the first send ({} send(s)); {}", t.give_up, r.sends, r.why),
                };
            }
            match r.last_send {
                Some(at) if f.now.since(at) < t.resend.as_millis() => WakeStep::Nothing,
                _ => WakeStep::Send,
            }
        }
        // Waking without a record: a leader died between the mark and the record; send.
        (Some(HostState::Waking), None) => WakeStep::Send,
        _ => WakeStep::Nothing,
    }
}

/// Whether a wake under way is done: the host's agent wrote `awake` (at
/// its join, or when it resumed) after the wake began.
pub fn confirmed(record: &WakeRecord, state: Option<HostState>, member_since: Option<Millis>, now: Millis) -> Option<WakeStep> {
    (state == Some(HostState::Awake) && member_since.is_some()).then(|| WakeStep::Confirmed { took: Span::from_millis(now.since(record.started)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: WakeTiming = WakeTiming { resend: Span::from_secs(30), give_up: Span::from_secs(300) };

    fn facts<'a>(state: HostState, clients: Vec<&'a str>, record: Option<&'a WakeRecord>) -> WakeFacts<'a> {
        WakeFacts { now: Millis(100_000), state: Some(state), clients, has_method: true, record }
    }

    #[test]
    fn a_sleeping_host_with_a_waiting_client_is_woken_and_one_without_is_not() {
        assert_eq!(step(T, &facts(HostState::Sleeping, vec![], None)), WakeStep::Nothing);
        let WakeStep::Begin { why } = step(T, &facts(HostState::Sleeping, vec!["gateway:10.0.0.9", "heartbeat:kiosk"], None)) else { panic!() };
        assert_eq!(why, "2 client(s) wait for it: gateway:10.0.0.9, heartbeat:kiosk");
        let many = vec!["e", "d", "c", "b", "a"];
        let WakeStep::Begin { why } = step(T, &facts(HostState::Sleeping, many, None)) else { panic!() };
        assert!(why.ends_with("a, b, c and 2 more"), "{why}");
        // Awake, draining, failed already: not the leader's to wake.
        for s in [HostState::Awake, HostState::Draining, HostState::WakeFailed] {
            assert_eq!(step(T, &facts(s, vec!["a"], None)), WakeStep::Nothing);
        }
        let mut f = facts(HostState::Sleeping, vec!["a"], None);
        f.has_method = false;
        assert!(matches!(step(T, &f), WakeStep::Fail { why } if why.contains("no wake method")));
    }

    #[test]
    fn a_wake_is_sent_again_until_the_deadline_then_given_up() {
        let mut r = WakeRecord { started: Millis(100_000), why: "1 client(s) wait for it: a".into(), sends: 0, last_send: None };
        let mut f = facts(HostState::Waking, vec!["a"], None);
        assert_eq!(step(T, &f), WakeStep::Send, "a new leader finding a mark without a record sends");
        f.record = Some(&r);
        assert_eq!(step(T, &f), WakeStep::Send, "the first send");
        r.sends = 1;
        r.last_send = Some(Millis(100_000));
        let mut f = facts(HostState::Waking, vec!["a"], Some(&r));
        f.now = Millis(129_999);
        assert_eq!(step(T, &f), WakeStep::Nothing);
        f.now = Millis(130_000);
        assert_eq!(step(T, &f), WakeStep::Send);
        f.now = Millis(400_000);
        let WakeStep::Fail { why } = step(T, &f) else { panic!() };
        assert!(why.contains("within 5m") && why.contains("1 send(s)"), "{why}");
    }

    #[test]
    fn the_wake_is_confirmed_by_the_agents_awake() {
        let r = WakeRecord { started: Millis(1_000), why: String::new(), sends: 1, last_send: Some(Millis(1_000)) };
        assert_eq!(confirmed(&r, Some(HostState::Waking), Some(Millis(0)), Millis(2_000)), None);
        assert_eq!(confirmed(&r, Some(HostState::Awake), None, Millis(2_000)), None, "awake with no agent is not yet");
        assert_eq!(confirmed(&r, Some(HostState::Awake), Some(Millis(1_500)), Millis(2_500)), Some(WakeStep::Confirmed { took: Span::from_millis(1_500) }));
    }
}
