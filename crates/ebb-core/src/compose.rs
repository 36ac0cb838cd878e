//! One tick's actions from every policy's decision, in the order the agent
//! carries them out.

use crate::{Action, VmId};

/// The policies' actions this tick (each decision's `actions`). A policy
/// that is off (or had nothing to decide on) gives none.
#[derive(Default)]
pub struct Decided<'a> {
    pub memory: &'a [Action],
    /// Reallocation, affinity and vCPUs: changes to a running VM's CPUs.
    pub cpus: Vec<&'a [Action]>,
    /// The idle policy's `Sleep`s.
    pub sleep: &'a [Action],
}

/// Memory first (it frees what others need), then the CPU changes except
/// for a VM about to sleep (nothing to gain from them), then the sleeps of
/// VMs not asleep already.
pub fn compose(d: &Decided, asleep: impl Fn(&VmId) -> bool) -> Vec<Action> {
    let to_sleep: Vec<&VmId> = d.sleep.iter().filter_map(Action::vm).collect();
    let cpus = d.cpus.iter().flat_map(|a| a.iter()).filter(|a| a.vm().is_none_or(|vm| !to_sleep.contains(&vm)));
    let sleeps = d.sleep.iter().filter(|a| a.vm().is_none_or(|vm| !asleep(vm)));
    d.memory.iter().chain(cpus).chain(sleeps).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Bytes, Reason, Rule, SleepMode, Tune};

    fn reason() -> Reason {
        Reason::new(Rule::Sleep, "test")
    }

    #[test]
    fn memory_first_then_cpus_but_not_for_a_vm_about_to_sleep_then_new_sleeps() {
        let (a, b, c) = (VmId::new("a"), VmId::new("b"), VmId::new("c"));
        let memory = [Action::SetBalloonTarget { vm: a.clone(), target: Bytes::from_mib(512), reason: reason() }];
        let tune = |vm: &VmId| Action::SetTune { vm: vm.clone(), tune: Tune { shares: 100, quota_us: None, period_us: 100_000, io_weight: None, net: None, disk_limit: None }, reason: reason() };
        let realloc = [tune(&a), tune(&b)];
        let vcpus = [Action::SetGuestVcpus { vm: b.clone(), count: 1, reason: reason() }];
        let sleep = [
            Action::Sleep { vm: b.clone(), mode: SleepMode::Save, reason: reason() },
            Action::Sleep { vm: c.clone(), mode: SleepMode::Pause, reason: reason() },
        ];
        let d = Decided { memory: &memory, cpus: vec![&realloc, &vcpus], sleep: &sleep };
        let actions = compose(&d, |vm| vm == &c);
        let shown: Vec<(&str, &str)> = actions.iter().map(|a| (a.kind(), a.vm().map_or("", VmId::as_str))).collect();
        assert_eq!(shown, [("set_balloon_target", "a"), ("set_tune", "a"), ("sleep", "b")]);
        assert!(compose(&Decided::default(), |_| false).is_empty());
    }
}
