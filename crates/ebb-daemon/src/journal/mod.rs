//! The journal: every action with its reason and outcome, and the agent's
//! own events, in SQLite. It survives restarts: after a crash the agent
//! resumes each VM's adaptive step and last target from it.

use ebb_core::affinity::Pins;
use ebb_core::vcpus::OnlineVcpus;
use ebb_core::devices::CpuChange;
use ebb_core::memory::Resumed;
use ebb_core::needs::VmNeeds;
use ebb_core::realloc::Tunes;
use ebb_core::sleep::SleepRecord;
use ebb_core::{Action, Bytes, Millis, Rule, SleepMode, VmId};
use serde::{Deserialize, Serialize};
use rusqlite::{params, Connection};
use std::path::{Path, PathBuf};

mod writer;
pub use writer::{JournalHandle, JournalWriter};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the journal at {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("cannot create the journal's folder {path}: {source}")]
    Folder { path: PathBuf, source: std::io::Error },
    #[error("another ebb agent holds the journal at {0}: stop it first, or give this agent its own agent.journal")]
    Locked(PathBuf),
    #[error("cannot lock the journal at {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error("{}", describe_sql(.0))]
    Sql(#[from] rusqlite::Error),
    #[error("the journal's writer has stopped")]
    Stopped,
}

/// Names the cause: a full disk, a read-only file and a damaged journal
/// call for different fixes.
fn describe_sql(e: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode::*;
    let cause = match e.sqlite_error_code() {
        Some(DiskFull) => "the disk is full",
        Some(ReadOnly) | Some(CannotOpen) | Some(PermissionDenied) => "the journal cannot be written (read-only, or its permissions)",
        Some(DatabaseCorrupt) | Some(NotADatabase) => "the journal is damaged: move it aside and ebb starts a new one",
        Some(DatabaseBusy) | Some(DatabaseLocked) => "the journal is busy",
        _ => "the journal failed",
    };
    format!("{cause}: {e}")
}

/// An agent's hold on its journal: a second agent on the same journal would
/// balloon and sleep the same VMs and mix their records.
pub struct JournalLock {
    _file: std::fs::File,
}

impl JournalLock {
    /// Creates the journal file (owner-only: it holds client addresses and
    /// request paths) when missing, and locks it for this process's life.
    pub fn acquire(path: &Path) -> Result<JournalLock, JournalError> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| JournalError::Folder { path: dir.to_owned(), source })?;
        }
        let lock_err = |source| JournalError::Lock { path: path.to_owned(), source };
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path).map_err(lock_err)?;
        match file.try_lock() {
            Ok(()) => Ok(JournalLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(JournalError::Locked(path.to_owned())),
            Err(std::fs::TryLockError::Error(e)) => Err(lock_err(e)),
        }
    }
}

pub struct Journal {
    conn: Connection,
    path: PathBuf,
}

/// What a journal entry is about: an action ebb took, or one of its own
/// events. Stored as its snake_case name, which is what `ebb events` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    // The policies' actions (`Kind::of`).
    SetBalloonTarget,
    Sleep,
    Wake,
    SetTune,
    SetPins,
    SetGuestVcpus,
    Shutdown,
    // The agent's life and its libvirt connection.
    Started,
    Stopped,
    Connected,
    ConnectFailed,
    Disconnected,
    // VMs coming and going, and what ebb notes about them.
    VmAppeared,
    VmGone,
    SettingsProblem,
    Skipped,
    WokeOutside,
    Critical,
    Value,
    // The surrogate.
    AwakePath,
    Refused,
    // Host power and devices.
    Power,
    PowerSource,
    PowerSourceFailed,
    PowerMeasureFailed,
    PowerOff,
    ShutdownOverdue,
    Cpufreq,
    CpufreqFailed,
    DiskStandby,
    DiskFailed,
    // The farm: the host's own sleep and wake.
    HostSleep,
    HostSleepCalledOff,
    HostWake,
}

