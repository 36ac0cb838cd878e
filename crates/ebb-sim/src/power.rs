//! Host and VM types of CloudSim 3.0.3's PlanetLab setup, with the hosts'
//! SPECpower tables.

/// A host model: two PEs, a power table at 0, 10, …, 100 % CPU.
#[derive(Debug, PartialEq)]
pub struct HostType {
    pub name: &'static str,
    pub pe_mips: f64,
    pub pes: u32,
    pub ram_mb: u32,
    pub bw: u64,
    pub watts: [f64; 11],
}

impl HostType {
    pub fn total_mips(&self) -> f64 {
        self.pe_mips * self.pes as f64
    }

    /// Watts at `utilization` (0..=1), linear between the table's points,
    /// computed as `PowerModelSpecPower.getPower` does so that the sums
    /// match CloudSim's to the last bit.
    pub fn power(&self, utilization: f64) -> f64 {
        // CloudSim throws above 1; its own clamp lets 1.0..1.01 through as 1.
        let u = utilization.clamp(0.0, 1.0);
        if is_multiple_of_tenth(u) {
            return self.watts[(u * 10.0) as usize];
        }
        // floor and ceil of a non-negative value, without libm's calls.
        let lower = (u * 10.0) as usize;
        let upper = lower + usize::from(u * 10.0 > lower as f64);
        let delta = (self.watts[upper] - self.watts[lower]) / 10.0;
        self.watts[lower] + delta * (u - lower as f64 / 10.0) * 100.0
    }

    pub fn max_power(&self) -> f64 {
        self.power(1.0)
    }

    /// Energy (W·s) over `seconds` going from `from` to `to` utilisation: the
    /// mean of the two powers, and nothing for a host that was empty (off).
    pub fn energy(&self, from: f64, to: f64, seconds: f64) -> f64 {
        if from == 0.0 {
            return 0.0;
        }
        let p_from = self.power(from);
        let p_to = self.power(to);
        (p_from + (p_to - p_from) / 2.0) * seconds
    }
}

/// `u % 0.1 == 0.0` for `u` in 0..=1, the test Java's `getPower` makes,
/// without the `fmod` call (placement asks for powers of every host for
/// every VM it places). The remainder is exact, so it is 0 only for exact
/// multiples k · 0.1 of the double 0.1, and of k = 0..=10 only k = 0, 1, 2,
/// 4, 8 give a double (0.1 has 52 significant bits: an odd k > 1 needs more).
fn is_multiple_of_tenth(u: f64) -> bool {
    u == 0.0 || u == 0.1 || u == 0.2 || u == 0.4 || u == 0.8
}

pub const HP_ML110_G4: HostType = HostType {
    name: "HP ProLiant ML110 G4 (Xeon 3040)",
    pe_mips: 1860.0,
    pes: 2,
    ram_mb: 4096,
    bw: 1_000_000,
    watts: [86.0, 89.4, 92.6, 96.0, 99.5, 102.0, 106.0, 108.0, 112.0, 114.0, 117.0],
};

pub const HP_ML110_G5: HostType = HostType {
    name: "HP ProLiant ML110 G5 (Xeon 3075)",
    pe_mips: 2660.0,
    pes: 2,
    ram_mb: 4096,
    bw: 1_000_000,
    watts: [93.7, 97.0, 101.0, 105.0, 110.0, 116.0, 121.0, 125.0, 129.0, 133.0, 135.0],
};

/// Host *i* has type `i % 2`: G4 on even ids, G5 on odd ones.
pub const HOST_TYPES: [&HostType; 2] = [&HP_ML110_G4, &HP_ML110_G5];

/// A VM model (one PE each, 100 Mbit/s).
#[derive(Debug, PartialEq)]
pub struct VmType {
    pub name: &'static str,
    pub mips: f64,
    pub ram_mb: u32,
    pub bw: u64,
}

