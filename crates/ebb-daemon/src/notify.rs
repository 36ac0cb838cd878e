//! systemd's notify protocol (sd_notify(3)) for a `Type=notify` unit:
//! `READY=1` once the API serves, after every tick a `STATUS=` line (what
//! `systemctl status` shows) and `WATCHDOG=1` when the unit has a watchdog
//! (the tick is what must stay alive), `STOPPING=1` at a clean stop.
//! Nothing is sent without `$NOTIFY_SOCKET`.

use crate::api_types::{Connection, Snapshot};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use tracing::warn;

pub struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
    watchdog: bool,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace)
    /// and `$WATCHDOG_USEC` (for this process, if `$WATCHDOG_PID` says one).
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let to = match path.to_str().and_then(|p| p.strip_prefix('@')) {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())
            }
            None => SocketAddr::from_pathname(&path),
        };
        let made = to.and_then(|to| UnixDatagram::unbound().map(|socket| (socket, to)));
        let (socket, to) = match made {
            Ok(s) => s,
            Err(e) => {
                warn!("systemd: NOTIFY_SOCKET={} cannot be used: {e}; systemd hears nothing from ebb", path.to_string_lossy());
                return None;
            }
        };
        let for_us = std::env::var("WATCHDOG_PID").map_or(true, |pid| pid.trim() == std::process::id().to_string());
        let watchdog = for_us && std::env::var("WATCHDOG_USEC").is_ok_and(|us| us.trim().parse::<u64>().is_ok_and(|us| us > 0));
        Some(Notifier { socket, to, watchdog })
    }

    fn send(&self, message: &str) {
        // systemd may be gone at shutdown; nothing to do about it here.
        let _ = self.socket.send_to_addr(message.as_bytes(), &self.to);
    }

    pub fn ready(&self, snap: &Snapshot) {
        self.send(&format!("READY=1\nSTATUS={}", status_line(snap)));
    }

    /// After a tick (or a command's effect): the status, and the watchdog's ping.
    pub fn ticked(&self, snap: &Snapshot) {
        let ping = if self.watchdog { "\nWATCHDOG=1" } else { "" };
        self.send(&format!("STATUS={}{ping}", status_line(snap)));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }
}

/// One line for `systemctl status`.
pub fn status_line(snap: &Snapshot) -> String {
    let st = &snap.status;
    let asleep = snap.vms.iter().filter(|v| v.sleeping.is_some()).count();
    let vms = format!("{} VMs ({} managed, {asleep} asleep)", st.vms, st.vms_managed);
    let pool = st.pool.map_or(String::new(), |p| format!("; pool {} of {p} used", st.pool_used));
    match &st.connection {
        Connection::Connected { .. } => format!("{vms}{pool}; {} active clients; {} ticks", st.active_clients, st.ticks),
        Connection::Disconnected { error, .. } => format!("libvirt unreachable ({error}); {vms}"),
    }
}
