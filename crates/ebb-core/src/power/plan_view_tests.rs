use super::*;
use crate::rates::ActivityRates;
use crate::{Activity, Millis};

fn vm(name: &str, state: VmState, vcpus: u32) -> VmObservation {
    let activity = Some(Activity { vcpus, ..Activity::default() });
    VmObservation { id: VmId::new(name), state, balloon: None, activity, persistent: true, managed_save: false, tune: None }
}

fn view(name: &str, cpu: f64, wait: f64, class: Option<Class>) -> VmReallocView {
    let rates = Some(ActivityRates { cpu, vcpu_wait: wait, ..ActivityRates::default() });
    VmReallocView { class, rates, ..VmReallocView::new(VmId::new(name)) }
}

const MODEL: PowerModel = PowerModel::Linear { idle: Watts(100.0), max: Watts(200.0) };

fn world() -> (Observation, Vec<VmReallocView>) {
    let obs = Observation {
        at: Millis(0),
        host_cpus: 4,
        vms: vec![vm("busy", VmState::Running, 2), vm("idle", VmState::Running, 1), vm("asleep", VmState::Running, 1), vm("off", VmState::ShutOff, 1)],
        ..Observation::default()
    };
    let views = vec![view("busy", 1.0, 1.5, Some(Class::CpuBound)), view("idle", 0.0, 0.0, Some(Class::Idle)), view("asleep", 1.0, 0.0, None), view("off", 0.0, 0.0, None)];
    (obs, views)
}

#[test]
fn each_running_vm_draws_what_it_asks_for_capped_at_its_vcpus_and_sleepers_are_left_out() {
    let (obs, views) = world();
    let p = plan_view(&obs, &views, |vm| vm.as_str() == "asleep", |vm| (vm.as_str() == "busy").then_some(5), &MODEL, Watts(500.0));
    let names: Vec<&str> = p.vms.iter().map(|c| c.vm.as_str()).collect();
    assert_eq!(names, ["busy", "idle"], "shut off and asleep VMs draw nothing");
    // busy asks for 1.0 run + 1.5 wait = 2.5, capped at its 2 vCPUs: half
    // the host's 4 CPUs, so half of the 100 W between idle and full load.
    assert_eq!(p.vms[0].draw, Watts(50.0));
    assert_eq!(p.vms[1].draw, Watts(0.0));
    assert_eq!((p.vms[0].value, p.vms[1].value), (5, 1), "no value counts as 1");
    assert_eq!(p.no_value, ["idle"]);
    assert!(p.vms[1].quiescent && !p.vms[0].quiescent);
    assert_eq!(p.host_idle, Watts(100.0));
    assert_eq!(p.plan.budget, Watts(500.0));
    // Everything fits 500 W: busy is kept, and only the quiescent one saved.
    assert_eq!((p.plan.keep.as_slice(), p.plan.save.as_slice()), ([VmId::new("busy")].as_slice(), [VmId::new("idle")].as_slice()));
}

#[test]
fn the_hosts_idle_power_comes_off_the_budget_first() {
    let (obs, views) = world();
    // 140 W leaves 40 W over idle: busy's 50 W does not fit.
    let p = plan_view(&obs, &views, |_| false, |_| None, &MODEL, Watts(140.0));
    assert!(p.plan.save.iter().any(|v| v.as_str() == "busy"), "{:?}", p.plan);
    assert_eq!(p.plan.budget, Watts(140.0), "the plan shows the whole budget");
}

#[test]
fn the_model_draw_counts_what_the_vms_use_now_not_their_wait() {
    let (obs, views) = world();
    // busy uses 1.0 (its 1.5 wait is not use), asleep 1.0: 2 of 4 CPUs.
    assert_eq!(model_draw(&obs, &views, &MODEL), Watts(150.0));
}
