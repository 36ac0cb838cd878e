use super::*;
use crate::policy::ActionError;
use crate::power::Watts;

const LIMIT: Duration = Duration::from_secs(60);

fn vm(name: &str, handles: bool) -> RunningVm {
    RunningVm { id: VmId::new(name), handles_power_events: handles }
}

fn powers_off(after: &AfterSaves) -> bool {
    after.actions.iter().any(|a| matches!(a, Action::PowerOff { .. }))
}

fn ids(actions: &[Action]) -> Vec<&str> {
    actions.iter().filter_map(|a| a.vm()).map(VmId::as_str).collect()
}

#[test]
fn saves_those_that_cannot_handle_power_events_first_then_powers_off_once() {
    let mut seq = LowBatterySequence::default();
    let running = vec![vm("a", true), vm("b", false), vm("c", true)];
    let saves = seq.saves(running.clone(), "charge 10 %");
    assert_eq!(ids(&saves), ["b", "a", "c"]);
    assert!(saves.iter().all(|a| matches!(a, Action::Sleep { mode: SleepMode::Save, .. })));
    assert!(saves[0].reason().text.contains("low battery (charge 10 %)"));
    // Every save worked: the host powers down now, and only once.
    for save in &saves {
        seq.outcome(save, &Ok(()), Millis(1_000));
    }
    let after = seq.after_saves(&running, "charge 10 %", Millis(1_000), LIMIT);
    assert!(powers_off(&after) && after.actions.len() == 1 && after.overdue.is_empty(), "{after:?}");
    assert!(after.actions[0].reason().text.contains("low battery (charge 10 %)"));
    let again = seq.after_saves(&[], "charge 10 %", Millis(2_000), LIMIT);
    assert!(!powers_off(&again), "powered off twice");
}

#[test]
fn a_failed_save_asks_the_guest_to_shut_down_and_holds_the_power_off_until_it_stops() {
    let mut seq = LowBatterySequence::default();
    let running = vec![vm("a", true), vm("stuck", true)];
    let saves = seq.saves(running.clone(), "LB");
    assert_eq!(saves.len(), 2);
    seq.outcome(&saves[1], &Err(ActionError::Failed("refused".into())), Millis(0));
    // Another policy's failed action is none of its business.
    seq.outcome(&Action::Shutdown { vm: VmId::new("a"), reason: saves[0].reason().clone() }, &Err(ActionError::Failed("refused".into())), Millis(0));
    let after = seq.after_saves(&running, "LB", Millis(0), LIMIT);
    assert_eq!(ids(&after.actions), ["stuck"]);
    assert!(matches!(after.actions[..], [Action::Shutdown { .. }]));
    assert!(!powers_off(&after), "the host powered down under a VM that still runs");

    // Next tick: it is shutting down, so it is not saved again, and the
    // host stays up while it runs; asked once only.
    let still = vec![vm("stuck", true)];
    assert!(seq.saves(still.clone(), "LB").is_empty());
    let after = seq.after_saves(&still, "LB", Millis(30_000), LIMIT);
    assert_eq!(after, AfterSaves::default());

    // Past the limit it is reported overdue, once; the host still stays up.
    let after = seq.after_saves(&still, "LB", Millis(60_000), LIMIT);
    assert_eq!(after.overdue, [VmId::new("stuck")]);
    assert!(!powers_off(&after));
    let after = seq.after_saves(&still, "LB", Millis(90_000), LIMIT);
    assert!(after.overdue.is_empty(), "reported overdue twice");

    // Once it has stopped, nothing runs: the host powers down.
    let after = seq.after_saves(&[], "LB", Millis(95_000), LIMIT);
    assert!(powers_off(&after));
}

#[test]
fn mains_back_starts_the_next_low_battery_afresh() {
    let mut seq = LowBatterySequence::default();
    let running = vec![vm("stuck", true)];
    let saves = seq.saves(running.clone(), "LB");
    seq.outcome(&saves[0], &Err(ActionError::Failed("refused".into())), Millis(0));
    seq.after_saves(&running, "LB", Millis(0), LIMIT);
    assert!(seq.saves(running.clone(), "LB").is_empty());
    seq.mains_back();
    assert_eq!(seq.saves(running.clone(), "LB").len(), 1, "a VM is saved again in a new event");
    assert!(powers_off(&seq.after_saves(&running, "LB", Millis(1), LIMIT)));
}

#[test]
fn restores_the_most_valuable_first_and_equal_values_by_name() {
    let saved = vec![(VmId::new("b"), 1), (VmId::new("a"), 1), (VmId::new("db"), 9)];
    let wakes = restores(&saved);
    assert_eq!(ids(&wakes), ["db", "a", "b"]);
    assert!(wakes.iter().all(|a| matches!(a, Action::Wake { .. })));
    assert!(restores(&[]).is_empty());
}

#[test]
fn a_power_drop_saves_what_the_plan_drops_and_names_what_it_keeps() {
    let plan = PowerPlan { budget: Watts(120.0), keep: vec![VmId::new("db")], save: vec![VmId::new("batch"), VmId::new("ci")], ..PowerPlan::default() };
    let saves = power_drop_saves(&plan);
    assert_eq!(ids(&saves), ["batch", "ci"]);
    assert!(saves[0].reason().text.contains("keeping the most valuable VMs that fit (db)"), "{}", saves[0].reason().text);
    let none = PowerPlan { budget: Watts(10.0), save: vec![VmId::new("db")], ..PowerPlan::default() };
    assert!(power_drop_saves(&none)[0].reason().text.ends_with("(none)"));
}
