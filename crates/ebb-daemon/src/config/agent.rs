//! `[agent]`: the libvirt URI, the ticks, the API socket and the journal.

use super::*;
use ebb_core::human::FieldError;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    pub uri: String,
    /// Only domains whose names match one of these patterns (`*` matches
    /// any run of characters) are ebb's; empty means every domain.
    pub domains: Vec<String>,
    #[serde(deserialize_with = "de_duration")]
    pub tick: Duration,
    /// Tick used while a balloon is moving, to follow it closely.
    #[serde(deserialize_with = "de_duration")]
    pub fast_tick: Duration,
    pub socket: PathBuf,
    /// The group whose members may use the API socket besides root
    /// (`socket_gid` resolves it); None: root only.
    pub socket_group: Option<String>,
    pub journal: PathBuf,
    /// Journal entries older than this are pruned.
    pub journal_keep_days: u32,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            uri: "qemu:///system".into(),
            domains: vec![],
            tick: Duration::from_secs(2),
            fast_tick: Duration::from_millis(100),
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_group: None,
            journal: PathBuf::from("/var/lib/ebb/journal.db"),
            journal_keep_days: 30,
        }
    }
}

pub const DEFAULT_SOCKET: &str = "/run/ebb/ebb.sock";

/// The longest unix socket path: `sun_path` holds 108 bytes with the NUL.
pub(crate) const MAX_SOCKET_PATH: usize = 107;

impl AgentSection {
    pub fn is_ebbs(&self, name: &str) -> bool {
        self.domains.is_empty() || self.domains.iter().any(|p| glob_match(p, name))
    }

    /// The gid of `socket_group` on this host; None: no group, root only.
    pub fn socket_gid(&self) -> Result<Option<u32>, FieldError> {
        let Some(name) = &self.socket_group else { return Ok(None) };
        let refuse = |message| Err(FieldError::new("agent.socket_group", message));
        match nix::unistd::Group::from_name(name) {
            Ok(Some(group)) => Ok(Some(group.gid.as_raw())),
            Ok(None) => refuse(format!("agent.socket_group = {name:?}: this host has no such group; create it (groupadd {name}) or leave socket_group out (root only)")),
            Err(e) => refuse(format!("agent.socket_group = {name:?} could not be looked up: {e}")),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), FieldError> {
        for (name, tick) in [("tick", self.tick), ("fast_tick", self.fast_tick)] {
            if tick < MIN_TICK {
                return Err(FieldError::new(
                    format!("agent.{name}"),
                    format!("agent.{name} = {tick:?} is shorter than {MIN_TICK:?}: each tick reads every domain from libvirt, so a shorter one only spins"),
                ));
            }
        }
        let refuse = |message: String| Err(FieldError::new("agent.socket", message));
        let socket = self.socket.as_os_str();
        if socket.is_empty() {
            return refuse("agent.socket is empty: an empty path would make Linux bind an abstract socket, which no file permission protects; give a path such as /run/ebb/ebb.sock".into());
        }
        if socket.len() > MAX_SOCKET_PATH {
            return refuse(format!(
                "agent.socket is {} bytes long: a unix socket path holds at most {MAX_SOCKET_PATH} bytes (SUN_LEN); pick a shorter path",
                socket.len()
            ));
        }
        // A stale socket is removed at start: on the journal or one of
        // SQLite's files beside it, that would delete the journal.
        let (socket, journal) = (lexical(&self.socket), lexical(&self.journal));
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut file = journal.clone().into_os_string();
            file.push(suffix);
            if socket.as_os_str() == file {
                return refuse(format!(
                    "agent.socket = {} is the journal's own file {}: ebb would remove it as a stale socket; give the socket a path of its own",
                    self.socket.display(),
                    file.to_string_lossy()
                ));
            }
        }
        self.socket_gid().map(|_| ())
    }
}
