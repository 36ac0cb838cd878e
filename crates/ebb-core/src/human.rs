//! Values as people write them in ebb's config: sizes ("512MiB"), spans of
//! time ("90s", "250ms", "1h"), and numbers checked against their range.
//! The core's config types deserialize these themselves, so the config
//! file's sections are those types, not copies of them; their rules refuse
//! a value with a `FieldError`, which names the field so the config's
//! reader can point at its line.

use crate::units::Bytes;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// A size: a whole number of bytes, or a string with a unit ("512MiB").
impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
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
        d.deserialize_any(SizeVisitor)
    }
}

/// The longest span ebb takes: beyond a year a timer is a mistake (and
/// `Duration` arithmetic nears its limits).
pub const MAX_SPAN: Duration = Duration::from_secs(366 * 24 * 3600);

/// A span of time, in whole milliseconds (the finest time ebb keeps), from
/// 1 ms to a year. Written "90s", "250ms", "5m", "1h", or a number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "u64")]
pub struct Span(u64);

impl Span {
    pub const fn from_millis(ms: u64) -> Span {
        Span(ms)
    }
    pub const fn from_secs(s: u64) -> Span {
        Span(s * 1000)
    }
    pub const fn as_millis(self) -> u64 {
        self.0
    }
    pub const fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }

    /// Reads "90s", "250ms", "5m", "1h" (a bare number is seconds).
    pub fn parse(s: &str) -> Result<Span, SpanError> {
        let t = s.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num.parse().map_err(|_| SpanError::Malformed(s.into()))?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "" | "s" => n,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            _ => return Err(SpanError::UnknownUnit(s.into())),
        };
        Span::of_seconds(secs, &format!("\"{s}\""))
    }

    /// `secs` seconds, refused with `text` named when not a span ebb takes.
    pub fn of_seconds(secs: f64, text: &str) -> Result<Span, SpanError> {
        if secs.is_nan() || secs <= 0.0 {
            return Err(SpanError::NotPositive(text.into()));
        }
        if secs > MAX_SPAN.as_secs_f64() {
            return Err(SpanError::TooLong(text.into()));
        }
        // The policies count time in whole milliseconds: less would be zero.
        if secs < 0.001 {
            return Err(SpanError::TooShort(text.into()));
        }
        // To the nanosecond first, as `Duration::from_secs_f64` reads it.
        let nanos = (secs * 1e9).round();
        Ok(Span(((nanos / 1e6).floor() as u64).max(1)))
    }
}

/// Why a text or number is not a span ebb takes; each names the value as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpanError {
    #[error("\"{0}\" is not a duration: write a number with a unit, like 2s or 250ms")]
    Malformed(String),
    #[error("\"{0}\" has an unknown unit: use ms, s, m or h")]
    UnknownUnit(String),
    #[error("{0}: a duration must be more than zero")]
    NotPositive(String),
    #[error("{0} is longer than a year, the longest duration ebb takes")]
    TooLong(String),
    #[error("{0} is shorter than a millisecond, the finest time ebb keeps")]
    TooShort(String),
}

impl From<Span> for u64 {
    fn from(s: Span) -> u64 {
        s.0
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        struct SpanVisitor;
        impl Visitor<'_> for SpanVisitor {
            type Value = Span;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like \"2s\" or \"250ms\", or a number of seconds")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Span, E> {
                Span::of_seconds(n as f64, &n.to_string()).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Span, E> {
                Span::of_seconds(n as f64, &n.to_string()).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Span, E> {
                Span::of_seconds(n, &n.to_string()).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Span, E> {
                Span::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_any(SpanVisitor)
    }
}

/// Where a number of the config must lie; every range excludes NaN and the
/// infinities.
#[derive(Clone, Copy, Debug)]
pub enum Range {
    Closed(f64, f64),
    ClosedOpen(f64, f64),
    OpenClosed(f64, f64),
    Above(f64),
    AtLeast(f64),
}

impl Range {
    pub fn contains(self, v: f64) -> bool {
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

/// A value of the config that its rules refuse: the field's dotted path
/// ("memory.pool", "vm.web.sleep.cpu_threshold"), by which the config's
/// reader finds its line, and the sentence that says why, naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), message: message.into() }
    }
}

/// Refuses `v` outside `range`, naming `field` (and `hint`, what it means).
pub fn number(field: &str, v: f64, range: Range, hint: &str) -> Result<(), FieldError> {
    if range.contains(v) {
        Ok(())
    } else {
        Err(FieldError::new(field, format!("{field} = {v} is out of range: give a finite number {range}{hint}")))
    }
}

/// Refuses a size of zero where one makes no sense, naming `field`.
pub fn nonzero(field: &str, b: Bytes) -> Result<(), FieldError> {
    if b == Bytes::ZERO {
        return Err(FieldError::new(field, format!("{field}: a size of zero is not allowed here")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_people_write_them_and_stay_in_bounds() {
        assert_eq!(Span::parse("90s"), Ok(Span::from_secs(90)));
        assert_eq!(Span::parse("250ms").map(Span::as_millis), Ok(250));
        assert_eq!(Span::parse("1.5h").map(Span::as_millis), Ok(5_400_000));
        assert!(Span::parse("0s").unwrap_err().to_string().contains("more than zero"));
        assert!(Span::parse("367d").unwrap_err().to_string().contains("unknown unit"));
        assert!(Span::parse("9000h").unwrap_err().to_string().contains("longer than a year"));
        assert!(Span::parse("0.0001ms").unwrap_err().to_string().contains("shorter than a millisecond"));
        assert_eq!(Span::from_secs(300).to_string(), "5m");
        assert_eq!(Span::from_millis(1500).to_string(), "1500ms");
    }

    #[test]
    fn sizes_take_units_or_whole_bytes_and_numbers_their_range() {
        #[derive(Deserialize)]
        struct S {
            a: Bytes,
            b: Bytes,
        }
        let s: S = serde_json::from_str(r#"{"a": "2GiB", "b": 4096}"#).unwrap();
        assert_eq!((s.a, s.b), (Bytes::from_gib(2), Bytes(4096)));
        assert!(serde_json::from_str::<S>(r#"{"a": -1, "b": 1}"#).is_err());
        assert!(number("x", f64::INFINITY, Range::AtLeast(0.0), "").unwrap_err().message.contains("finite"));
        assert!(number("x", 0.5, Range::ClosedOpen(0.0, 1.0), "").is_ok());
        let e = nonzero("memory.step_min", Bytes::ZERO).unwrap_err();
        assert!(e.field == "memory.step_min" && e.message.starts_with("memory.step_min"), "{e:?}");
    }
}