impl Kind {
    /// The entry for a policy's action.
    pub fn of(action: &Action) -> Kind {
        match action {
            Action::SetBalloonTarget { .. } => Kind::SetBalloonTarget,
            Action::Sleep { .. } => Kind::Sleep,
            Action::Wake { .. } => Kind::Wake,
            Action::SetTune { .. } => Kind::SetTune,
            Action::SetPins { .. } => Kind::SetPins,
            Action::SetGuestVcpus { .. } => Kind::SetGuestVcpus,
            Action::Shutdown { .. } => Kind::Shutdown,
            Action::CpuSave { .. } | Action::CpuRestore { .. } => Kind::Cpufreq,
            Action::DiskStandby { .. } => Kind::DiskStandby,
            Action::PowerOff { .. } => Kind::PowerOff,
        }
    }

    pub fn as_str(self) -> &'static str {
        use Kind::*;
        match self {
            SetBalloonTarget => "set_balloon_target",
            Sleep => "sleep",
            Wake => "wake",
            SetTune => "set_tune",
            SetPins => "set_pins",
            SetGuestVcpus => "set_guest_vcpus",
            Shutdown => "shutdown",
            Started => "started",
            Stopped => "stopped",
            Connected => "connected",
            ConnectFailed => "connect_failed",
            Disconnected => "disconnected",
            VmAppeared => "vm_appeared",
            VmGone => "vm_gone",
            SettingsProblem => "settings_problem",
            Skipped => "skipped",
            WokeOutside => "woke_outside",
            Critical => "critical",
            Value => "value",
            AwakePath => "awake_path",
            Refused => "refused",
            Power => "power",
            PowerSource => "power_source",
            PowerSourceFailed => "power_source_failed",
            PowerMeasureFailed => "power_measure_failed",
            PowerOff => "power_off",
            ShutdownOverdue => "shutdown_overdue",
            Cpufreq => "cpufreq",
            CpufreqFailed => "cpufreq_failed",
            DiskStandby => "disk_standby",
            DiskFailed => "disk_failed",
            HostSleep => "host_sleep",
            HostSleepCalledOff => "host_sleep_called_off",
            HostWake => "host_wake",
        }
    }
}

/// How an attempt went. Stored as `ok` or `failed: <why>`; read back into
/// `Event::failed` here, the one place that knows the stored form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed(String),
}

impl Outcome {
    pub fn of<E: std::fmt::Display>(r: &Result<(), E>) -> Outcome {
        match r {
            Ok(()) => Outcome::Ok,
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    fn stored(&self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::Failed(why) => format!("failed: {why}"),
        }
    }

    fn is_stored_failure(text: &str) -> bool {
        text.starts_with("failed")
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.stored())
    }
}

/// One journal entry as it is read back (and served by the API as is).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub at: Millis,
    pub vm: Option<String>,
    pub kind: String,
    pub rule: Option<String>,
    pub text: String,
    pub target: Option<Bytes>,
    /// `ok`, or `failed: ` and why; None for an event that is no attempt.
    pub outcome: Option<String>,
    /// The attempt failed.
    #[serde(default)]
    pub failed: bool,
}

/// An entry to write.
#[derive(Debug, Clone)]
pub struct Entry {
    pub at: Millis,
    pub vm: Option<String>,
    pub kind: Kind,
    pub rule: Option<Rule>,
    pub text: String,
    pub target: Option<Bytes>,
    pub outcome: Option<Outcome>,
}

impl Entry {
    /// One of the agent's own events, about no VM in particular.
    pub fn event(at: Millis, kind: Kind, text: impl Into<String>) -> Entry {
        Entry { at, vm: None, kind, rule: None, text: text.into(), target: None, outcome: None }
    }
}

