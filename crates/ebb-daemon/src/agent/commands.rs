//! The API's commands, judged against the agent's own state.

use super::*;
use crate::journal::Kind;
use ebb_core::needs::HourNeeds;
use ebb_core::requests::{may_sleep, may_wake, Refusal};
use ebb_core::{Action, Millis, Reason, Rule, SleepMode, VmId};
use tokio::sync::oneshot;
use tracing::info;

/// Where a command's answer goes: what was done, or why not.
pub type Reply<T> = oneshot::Sender<Result<T, CommandError>>;

/// What the API asks of the agent.
pub enum Command {
    Sleep { vm: VmId, reply: Reply<()> },
    Wake { vm: VmId, reply: Reply<()> },
    /// A VM's needs history, hour by hour.
    Needs { vm: VmId, reply: Reply<Vec<HourNeeds>> },
    /// Sets or clears a VM's time-critical flag; the reply says what it means.
    Critical { vm: VmId, on: bool, reply: Reply<String> },
    /// Sets a VM's value for power drops (over the config's), or clears it.
    Value { vm: VmId, value: Option<u32>, reply: Reply<String> },
    /// A client agent's heartbeat: its client is active on the VM for the TTL.
    Heartbeat { name: String, beat: crate::api_types::Heartbeat, reply: Reply<ebb_core::clients::ClientView> },
}

/// Why a command was refused or failed. The API edge turns each into the
/// HTTP status that says what happened (`CommandError::kind`).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("no VM named {0} on this host")]
    UnknownVm(VmId),
    #[error("no VM named {0} on this host, and no history of one")]
    NoHistory(VmId),
    /// The VM is not in a state that allows it (`ebb_core::requests`).
    #[error("{vm} {why}")]
    Refused { vm: VmId, why: Refusal },
    #[error("the host is on low battery: ebb starts no VM until mains power is back")]
    LowBattery,
    #[error("libvirt is not reachable now: try again when `ebb status` says connected")]
    NotConnected,
    /// The action was tried and failed (journaled with its reason).
    #[error("{0}")]
    Failed(String),
    /// The request itself is wrong (400); the text says what.
    #[error("{0}")]
    BadRequest(String),
    #[error("could not record {what}: {source}")]
    Journal { what: &'static str, source: crate::journal::JournalError },
}

/// What kind of answer a `CommandError` is, for the API's status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No such VM (404).
    NotFound,
    /// The request is wrong (400).
    BadRequest,
    /// The VM or the host is not in a state that allows it (409).
    WrongState,
    /// libvirt is not reachable (503).
    Unavailable,
    /// Tried, and it failed (500).
    Failed,
}

impl CommandError {
    /// The core's refusal about `vm`, as the API says it.
    fn refused(vm: &VmId, why: Refusal) -> CommandError {
        match why {
            Refusal::Unknown => CommandError::UnknownVm(vm.clone()),
            Refusal::LowBattery => CommandError::LowBattery,
            why => CommandError::Refused { vm: vm.clone(), why },
        }
    }

    pub fn kind(&self) -> ErrorKind {
        use CommandError::*;
        match self {
            UnknownVm(_) | NoHistory(_) => ErrorKind::NotFound,
            Refused { .. } | LowBattery => ErrorKind::WrongState,
            NotConnected => ErrorKind::Unavailable,
            BadRequest(_) => ErrorKind::BadRequest,
            Failed(_) | Journal { .. } => ErrorKind::Failed,
        }
    }
}

