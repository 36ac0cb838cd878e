//! Units and checks the sections share: sizes ("2GiB"), durations ("90s"), number ranges, paths, and domain-name globs.

use ebb_core::Bytes;
use ebb_core::human::{Span, SpanError};
use serde::de;
use serde::{Deserialize, Deserializer};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The shortest tick: each reads every domain from libvirt and may write the
/// journal, so a shorter one only spins.
pub(crate) const MIN_TICK: Duration = Duration::from_millis(10);


/// A memory size in a config file: `"512MiB"`, `"2GiB"` or a number of
/// bytes. Zero and negative sizes are refused where they are read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Size(pub Bytes);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        let bytes = Bytes::deserialize(d)?;
        if bytes == Bytes::ZERO {
            return Err(de::Error::custom("a size of zero is not allowed here"));
        }
        Ok(Size(bytes))
    }
}

/// `"2s"`, `"250ms"`, `"1m"`, `"1h"`, or a number of seconds; from 1 ms
/// to a year (`ebb_core::human::Span`).
pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Span::deserialize(d).map(Span::as_duration)
}

/// "90s", "250ms", "5m", "1h" as a `Duration` (see `ebb_core::human::Span`).
pub fn parse_duration(s: &str) -> Result<Duration, SpanError> {
    Span::parse(s).map(Span::as_duration)
}

pub use ebb_core::human::{number, Range};


/// A path with `.` dropped and `..` taken off lexically: the files need
/// not exist yet, so no link is followed.
pub(crate) fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) => {}
                _ => out.push(".."),
            },
            c => out.push(c),
        }
    }
    out
}

/// `*` matches any run of characters; everything else matches itself.
/// Domain names come from whoever defines domains, so the match is the
/// classic greedy walk: on a mismatch the last `*` takes one character
/// more, and nothing before it is tried again. At most pattern × name
/// steps, never exponential.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut i, mut j) = (0, 0);
    // The last `*` seen: the pattern index after it, and the name index it
    // has taken characters up to.
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if p.get(i) == Some(&'*') {
            star = Some((i + 1, j));
            i += 1;
        } else if p.get(i) == Some(&n[j]) {
            i += 1;
            j += 1;
        } else if let Some((after, taken)) = star {
            star = Some((after, taken + 1));
            i = after;
            j = taken + 1;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}
