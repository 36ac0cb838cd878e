//! Glue to the surrogate: VM power states in, traffic and refusals out.

use super::*;
use crate::journal::Kind;
use crate::api_types::SurrogateView;
use ebb_core::sleep::SurrogateTraffic;
use ebb_surrogate::{SurrogateEvent, VmPower};
use ebb_core::{Action, Reason, Rule, VmId};
use std::collections::BTreeMap;
use tracing::warn;

impl Agent {
    pub(super) fn set_power(&mut self, vm: &VmId, state: VmPower) {
        let _ = self.try_set_power(vm, state);
    }

    /// As `set_power`, with its error (only when the VM's ports could not
    /// be taken back from the kernel path), which it logs.
    pub(super) fn try_set_power(&mut self, vm: &VmId, state: VmPower) -> Result<(), String> {
        if self.surrogate.state(vm).is_some() {
            if let Err(e) = self.surrogate.set_state(vm, state) {
                warn!(vm = %vm, "{e}");
                return Err(e.to_string());
            }
        }
        Ok(())
    }

    /// The surrogate asks for a VM (a client needs it) or reports a refusal.
    pub(super) async fn surrogate_event(&mut self, ev: SurrogateEvent) {
        let at = self.clock.now();
        match ev {
            SurrogateEvent::WakeNeeded { vm, service, reason } => {
                if self.power_is_low() {
                    // The battery is for saving VMs, not for starting them.
                    self.set_power(&vm, VmPower::WakeFailed("the host is on low battery".into()));
                    return;
                }
                if !self.vms.sleeping.contains_key(&vm) {
                    // Not ebb's to wake (started by hand meanwhile): splice.
                    self.set_power(&vm, VmPower::Awake);
                    return;
                }
                let reason = Reason::new(Rule::Wake, format!("a client of its {service} service needs it ({reason})"));
                self.act(vec![Action::Wake { vm, reason }], at).await;
                self.republish();
            }
            SurrogateEvent::AwakePathFailed { vm, service, error } => {
                let text = format!("the kernel path failed for {service}, ebb splices it from now on: {error}");
                self.journal_vm(&vm, at, Kind::AwakePath, None, &text, None, None);
            }
            SurrogateEvent::ClientOpened { vm, peer, .. } => self.surrogate_client(&vm, peer, true),
            SurrogateEvent::ClientClosed { vm, peer, .. } => self.surrogate_client(&vm, peer, false),
            SurrogateEvent::Refused { vm, service, why } => {
                let last = self.refusal_journaled.get(&vm).copied().unwrap_or_default();
                if at.since(last) >= 1000 {
                    self.refusal_journaled.insert(vm.clone(), at);
                    let text = format!("refused a client of {service}: {why}");
                    warn!(vm = %vm, "{text}");
                    self.journal_vm(&vm, at, Kind::Refused, None, &text, None, None);
                }
            }
        }
    }

    pub(super) fn surrogate_view(&self, vm: &VmId) -> Option<SurrogateView> {
        let state = self.surrogate.state(vm)?;
        let st = self.surrogate.stats(vm).ok()?;
        Some(SurrogateView {
            state: state.to_string(),
            services: self.surrogate.services(vm).map(|s| s.iter().map(|s| format!("{} {}→{}", s.name, s.listen, s.backend)).collect()).unwrap_or_default(),
            open_connections: st.open_connections as u64,
            held_connections: st.held_connections as u64,
            answered_locally: st.answered_locally,
            refused: st.refused,
            bytes: st.bytes_in + st.bytes_out,
            awake_paths: self
                .surrogate
                .awake_routes(vm)
                .into_iter()
                .map(|r| match (r.path, r.active) {
                    ("kernel", true) => format!("{}: kernel, forwarding now ({}; {} connections so far)", r.service, r.why, r.kernel_connections),
                    ("kernel", false) => format!("{}: kernel once the VM is awake and answers, ebb splices until then ({})", r.service, r.why),
                    _ => format!("{}: {} ({})", r.service, r.path, r.why),
                })
                .collect(),
        })
    }

    /// Client traffic through the surrogate, for the idle detector.
    pub(super) fn traffic(&self) -> BTreeMap<VmId, SurrogateTraffic> {
        self.surrogate
            .vms()
            .filter_map(|vm| {
                let st = self.surrogate.stats(vm).ok()?;
                let held_open_counts = self.surrogate.services(vm)?.iter().any(|s| s.hold_open_counts_as_activity);
                let traffic = SurrogateTraffic {
                    bytes: st.bytes_in + st.bytes_out,
                    open_connections: st.open_connections as u32,
                    held: st.held_connections as u32,
                    held_open_counts,
                };
                Some((vm.clone(), traffic))
            })
            .collect()
    }
}
