//! Units and checks the sections share: sizes ("2GiB"), durations ("90s"), number ranges, paths, and domain-name globs.

use ebb_core::Bytes;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The shortest tick: each reads every domain from libvirt and may write the
/// journal, so a shorter one only spins.
pub(crate) const MIN_TICK: Duration = Duration::from_millis(10);

/// The longest duration any field takes, a year: no wait of ebb's makes
/// sense past it, and deadlines computed from it (`Instant + Duration`)
/// can then never overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// The largest realloc.boost and realloc.yield_divisor: 64 times takes a
/// default weight of 1024 to 65,536 or 16, well inside libvirt's 2..262,144,
/// and disk weights span only 100..1000.
pub(crate) const MAX_WEIGHT_FACTOR: u64 = 64;

/// A memory size in a config file: `"512MiB"`, `"2GiB"` or a number of
/// bytes. Zero and negative sizes are refused where they are read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Size(pub Bytes);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"512MiB\" or a whole number of bytes")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Bytes, E> {
                u64::try_from(n).map(Bytes).map_err(|_| E::custom(format!("{n} is negative: a size must be more than zero")))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Bytes, E> {
                Ok(Bytes(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Bytes, E> {
                s.parse().map_err(E::custom)
            }
        }
        let bytes = d.deserialize_any(SizeVisitor)?;
        if bytes == Bytes::ZERO {
            return Err(de::Error::custom("a size of zero is not allowed here"));
        }
        Ok(Size(bytes))
    }
}

/// `"2s"`, `"250ms"`, `"1m"`, `"1h"`, or a number of seconds; more than
/// zero and at most `MAX_DURATION`.
pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct DurationVisitor;
    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration like \"2s\" or \"250ms\", or a number of seconds")
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
            seconds(n as f64, &n.to_string()).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
            seconds(n as f64, &n.to_string()).map_err(E::custom)
        }
        fn visit_f64<E: de::Error>(self, n: f64) -> Result<Duration, E> {
            seconds(n, &n.to_string()).map_err(E::custom)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            parse_duration(s).map_err(E::custom)
        }
    }
    d.deserialize_any(DurationVisitor)
}

pub(crate) fn de_some_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("\"{s}\" is not a duration: write a number with a unit, like 2s or 250ms"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("\"{s}\" has an unknown unit: use ms, s, m or h")),
    };
    seconds(secs, &format!("\"{s}\""))
}

/// A number of seconds as a duration, within [1 ms, MAX_DURATION]: what
/// `Duration::from_secs_f64` would panic on (infinite, too large) is
/// refused first. `text` is the value as written, for the message.
pub(crate) fn seconds(secs: f64, text: &str) -> Result<Duration, String> {
    if secs.is_nan() || secs <= 0.0 {
        return Err(format!("{text}: a duration must be more than zero"));
    }
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(format!("{text} is longer than a year, the longest duration ebb takes"));
    }
    // The policies count time in whole milliseconds: less would be zero.
    if secs < 0.001 {
        return Err(format!("{text} is shorter than a millisecond, the finest time ebb keeps"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Where a config number must lie. Every float of the config goes through
/// `number`, which refuses NaN and the infinities whatever the range.
#[derive(Clone, Copy)]
pub(crate) enum Range {
    Closed(f64, f64),
    ClosedOpen(f64, f64),
    OpenClosed(f64, f64),
    Above(f64),
    AtLeast(f64),
}

impl Range {
    pub(crate) fn contains(self, v: f64) -> bool {
        v.is_finite()
            && match self {
                Range::Closed(lo, hi) => lo <= v && v <= hi,
                Range::ClosedOpen(lo, hi) => lo <= v && v < hi,
                Range::OpenClosed(lo, hi) => lo < v && v <= hi,
                Range::Above(lo) => lo < v,
                Range::AtLeast(lo) => lo <= v,
            }
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Range::Closed(lo, hi) => write!(f, "in [{lo}, {hi}]"),
            Range::ClosedOpen(lo, hi) => write!(f, "in [{lo}, {hi})"),
            Range::OpenClosed(lo, hi) => write!(f, "in ({lo}, {hi}]"),
            Range::Above(lo) => write!(f, "above {lo}"),
            Range::AtLeast(lo) => write!(f, "of at least {lo}"),
        }
    }
}

/// `field = v` must be a finite number within `range`; `hint` (may be
/// empty) ends the message.
pub(crate) fn number(field: &str, v: f64, range: Range, hint: &str) -> Result<(), String> {
    if range.contains(v) {
        Ok(())
    } else {
        Err(format!("{field} = {v} is out of range: give a finite number {range}{hint}"))
    }
}

/// The sleep threshold's one rule, for `[vm.NAME.sleep]` and a domain's
/// `<sleep cpu_threshold>` metadata alike.
pub fn check_cpu_threshold(field: &str, v: f64) -> Result<(), String> {
    number(field, v, Range::Closed(0.0, 1.0), " (a fraction of one vCPU, like 0.05)")
}

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
