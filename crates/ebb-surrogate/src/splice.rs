//! The awake data path: client ⇄ backend through splice(2), one pipe per
//! direction, so bytes move between the two sockets inside the kernel
//! instead of being copied through user space twice. A spliced connection
//! costs four pipe descriptors and no user-space buffer; pipe pages are
//! only allocated while data is in flight.
//!
//! Readiness comes from tokio's reactor (`readable` / `writable` and
//! `try_io`), so a spliced connection is as cheap to wait on as any other.

use crate::stats::Counters;
use rustix::net::Shutdown;
use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use std::io;
use std::os::fd::OwnedFd;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Asked per splice call; the kernel moves what fits in the pipe.
const CHUNK: usize = 1 << 20;
/// A direction that has moved this much is a bulk transfer…
const GROW_AFTER: u64 = 4 << 20;
/// …and gets a pipe this large (the unprivileged maximum by default).
const BULK_PIPE: usize = 1 << 20;

pub(crate) struct Pipes {
    up: (OwnedFd, OwnedFd),
    down: (OwnedFd, OwnedFd),
}

impl Pipes {
    /// Both pipes, or an error (typically out of descriptors) so the caller
    /// can fall back to copying.
    pub(crate) fn new() -> io::Result<Pipes> {
        let flags = PipeFlags::NONBLOCK | PipeFlags::CLOEXEC;
        Ok(Pipes {
            up: pipe_with(flags)?,
            down: pipe_with(flags)?,
        })
    }
}

/// Moves bytes both ways until both directions have ended; each direction's
/// end is passed on as a half-close, as `copy_bidirectional` does. Returns
/// (client → backend, backend → client) byte counts.
pub(crate) async fn bidirectional(
    client: &TcpStream,
    backend: &TcpStream,
    pipes: Pipes,
    counters: &Counters,
) -> io::Result<(u64, u64)> {
    let up = one_way(client, backend, &pipes.up, |n| counters.add_in(n));
    let down = one_way(backend, client, &pipes.down, |n| counters.add_out(n));
    tokio::try_join!(up, down)
}

async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    (pipe_r, pipe_w): &(OwnedFd, OwnedFd),
    count: impl Fn(usize),
) -> io::Result<u64> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    let mut total = 0u64;
    let mut grown = false;
    loop {
        // The pipe is empty here, so EAGAIN can only mean the socket has
        // nothing to read, which is what `try_io` needs to clear readiness.
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                Ok(splice(src, None, pipe_w, None, CHUNK, flags)?)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            match rustix::net::shutdown(dst, Shutdown::Write) {
                Ok(()) | Err(rustix::io::Errno::NOTCONN) => return Ok(total),
                Err(e) => return Err(e.into()),
            }
        }
        count(n);
        total += n as u64;
        if !grown && total >= GROW_AFTER {
            // A bulk flow: a bigger pipe moves more per syscall. Small flows
            // keep the default so thousands of connections stay within the
            // per-user pipe page budget; refusal here just keeps the default.
            grown = true;
            let _ = rustix::pipe::fcntl_setpipe_size(pipe_w, BULK_PIPE);
        }
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                Ok(splice(pipe_r, None, dst, None, left, flags)?)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
