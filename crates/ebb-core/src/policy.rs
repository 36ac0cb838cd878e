//! The contract every policy keeps with the agent: `decide` returns a
//! `Decision` (the actions, one view per thing it looked at, and what it
//! makes of the host where it has something to say), and the agent reports
//! each action's outcome once, to every policy, through `Policy::outcome`.
//! A policy learns from its own actions and ignores the others'.

use crate::model::Action;
use crate::units::Millis;
use std::fmt;

/// One tick's decision of one policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision<V, H = ()> {
    /// What to carry out, in the order the policy wants it.
    pub actions: Vec<Action>,
    /// One view per VM (or device) the policy looked at, for `ebb vms`,
    /// `ebb power` and `ebb explain`.
    pub views: Vec<V>,
    /// What the policy makes of the host as a whole (the memory pool, the
    /// CPUs' demand, the CPU frequency policy); `()` for most.
    pub host: H,
}

/// Empty, whatever the views (derived, it would ask `V: Default`).
impl<V, H: Default> Default for Decision<V, H> {
    fn default() -> Self {
        Decision { actions: vec![], views: vec![], host: H::default() }
    }
}

/// Why the agent could not carry an action out, as much as a policy needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionError {
    /// The hypervisor refused the bandwidth part of a `SetTune` before
    /// touching the rest: the host cannot shape this VM's traffic.
    Bandwidth(String),
    /// Anything else, in words.
    Failed(String),
}

impl fmt::Display for ActionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActionError::Bandwidth(e) | ActionError::Failed(e) => f.write_str(e),
        }
    }
}

/// How an action went.
pub type Outcome = Result<(), ActionError>;

pub trait Policy {
    /// The agent carried `action` out (or tried): called once per action
    /// of any policy. A host action carried out in parts (a `CpuRestore`
    /// whose writes partly failed) is reported once per part, each part
    /// as an action of its own.
    fn outcome(&mut self, action: &Action, result: &Outcome, at: Millis);
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