impl Agent {
    /// Answers an API request: carries the action out at once.
    pub(super) async fn command(&mut self, cmd: Command) {
        let at = self.clock.now();
        match cmd {
            Command::Sleep { vm, reply } => {
                let known = self.vms.states.get(&vm).copied();
                let answer = match may_sleep(known, self.vms.sleeping.get(&vm).map(|r| r.mode)) {
                    Err(why) => Err(CommandError::refused(&vm, why)),
                    Ok(()) => {
                        let mode = self.vms.settings.get(&vm).and_then(|r| r.sleep.as_ref()).map_or(SleepMode::Save, |s| s.mode);
                        let reason = Reason::new(Rule::Sleep, format!("asked to sleep ({}) through the API", mode.as_str()));
                        self.act_now(Action::Sleep { vm, mode, reason }, at).await
                    }
                };
                let _ = reply.send(answer);
            }
            Command::Wake { vm, reply } => {
                let known = self.vms.states.get(&vm).copied();
                let answer = match may_wake(known, self.vms.sleeping.contains_key(&vm), self.power_is_low()) {
                    Err(why) => Err(CommandError::refused(&vm, why)),
                    Ok(()) => self.act_now(Action::Wake { vm, reason: Reason::new(Rule::Wake, "asked to wake through the API") }, at).await,
                };
                let _ = reply.send(answer);
            }
            Command::Needs { vm, reply } => {
                let answer = match self.realloc.needs.get(&vm) {
                    Some(n) => Ok(n.summary(&self.realloc.cfg)),
                    None if self.vms.states.contains_key(&vm) => Ok(vec![]),
                    None => Err(CommandError::NoHistory(vm)),
                };
                let _ = reply.send(answer);
            }
            Command::Critical { vm, on, reply } => {
                let _ = reply.send(self.set_critical(vm, on, at).await);
            }
            Command::Value { vm, value, reply } => {
                let _ = reply.send(self.set_value(vm, value, at).await);
            }
            Command::Heartbeat { name, beat, reply } => {
                let _ = reply.send(self.heartbeat(name, beat));
            }
        }
    }

    /// Carries one action out now and publishes the result.
    async fn act_now(&mut self, action: Action, at: Millis) -> Result<(), CommandError> {
        let outcome = self.act(vec![action], at).await.pop();
        self.republish();
        match outcome {
            Some((_, Ok(()))) => Ok(()),
            Some((_, Err(e))) => Err(CommandError::Failed(e)),
            None => Err(CommandError::NotConnected),
        }
    }

    async fn set_critical(&mut self, vm: VmId, on: bool, at: Millis) -> Result<String, CommandError> {
        if !self.vms.states.contains_key(&vm) {
            return Err(CommandError::UnknownVm(vm));
        }
        let id = vm.clone();
        self.journal.call(move |j| j.set_critical(&id, on, at)).await.map_err(|source| CommandError::Journal { what: "the flag", source })?;
        self.vms.critical.insert(vm.clone(), on);
        let text = if on { "marked time-critical: put first" } else { "no longer time-critical" };
        info!(vm = %vm, "{text}");
        self.journal_vm(&vm, at, Kind::Critical, Some(Rule::Critical), text, None, None);
        Ok(format!("{vm} {text}; ebb applies it at its next tick"))
    }

    async fn set_value(&mut self, vm: VmId, value: Option<u32>, at: Millis) -> Result<String, CommandError> {
        if !self.vms.states.contains_key(&vm) {
            return Err(CommandError::UnknownVm(vm));
        }
        let id = vm.clone();
        self.journal.call(move |j| j.set_value(&id, value, at)).await.map_err(|source| CommandError::Journal { what: "the value", source })?;
        let text = match value {
            Some(v) => {
                self.vms.values.insert(vm.clone(), v);
                format!("value {v} when power drops")
            }
            None => {
                self.vms.values.remove(&vm);
                match self.vms.settings.get(&vm).and_then(|r| Some((r.value?, r.sources.value))) {
                    Some((v, source)) => format!("value cleared: back to the {}'s {v}", source.as_str()),
                    None => "value cleared: not set (counted as 1)".to_string(),
                }
            }
        };
        info!(vm = %vm, "{text}");
        self.journal_vm(&vm, at, Kind::Value, Some(Rule::Power), &text, None, None);
        Ok(format!("{vm}: {text}; the plan follows at the next tick"))
    }
}
