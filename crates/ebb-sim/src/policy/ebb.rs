//! `--policy ebb`: the data centre as `ebb_core::consolidate` sees it, and
//! its moves back as migrations.

use crate::datacenter::{Datacenter, HostId, VmId};
use ebb_core::consolidate::{Config, Consolidator, HostView, Move, VmView};
use ebb_core::power::PowerModel;

/// The policy and the hosts' power models.
pub struct Ebb {
    consolidator: Consolidator,
    models: Vec<PowerModel>,
}

fn host_views<'a>(dc: &Datacenter, models: &'a [PowerModel]) -> Vec<HostView<'a>> {
    dc.hosts
        .iter()
        .zip(models)
        .map(|(h, power)| HostView {
            capacity: h.total_mips(),
            per_vm_max: h.kind.pe_mips,
            ram_mb: u64::from(h.kind.ram_mb),
            power,
            on: h.util_mips > 0.0,
        })
        .collect()
}

/// The model's VMs: what they ask now, the RAM a host holds for them and the
/// RAM a migration copies. While placing, the VMs already placed count with
/// all their MIPS (what they will ask is not known yet) and the RAM they were
/// created with; afterwards with what they ask and the RAM the model's hosts
/// hold for them, none (the PlanetLab workload asks for none). No needs
/// history: a day of traces gives too few samples an hour.
fn vm_views(dc: &Datacenter, placing: bool) -> Vec<VmView> {
    dc.vms
        .iter()
        .map(|v| VmView {
            host: if v.gone { None } else { v.host },
            demand: if placing { v.mips } else { v.request },
            usual: None,
            ram_mb: u64::from(if placing { v.ram_mb } else { v.held_ram_mb() }),
            migrated_mb: u64::from(v.ram_mb),
        })
        .collect()
}

impl Ebb {
    pub fn new(dc: &Datacenter) -> Ebb {
        Ebb {
            consolidator: Consolidator::new(Config::default(), dc.hosts.len(), dc.vms.len()),
            models: dc.hosts.iter().map(|h| PowerModel::Table(h.kind.watts)).collect(),
        }
    }

    /// Where a VM goes at the start, asking all its MIPS.
    pub fn place(&self, dc: &Datacenter, vm: VmId) -> Option<HostId> {
        let hosts = host_views(dc, &self.models);
        let v = &dc.vms[vm];
        self.consolidator
            .place(&hosts, &vm_views(dc, true), v.mips, u64::from(v.ram_mb))
            .filter(|&h| dc.is_suitable(h, vm))
    }

    /// One decision: the migrations to start.
    pub fn optimize(&mut self, dc: &Datacenter) -> Vec<Move> {
        let hosts = host_views(dc, &self.models);
        self.consolidator.step(&hosts, &vm_views(dc, false))
    }
}
