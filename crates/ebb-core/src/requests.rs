//! What an operator may ask of a VM now (`ebb sleep`, `ebb wake`), judged
//! against what ebb knows of it: its state after ebb's own actions, never
//! the published snapshot (which lags), and whether ebb holds it asleep.

use crate::{Action, SleepMode, VmState};

/// A VM's state as the agent knows it: from the last observation, then
/// from each of its own actions that succeeded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KnownState {
    pub state: VmState,
    pub managed_save: bool,
}

impl KnownState {
    /// The state a VM is in once `action` succeeded on it; None for an
    /// action that does not change it.
    pub fn after(action: &Action) -> Option<KnownState> {
        match action {
            Action::Sleep { mode: SleepMode::Save, .. } => Some(KnownState { state: VmState::ShutOff, managed_save: true }),
            Action::Sleep { mode: SleepMode::Pause, .. } => Some(KnownState { state: VmState::Paused, managed_save: false }),
            Action::Wake { .. } => Some(KnownState { state: VmState::Running, managed_save: false }),
            _ => None,
        }
    }
}

/// Why a request about a VM is refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("is unknown")]
    Unknown,
    #[error("is asleep already ({})", .0.as_str())]
    AsleepAlready(SleepMode),
    #[error("is {0}: only a running VM can be put to sleep")]
    NotRunning(VmState),
    #[error("is not asleep: it is awake already")]
    AwakeAlready,
    #[error("is shut off with no saved state: ebb wakes a VM that sleeps (saved or paused); start it with virsh start")]
    ShutOffWithoutSave,
    #[error("is {0}: only a saved or paused VM can be woken")]
    CannotWake(VmState),
    #[error("cannot start while the host is on low battery")]
    LowBattery,
}

/// A VM may be put to sleep when it runs and ebb does not hold it asleep.
pub fn may_sleep(known: Option<KnownState>, asleep: Option<SleepMode>) -> Result<(), Refusal> {
    match (known, asleep) {
        (None, _) => Err(Refusal::Unknown),
        (Some(_), Some(mode)) => Err(Refusal::AsleepAlready(mode)),
        (Some(KnownState { state: VmState::Running, .. }), None) => Ok(()),
        (Some(k), None) => Err(Refusal::NotRunning(k.state)),
    }
}

/// Only what sleeps wakes: ebb's own sleepers, a paused VM, a managed
/// save; never a cold boot of a VM someone shut off, and nothing starts on
/// low battery.
pub fn may_wake(known: Option<KnownState>, asleep: bool, power_low: bool) -> Result<(), Refusal> {
    if power_low {
        return Err(Refusal::LowBattery);
    }
    match known {
        _ if asleep => Ok(()),
        None => Err(Refusal::Unknown),
        Some(KnownState { state: VmState::Paused, .. } | KnownState { state: VmState::ShutOff, managed_save: true }) => Ok(()),
        Some(KnownState { state: VmState::Running, .. }) => Err(Refusal::AwakeAlready),
        Some(KnownState { state: VmState::ShutOff, .. }) => Err(Refusal::ShutOffWithoutSave),
        Some(k) => Err(Refusal::CannotWake(k.state)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Reason, Rule, VmId};

    const RUNNING: KnownState = KnownState { state: VmState::Running, managed_save: false };
    const PAUSED: KnownState = KnownState { state: VmState::Paused, managed_save: false };
    const SAVED: KnownState = KnownState { state: VmState::ShutOff, managed_save: true };
    const OFF: KnownState = KnownState { state: VmState::ShutOff, managed_save: false };

    #[test]
    fn only_a_running_vm_not_held_asleep_may_be_put_to_sleep() {
        assert_eq!(may_sleep(Some(RUNNING), None), Ok(()));
        assert_eq!(may_sleep(None, None), Err(Refusal::Unknown));
        assert_eq!(may_sleep(Some(SAVED), Some(SleepMode::Save)), Err(Refusal::AsleepAlready(SleepMode::Save)));
        // Asking twice: the second is judged on the state the first left.
        let after = KnownState::after(&Action::Sleep { vm: VmId::new("a"), mode: SleepMode::Pause, reason: Reason::new(Rule::Sleep, "t") });
        assert_eq!(after, Some(PAUSED));
        assert_eq!(may_sleep(after, None), Err(Refusal::NotRunning(VmState::Paused)));
        assert_eq!(may_sleep(Some(OFF), None), Err(Refusal::NotRunning(VmState::ShutOff)));
    }

    #[test]
    fn only_what_sleeps_wakes_and_nothing_on_low_battery() {
        assert_eq!(may_wake(Some(SAVED), true, false), Ok(()));
        assert_eq!(may_wake(None, true, false), Ok(()), "ebb's own sleeper, whatever was observed");
        assert_eq!(may_wake(Some(PAUSED), false, false), Ok(()));
        assert_eq!(may_wake(Some(SAVED), false, false), Ok(()), "a managed save made outside ebb");
        assert_eq!(may_wake(Some(RUNNING), false, false), Err(Refusal::AwakeAlready));
        assert_eq!(may_wake(Some(OFF), false, false), Err(Refusal::ShutOffWithoutSave), "never a cold boot");
        assert_eq!(may_wake(None, false, false), Err(Refusal::Unknown));
        assert_eq!(may_wake(Some(KnownState { state: VmState::Other, managed_save: false }), false, false), Err(Refusal::CannotWake(VmState::Other)));
        assert_eq!(may_wake(Some(SAVED), true, true), Err(Refusal::LowBattery));
    }
}
