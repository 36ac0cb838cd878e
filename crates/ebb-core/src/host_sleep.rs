//! When a host of a farm sleeps (seed 002): once no client of its VMs has
//! been active for the grace period, its VMs are saved and the host enters
//! a low-power state. Pure: the agent gathers the facts, this decides, and
//! the etcd transaction that follows checks the shared count once more.
//!
//! The guards are DPM's and Horizon's (farm research §1): a grace period
//! after the last client, a minimum time awake after each wake, a cap on
//! sleep cycles per hour, and never a host nothing can wake.

use crate::human::{FieldError, Span};
use crate::{Millis, VmId};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The window the cycle cap counts sleeps in.
pub const CYCLE_WINDOW: Span = Span::from_secs(3600);

/// `[farm.sleep]`: the host may sleep; absent, it never does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSleepConfig {
    /// The grace period: no active client for this long before the host sleeps.
    #[serde(default = "default_after")]
    pub after: Span,
    /// After it wakes (or its agent starts), the host stays awake at least this long.
    #[serde(default = "default_min_awake")]
    pub min_awake: Span,
    /// At most this many sleeps in any hour: a host whose clients come and
    /// go does not flap.
    #[serde(default = "default_max_per_hour")]
    pub max_per_hour: u32,
    /// Which low-power state the host enters (what `command` does).
    #[serde(default)]
    pub state: LowPower,
    /// The command that puts the host in that state, e.g. `["systemctl",
    /// "suspend"]`. Without it the sleep is recorded and the host stays up.
    #[serde(default)]
    pub command: Option<Vec<String>>,
}

fn default_after() -> Span {
    Span::from_secs(15 * 60)
}

fn default_min_awake() -> Span {
    Span::from_secs(30 * 60)
}

fn default_max_per_hour() -> u32 {
    2
}

impl HostSleepConfig {
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.max_per_hour == 0 {
            return Err(FieldError::new("farm.sleep.max_per_hour", "farm.sleep.max_per_hour is 0: remove [farm.sleep] to keep the host awake, or allow at least 1"));
        }
        if self.command.as_ref().is_some_and(|c| c.is_empty() || c[0].is_empty()) {
            return Err(FieldError::new("farm.sleep.command", "farm.sleep.command is empty: give the command and its arguments, e.g. [\"systemctl\", \"suspend\"]"));
        }
        Ok(())
    }
}

/// The host's low-power state while it sleeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LowPower {
    /// Suspend to RAM (ACPI S3): resumes in seconds; Wake-on-LAN needs the
    /// NIC armed for it (`ethtool -s IF wol g`).
    #[default]
    Suspend,
    /// Off (ACPI S5): woken by its BMC, or by WoL where the BIOS allows it from S5.
    PowerOff,
}

impl LowPower {
    pub fn as_str(self) -> &'static str {
        match self {
            LowPower::Suspend => "suspend",
            LowPower::PowerOff => "power-off",
        }
    }
}

/// What the host knows when it asks whether to sleep.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub now: Millis,
    /// Its VMs' clients with an unexpired timer.
    pub active_clients: usize,
    /// Since when no client has been active (None while one is).
    pub idle_since: Option<Millis>,
    /// Since when the host has been awake: its last wake, or its agent's start.
    pub awake_since: Millis,
    /// When it went to sleep recently (older ones are ignored).
    pub recent_sleeps: Vec<Millis>,
    /// How many ways the farm has to wake it (IPMI, Redfish, WoL).
    pub wake_methods: usize,
    /// Why the host is not a member of the farm now, if it is not: the
    /// shared count cannot be checked, so it stays awake.
    pub not_member: Option<String>,
    /// Something else holds the host awake now (a power event, a sleep
    /// being undone), in words.
    pub busy: Option<String>,
    /// Running VMs that cannot be saved (transient ones), and why: ebb
    /// never stops a VM it could not save.
    pub unsaveable: Vec<(VmId, String)>,
}

/// Whether the host sleeps now.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Sleep: the count has been zero for the grace period and no guard holds.
    Sleep { why: String },
    Awake(Awake),
}