/// The four EC2-like types, in `Constants.VM_*` order: VM *i* of *n* has type
/// `i / ceil(n / 4)`.
pub const VM_TYPES: [VmType; 4] = [
    VmType {
        name: "high-cpu medium",
        mips: 2500.0,
        ram_mb: 870,
        bw: 100_000,
    },
    VmType {
        name: "extra large",
        mips: 2000.0,
        ram_mb: 1740,
        bw: 100_000,
    },
    VmType {
        name: "small",
        mips: 1000.0,
        ram_mb: 1740,
        bw: 100_000,
    },
    VmType {
        name: "micro",
        mips: 500.0,
        ram_mb: 613,
        bw: 100_000,
    },
];

pub fn vm_type_index(vm: usize, vm_count: usize) -> usize {
    vm / vm_count.div_ceil(VM_TYPES.len())
}

/// Seconds to migrate `ram_mb` over half a host's bandwidth (the other half
/// carries the VMs' traffic): 1 Gbit/s → 62.5 MB/s.
pub fn migration_seconds(ram_mb: u32, host_bw: u64) -> f64 {
    ram_mb as f64 / (host_bw as f64 / (2.0 * 8000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiples_of_a_tenth_are_what_the_remainder_says() {
        let mut values: Vec<f64> = Vec::new();
        for d in [10u32, 100, 1000, 3720, 5320, 7440, 10640, 65536] {
            values.extend((0..=d).map(|i| f64::from(i) / f64::from(d)));
        }
        for k in 0..=10u32 {
            let x = f64::from(k) / 10.0;
            let y = f64::from(k) * 0.1;
            for v in [x, y] {
                values.extend([v, f64::from_bits(v.to_bits() + 1), f64::from_bits(v.to_bits().saturating_sub(1))]);
            }
        }
        for u in values.into_iter().filter(|u| (0.0..=1.0).contains(u)) {
            assert_eq!(is_multiple_of_tenth(u), u % 0.1 == 0.0, "{u:e}");
        }
    }

    #[test]
    fn power_is_the_table_at_its_points_and_linear_between() {
        assert_eq!(HP_ML110_G4.power(0.0), 86.0);
        assert_eq!(HP_ML110_G4.power(1.0), 117.0);
        assert_eq!(HP_ML110_G5.power(0.5), 116.0);
        // Halfway between 40 % (99.5 W) and 50 % (102 W).
        assert!((HP_ML110_G4.power(0.45) - 100.75).abs() < 1e-9);
        // A quarter of the way from 90 % (133 W) to 100 % (135 W).
        assert!((HP_ML110_G5.power(0.925) - 133.5).abs() < 1e-9);
    }

    #[test]
    fn a_hosts_energy_over_an_interval_is_the_mean_power_times_the_time() {
        // G4 from 20 % (92.6 W) to 60 % (106 W) over 300 s: 99.3 W × 300 s.
        assert!((HP_ML110_G4.energy(0.2, 0.6, 300.0) - 29_790.0).abs() < 1e-6);
        // Coming up from empty (switched off) costs nothing for the interval.
        assert_eq!(HP_ML110_G4.energy(0.0, 0.6, 300.0), 0.0);
        // Going empty: the mean of the last power and the idle power.
        assert!((HP_ML110_G5.energy(0.1, 0.0, 100.0) - (97.0 + 93.7) / 2.0 * 100.0).abs() < 1e-6);
    }

    #[test]
    fn vm_types_are_four_equal_blocks_in_file_order() {
        assert_eq!(vm_type_index(0, 1052), 0);
        assert_eq!(vm_type_index(262, 1052), 0);
        assert_eq!(vm_type_index(263, 1052), 1);
        assert_eq!(vm_type_index(1051, 1052), 3);
        // 898 VMs: blocks of ceil(898/4) = 225.
        assert_eq!(vm_type_index(224, 898), 0);
        assert_eq!(vm_type_index(225, 898), 1);
        assert_eq!(vm_type_index(897, 898), 3);
    }

    #[test]
    fn migration_takes_ram_over_half_the_bandwidth() {
        assert!((migration_seconds(613, 1_000_000) - 9.808).abs() < 1e-9);
        assert!((migration_seconds(870, 1_000_000) - 13.92).abs() < 1e-9);
        assert!((migration_seconds(1740, 1_000_000) - 27.84).abs() < 1e-9);
    }
}