/// An `events` row as the API serves it.
fn event_of(r: &rusqlite::Row) -> rusqlite::Result<Event> {
    let outcome: Option<String> = r.get(7)?;
    Ok(Event {
        failed: outcome.as_deref().is_some_and(Outcome::is_stored_failure),
        id: r.get(0)?,
        at: Millis(r.get::<_, i64>(1)? as u64),
        vm: r.get(2)?,
        kind: r.get(3)?,
        rule: r.get(4)?,
        text: r.get(5)?,
        target: r.get::<_, Option<i64>>(6)?.map(|b| Bytes(b as u64)),
        outcome,
    })
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    vm TEXT,
    kind TEXT NOT NULL,
    rule TEXT,
    text TEXT NOT NULL,
    target_bytes INTEGER,
    outcome TEXT
);
CREATE INDEX IF NOT EXISTS events_vm ON events (vm, id);
CREATE TABLE IF NOT EXISTS sleeping (
    vm TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS memory_state (
    vm TEXT PRIMARY KEY,
    step_bytes INTEGER NOT NULL,
    last_target_bytes INTEGER,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tunes (
    vm TEXT PRIMARY KEY,
    tunes TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vcpus (
    vm TEXT PRIMARY KEY,
    vcpus TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pins (
    vm TEXT PRIMARY KEY,
    pins TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS needs (
    vm TEXT PRIMARY KEY,
    needs TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS power_saved (
    vm TEXT PRIMARY KEY,
    at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS host_saved (
    vm TEXT PRIMARY KEY,
    at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cpufreq_changes (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    changes TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS critical (
    vm TEXT PRIMARY KEY,
    is_critical INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vm_value (
    vm TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
";

impl Journal {
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| JournalError::Folder { path: dir.to_owned(), source })?;
        }
        let open_err = |source| JournalError::Open { path: path.to_owned(), source };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(2)).map_err(open_err)?;
        // WAL: the API reads while the agent writes; NORMAL: an entry lost
        // to a power cut is acceptable, a slow tick is not.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        Ok(Journal { conn, path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn record(&self, e: &Entry) -> Result<i64, JournalError> {
        self.conn.execute(
            "INSERT INTO events (at_ms, vm, kind, rule, text, target_bytes, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![e.at.0 as i64, e.vm, e.kind.as_str(), e.rule.map(Rule::as_str), e.text, e.target.map(|b| b.0 as i64), e.outcome.as_ref().map(Outcome::stored)],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Newest first; only one VM's when `vm` is given.
    pub fn events(&self, vm: Option<&str>, limit: usize) -> Result<Vec<Event>, JournalError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, at_ms, vm, kind, rule, text, target_bytes, outcome FROM events
             WHERE (?1 IS NULL OR vm = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![vm, limit as i64], event_of)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Oldest first: the entries after the one with id `after`, at most `limit`.
    pub fn events_after(&self, after: i64, limit: usize) -> Result<Vec<Event>, JournalError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, at_ms, vm, kind, rule, text, target_bytes, outcome FROM events
             WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit as i64], event_of)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn save_memory_state(&self, vm: &VmId, step: Bytes, last_target: Option<Bytes>, at: Millis) -> Result<(), JournalError> {
        self.conn.execute(
            "INSERT INTO memory_state (vm, step_bytes, last_target_bytes, updated_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(vm) DO UPDATE SET step_bytes = ?2, last_target_bytes = ?3, updated_ms = ?4",
            params![vm.as_str(), step.0 as i64, last_target.map(|b| b.0 as i64), at.0 as i64],
        )?;
        Ok(())
    }

    pub fn memory_states(&self) -> Result<Vec<(VmId, Resumed)>, JournalError> {
        let mut stmt = self.conn.prepare("SELECT vm, step_bytes, last_target_bytes FROM memory_state ORDER BY vm")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                VmId::new(r.get::<_, String>(0)?),
                Resumed {
                    step: Bytes(r.get::<_, i64>(1)? as u64),
                    last_target: r.get::<_, Option<i64>>(2)?.map(|b| Bytes(b as u64)),
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A VM's tune as ebb found it and as ebb set it.
    pub fn save_tunes(&self, vm: &VmId, tunes: &Tunes, at: Millis) -> Result<(), JournalError> {
        self.save_json("tunes", vm, tunes, at)
    }

    /// Every VM's remembered tunes.
    pub fn tunes(&self) -> Result<Vec<(VmId, Tunes)>, JournalError> {
        self.load_json("tunes")
    }

    /// A guest's online vCPUs as ebb found them and as ebb set them.
    pub fn save_online_vcpus(&self, vm: &VmId, v: &OnlineVcpus, at: Millis) -> Result<(), JournalError> {
        self.save_json("vcpus", vm, v, at)
    }

    pub fn online_vcpus(&self) -> Result<Vec<(VmId, OnlineVcpus)>, JournalError> {
        self.load_json("vcpus")
    }

    /// A VM's vCPU pinning as ebb found it and as ebb set it.
    pub fn save_pins(&self, vm: &VmId, pins: &Pins, at: Millis) -> Result<(), JournalError> {
        self.save_json("pins", vm, pins, at)
    }

    pub fn pins(&self) -> Result<Vec<(VmId, Pins)>, JournalError> {
        self.load_json("pins")
    }

    /// A VM's needs history (24 hourly histograms).
    pub fn save_needs(&self, vm: &VmId, needs: &VmNeeds, at: Millis) -> Result<(), JournalError> {
        self.save_json("needs", vm, needs, at)
    }

    /// Every VM's needs history; one of another shape (an older layout) is skipped.
    pub fn needs(&self) -> Result<Vec<(VmId, VmNeeds)>, JournalError> {
        let mut all: Vec<(VmId, VmNeeds)> = self.load_json("needs")?;
        all.retain(|(_, n)| n.hours.len() == ebb_core::needs::HOURS);
        Ok(all)
    }

    /// One JSON value per VM in `table`, whose value column bears the table's name.
    fn save_json<T: serde::Serialize>(&self, table: &'static str, vm: &VmId, value: &T, at: Millis) -> Result<(), JournalError> {
        let json = serde_json::to_string(value).expect("journal values serialize");
        self.conn.execute(
            &format!("INSERT OR REPLACE INTO {table} (vm, {table}, updated_ms) VALUES (?1, ?2, ?3)"),
            params![vm.as_str(), json, at.0 as i64],
        )?;
        Ok(())
    }

    /// Every VM's value in `table`; a row that does not parse is skipped.
    fn load_json<T: serde::de::DeserializeOwned>(&self, table: &'static str) -> Result<Vec<(VmId, T)>, JournalError> {
        let mut stmt = self.conn.prepare(&format!("SELECT vm, {table} FROM {table} ORDER BY vm"))?;
        let rows = stmt.query_map([], |r| Ok((VmId::new(r.get::<_, String>(0)?), r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (vm, json) = row?;
            if let Ok(v) = serde_json::from_str(&json) {
                out.push((vm, v));
            }
        }
        Ok(out)
    }

    /// VMs saved on low battery, to restore when power is back (even after a restart).
    pub fn set_power_saved(&self, vm: &VmId, saved: bool, at: Millis) -> Result<(), JournalError> {
        self.set_saved("power_saved", vm, saved, at)
    }

    pub fn power_saved(&self) -> Result<Vec<VmId>, JournalError> {
        self.saved("power_saved")
    }

    /// VMs saved for the host's sleep in the farm, to restore when it wakes
    /// (after a power-off, when the agent starts again).
    pub fn set_host_saved(&self, vm: &VmId, saved: bool, at: Millis) -> Result<(), JournalError> {
        self.set_saved("host_saved", vm, saved, at)
    }

    pub fn host_saved(&self) -> Result<Vec<VmId>, JournalError> {
        self.saved("host_saved")
    }

    /// `table` is one of the schema's tables of saved VMs (a constant).
    fn set_saved(&self, table: &str, vm: &VmId, saved: bool, at: Millis) -> Result<(), JournalError> {
        if saved {
            self.conn.execute(&format!("INSERT OR REPLACE INTO {table} (vm, at_ms) VALUES (?1, ?2)"), params![vm.as_str(), at.0 as i64])?;
        } else {
            self.conn.execute(&format!("DELETE FROM {table} WHERE vm = ?1"), params![vm.as_str()])?;
        }
        Ok(())
    }

    fn saved(&self, table: &str) -> Result<Vec<VmId>, JournalError> {
        let mut stmt = self.conn.prepare(&format!("SELECT vm FROM {table} ORDER BY vm"))?;
        let rows = stmt.query_map([], |r| Ok(VmId::new(r.get::<_, String>(0)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// What ebb changed on the CPUs and what it found there, so a restarted
    /// agent gives it back; none: the row goes.
    pub fn save_cpu_changes(&self, changes: &[CpuChange], at: Millis) -> Result<(), JournalError> {
        if changes.is_empty() {
            self.conn.execute("DELETE FROM cpufreq_changes", [])?;
        } else {
            let json = serde_json::to_string(changes).expect("journal values serialize");
            self.conn.execute("INSERT OR REPLACE INTO cpufreq_changes (id, changes, updated_ms) VALUES (1, ?1, ?2)", params![json, at.0 as i64])?;
        }
        Ok(())
    }

    /// A row that does not parse (an older layout) counts as none.
    pub fn cpu_changes(&self) -> Result<Vec<CpuChange>, JournalError> {
        let mut stmt = self.conn.prepare("SELECT changes FROM cpufreq_changes")?;
        let json: Option<String> = stmt.query_map([], |r| r.get(0))?.next().transpose()?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default())
    }

    /// The time-critical flag set with `ebb critical`, which outlives restarts.
    pub fn set_critical(&self, vm: &VmId, on: bool, at: Millis) -> Result<(), JournalError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO critical (vm, is_critical, updated_ms) VALUES (?1, ?2, ?3)",
            params![vm.as_str(), on as i64, at.0 as i64],
        )?;
        Ok(())
    }

    pub fn critical(&self) -> Result<Vec<(VmId, bool)>, JournalError> {
        let mut stmt = self.conn.prepare("SELECT vm, is_critical FROM critical ORDER BY vm")?;
        let rows = stmt.query_map([], |r| Ok((VmId::new(r.get::<_, String>(0)?), r.get::<_, i64>(1)? != 0)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A VM's value set with `ebb value` (over the config's), which
    /// outlives restarts; None clears it.
    pub fn set_value(&self, vm: &VmId, value: Option<u32>, at: Millis) -> Result<(), JournalError> {
        match value {
            Some(v) => self.conn.execute(
                "INSERT OR REPLACE INTO vm_value (vm, value, updated_ms) VALUES (?1, ?2, ?3)",
                params![vm.as_str(), i64::from(v), at.0 as i64],
            )?,
            None => self.conn.execute("DELETE FROM vm_value WHERE vm = ?1", params![vm.as_str()])?,
        };
        Ok(())
    }

    pub fn values(&self) -> Result<Vec<(VmId, u32)>, JournalError> {
        let mut stmt = self.conn.prepare("SELECT vm, value FROM vm_value ORDER BY vm")?;
        let rows = stmt.query_map([], |r| Ok((VmId::new(r.get::<_, String>(0)?), r.get::<_, u32>(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that ebb put `vm` to sleep, so a restarted agent knows it.
    pub fn set_sleeping(&self, vm: &VmId, rec: &SleepRecord) -> Result<(), JournalError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO sleeping (vm, mode, since_ms, reason) VALUES (?1, ?2, ?3, ?4)",
            params![vm.as_str(), rec.mode.as_str(), rec.since.0 as i64, rec.reason],
        )?;
        Ok(())
    }

    pub fn clear_sleeping(&self, vm: &VmId) -> Result<(), JournalError> {
        self.conn.execute("DELETE FROM sleeping WHERE vm = ?1", params![vm.as_str()])?;
        Ok(())
    }

    pub fn sleeping(&self) -> Result<Vec<(VmId, SleepRecord)>, JournalError> {
        let mut stmt = self.conn.prepare("SELECT vm, mode, since_ms, reason FROM sleeping ORDER BY vm")?;
        let rows = stmt.query_map([], |r| {
            let mode: String = r.get(1)?;
            Ok((
                VmId::new(r.get::<_, String>(0)?),
                SleepRecord {
                    mode: if mode == "pause" { SleepMode::Pause } else { SleepMode::Save },
                    since: Millis(r.get::<_, i64>(2)? as u64),
                    reason: r.get(3)?,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes entries older than `before`; returns how many.
    pub fn prune(&self, before: Millis) -> Result<usize, JournalError> {
        Ok(self.conn.execute("DELETE FROM events WHERE at_ms < ?1", params![before.0 as i64])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_journal_is_called_damaged_not_a_failed_write() {
        use std::io::{Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        {
            let j = Journal::open(&path).unwrap();
            for i in 0..200 {
                let rec = SleepRecord { mode: SleepMode::Save, since: Millis(i), reason: "x".repeat(100) };
                j.set_sleeping(&VmId::new(format!("vm{i}")), &rec).unwrap();
            }
            j.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE").unwrap();
        }
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(8192)).unwrap();
        f.write_all(&[0x5a; 4 * 4096]).unwrap();
        drop(f);
        let e = Journal::open(&path).and_then(|j| j.sleeping()).unwrap_err().to_string();
        assert!(e.contains("damaged") && !e.contains("write"), "{e}");
    }

    #[test]
    fn a_second_lock_on_the_journal_is_refused_and_the_first_survives_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        let first = JournalLock::acquire(&path).unwrap();
        let e = JournalLock::acquire(&path).err().unwrap();
        assert!(matches!(e, JournalError::Locked(_)), "{e}");
        drop(first);
        JournalLock::acquire(&path).unwrap();
    }

    #[test]
    fn entries_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/journal.db");
        {
            let j = Journal::open(&path).unwrap();
            j.record(&Entry { at: Millis(1), vm: Some("a".into()), kind: Kind::SetBalloonTarget, rule: Some(Rule::Reclaim), text: "reclaim 64 MiB".into(), target: Some(Bytes::from_mib(448)), outcome: Some(Outcome::Ok) }).unwrap();
            j.record(&Entry::event(Millis(2), Kind::Connected, "connected")).unwrap();
            j.save_memory_state(&VmId::new("a"), Bytes::from_mib(64), Some(Bytes::from_mib(448)), Millis(1)).unwrap();
            j.save_memory_state(&VmId::new("a"), Bytes::from_mib(128), Some(Bytes::from_mib(384)), Millis(3)).unwrap();
        }
        let j = Journal::open(&path).unwrap();
        let all = j.events(None, 10).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].kind, "connected");
        let a = j.events(Some("a"), 10).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].target, Some(Bytes::from_mib(448)));
        let states = j.memory_states().unwrap();
        assert_eq!(states, vec![(VmId::new("a"), Resumed { step: Bytes::from_mib(128), last_target: Some(Bytes::from_mib(384)) })]);
        let rec = SleepRecord { mode: SleepMode::Pause, since: Millis(5), reason: "idle".into() };
        j.set_sleeping(&VmId::new("a"), &rec).unwrap();
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.sleeping().unwrap(), vec![(VmId::new("a"), rec)]);
        j.clear_sleeping(&VmId::new("a")).unwrap();
        assert!(j.sleeping().unwrap().is_empty());
        assert_eq!(j.prune(Millis(2)).unwrap(), 1);
        let change = CpuChange {
            applied: ebb_core::devices::CpuSetting { cpu: 3, governor: Some("powersave".into()), max_khz: None },
            found: ebb_core::devices::CpuSetting { cpu: 3, governor: Some("performance".into()), max_khz: Some(3_000_000) },
        };
        j.save_cpu_changes(std::slice::from_ref(&change), Millis(6)).unwrap();
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.cpu_changes().unwrap(), vec![change]);
        j.save_cpu_changes(&[], Millis(7)).unwrap();
        assert!(j.cpu_changes().unwrap().is_empty());
        assert_eq!(j.events(None, 10).unwrap().len(), 1);
    }
}