/// Why the host stays awake.
#[derive(Debug, Clone, PartialEq)]
pub enum Awake {
    /// `[farm.sleep]` is not configured.
    NotConfigured,
    /// Nothing could wake it again: never put to sleep.
    NoWakeMethod,
    NotMember(String),
    Busy(String),
    Clients(usize),
    /// No client; the host sleeps in `left` unless one comes.
    Grace { left: Span },
    MinAwake { left: Span },
    CycleCap { sleeps: usize, left: Span },
    Unsaveable { vm: VmId, why: String },
}

impl fmt::Display for Awake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Awake::NotConfigured => write!(f, "host sleep is not configured ([farm.sleep])"),
            Awake::NoWakeMethod => write!(f, "no wake method is configured ([farm.wake]: ipmi, redfish or mac), so the host is never put to sleep"),
            Awake::NotMember(why) => write!(f, "the farm's shared count cannot be checked ({why}): the host stays awake"),
            Awake::Busy(why) => write!(f, "{why}"),
            Awake::Clients(1) => write!(f, "1 client is active"),
            Awake::Clients(n) => write!(f, "{n} clients are active"),
            Awake::Grace { left } => write!(f, "no client is active: the host sleeps in {left} unless one comes (farm.sleep.after)"),
            Awake::MinAwake { left } => write!(f, "no client is active, but the host stays awake {left} more (farm.sleep.min_awake after its last wake)"),
            Awake::CycleCap { sleeps, left } => {
                write!(f, "no client is active, but the host slept {sleeps} times in the last hour (farm.sleep.max_per_hour): it may sleep again in {left}")
            }
            Awake::Unsaveable { vm, why } => write!(f, "{vm} cannot be saved ({why}), and ebb never stops a VM it could not save"),
        }
    }
}

/// Decides whether the host sleeps now.
pub fn decide(cfg: Option<&HostSleepConfig>, f: &HostFacts) -> Verdict {
    let Some(cfg) = cfg else { return Verdict::Awake(Awake::NotConfigured) };
    let awake = |why| Verdict::Awake(why);
    if f.wake_methods == 0 {
        return awake(Awake::NoWakeMethod);
    }
    if let Some(why) = &f.not_member {
        return awake(Awake::NotMember(why.clone()));
    }
    if let Some(why) = &f.busy {
        return awake(Awake::Busy(why.clone()));
    }
    let Some(idle_since) = f.idle_since.filter(|_| f.active_clients == 0) else {
        return awake(Awake::Clients(f.active_clients.max(1)));
    };
    let grace_ends = idle_since.plus(cfg.after.as_millis());
    if f.now < grace_ends {
        return awake(Awake::Grace { left: Span::from_millis(grace_ends.since(f.now)) });
    }
    let min_awake_ends = f.awake_since.plus(cfg.min_awake.as_millis());
    if f.now < min_awake_ends {
        return awake(Awake::MinAwake { left: Span::from_millis(min_awake_ends.since(f.now)) });
    }
    let mut within: Vec<Millis> = f.recent_sleeps.iter().copied().filter(|t| f.now.since(*t) < CYCLE_WINDOW.as_millis()).collect();
    within.sort();
    if within.len() >= cfg.max_per_hour as usize {
        // The oldest sleep in the window must leave it first.
        let until = within[within.len() - cfg.max_per_hour as usize].plus(CYCLE_WINDOW.as_millis());
        return awake(Awake::CycleCap { sleeps: within.len(), left: Span::from_millis(until.since(f.now)) });
    }
    if let Some((vm, why)) = f.unsaveable.first() {
        return awake(Awake::Unsaveable { vm: vm.clone(), why: why.clone() });
    }
    let idle_for = Span::from_millis(f.now.since(idle_since));
    Verdict::Sleep { why: format!("no client has been active for {idle_for} (farm.sleep.after = {})", cfg.after) }
}

/// The sleeps the cycle cap still counts at `now`.
pub fn recent(sleeps: &[Millis], now: Millis) -> Vec<Millis> {
    sleeps.iter().copied().filter(|t| now.since(*t) < CYCLE_WINDOW.as_millis()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn cfg() -> HostSleepConfig {
        HostSleepConfig { after: Span::from_secs(600), min_awake: Span::from_secs(1800), max_per_hour: 2, state: LowPower::Suspend, command: None }
    }

    /// Awake since 0, idle since 10 min, asked at 45 min: a host that sleeps.
    fn facts() -> HostFacts {
        HostFacts {
            now: Millis(45 * MIN),
            active_clients: 0,
            idle_since: Some(Millis(10 * MIN)),
            awake_since: Millis(0),
            recent_sleeps: vec![],
            wake_methods: 1,
            not_member: None,
            busy: None,
            unsaveable: vec![],
        }
    }

    fn awake(f: &HostFacts) -> Awake {
        match decide(Some(&cfg()), f) {
            Verdict::Awake(a) => a,
            Verdict::Sleep { why } => panic!("slept: {why}"),
        }
    }

    #[test]
    fn an_idle_host_sleeps_after_the_grace_period_and_says_why() {
        let Verdict::Sleep { why } = decide(Some(&cfg()), &facts()) else { panic!() };
        assert!(why.contains("35m") || why.contains("2100"), "{why}");
        let mut f = facts();
        f.now = Millis(19 * MIN);
        f.awake_since = Millis(0);
        f.idle_since = Some(Millis(10 * MIN));
        // Within min_awake as well, but the grace period is said first.
        assert_eq!(awake(&f), Awake::Grace { left: Span::from_secs(60) });
        f.now = Millis(20 * MIN);
        assert_eq!(awake(&f), Awake::MinAwake { left: Span::from_secs(600) });
        f.now = Millis(30 * MIN);
        assert!(matches!(decide(Some(&cfg()), &f), Verdict::Sleep { .. }));
    }

    #[test]
    fn an_active_client_keeps_it_awake() {
        let mut f = facts();
        f.active_clients = 2;
        assert_eq!(awake(&f), Awake::Clients(2));
        // A count of zero without a time it became zero is a client that just left.
        f.active_clients = 0;
        f.idle_since = None;
        assert_eq!(awake(&f), Awake::Clients(1));
    }

    #[test]
    fn nothing_sleeps_a_host_that_nothing_can_wake_or_that_is_not_a_member() {
        let mut f = facts();
        f.wake_methods = 0;
        assert_eq!(awake(&f), Awake::NoWakeMethod);
        assert!(Awake::NoWakeMethod.to_string().contains("never"));
        let mut f = facts();
        f.not_member = Some("etcd at http://10.0.0.5:2379 did not answer within 2 s".into());
        let a = awake(&f);
        assert!(a.to_string().contains("did not answer"), "{a}");
        assert_eq!(decide(None, &facts()), Verdict::Awake(Awake::NotConfigured));
    }

    #[test]
    fn the_cycle_cap_counts_sleeps_in_the_last_hour() {
        let mut f = facts();
        f.now = Millis(100 * MIN);
        f.idle_since = Some(Millis(80 * MIN));
        f.recent_sleeps = vec![Millis(50 * MIN), Millis(70 * MIN), Millis(10 * MIN)];
        // Two in the last hour (50 and 70 min): capped until 50 + 60.
        assert_eq!(awake(&f), Awake::CycleCap { sleeps: 2, left: Span::from_secs(10 * 60) });
        f.now = Millis(110 * MIN);
        assert!(matches!(decide(Some(&cfg()), &f), Verdict::Sleep { .. }));
        assert_eq!(recent(&f.recent_sleeps, f.now), vec![Millis(70 * MIN)]);
    }

    #[test]
    fn a_vm_that_cannot_be_saved_keeps_the_host_awake() {
        let mut f = facts();
        f.unsaveable = vec![(VmId::new("scratch"), "it is transient".into())];
        let a = awake(&f);
        assert!(a.to_string().contains("scratch") && a.to_string().contains("never stops"), "{a}");
    }

    #[test]
    fn a_bad_section_is_refused_by_field() {
        let mut c = cfg();
        c.max_per_hour = 0;
        assert_eq!(c.validate().unwrap_err().field, "farm.sleep.max_per_hour");
        let mut c = cfg();
        c.command = Some(vec![]);
        assert_eq!(c.validate().unwrap_err().field, "farm.sleep.command");
        let parsed: HostSleepConfig = toml_like(r#"{"after": "2s", "state": "power-off"}"#);
        assert_eq!((parsed.after, parsed.state, parsed.max_per_hour), (Span::from_secs(2), LowPower::PowerOff, 2));
    }

    fn toml_like(json: &str) -> HostSleepConfig {
        serde_json::from_str(json).unwrap()
    }
}
