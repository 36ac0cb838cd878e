//! Unit newtypes. Memory is always `Bytes` inside ebb; the edges convert
//! from libvirt's KiB once, so "balloon size" and "guest size" cannot mix.

use serde::{Deserialize, Serialize};
use std::fmt;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;
pub const GIB: u64 = 1024 * 1024 * 1024;

/// An amount of memory in bytes. Serialized as a number; read from a
/// number or a size with a unit ("512MiB": see `human`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Bytes(pub u64);

impl Bytes {
    pub const ZERO: Bytes = Bytes(0);
    pub const fn from_kib(kib: u64) -> Bytes {
        Bytes(kib * KIB)
    }
    pub const fn from_mib(mib: u64) -> Bytes {
        Bytes(mib * MIB)
    }
    pub const fn from_gib(gib: u64) -> Bytes {
        Bytes(gib * GIB)
    }
    pub const fn kib(self) -> u64 {
        self.0 / KIB
    }
    pub fn mib_f64(self) -> f64 {
        self.0 as f64 / MIB as f64
    }
    pub fn saturating_sub(self, other: Bytes) -> Bytes {
        Bytes(self.0.saturating_sub(other.0))
    }
    pub fn abs_diff(self, other: Bytes) -> Bytes {
        Bytes(self.0.abs_diff(other.0))
    }
    pub fn scale(self, factor: f64) -> Bytes {
        Bytes((self.0 as f64 * factor).max(0.0).round() as u64)
    }
}

/// Saturating, as `Sub` is: sizes from a config or a guest may add up past
/// 2^64, which must not panic (nor wrap to a small amount).
impl std::ops::Add for Bytes {
    type Output = Bytes;
    fn add(self, o: Bytes) -> Bytes {
        Bytes(self.0.saturating_add(o.0))
    }
}
impl std::ops::AddAssign for Bytes {
    fn add_assign(&mut self, o: Bytes) {
        *self = *self + o;
    }
}
impl std::ops::Sub for Bytes {
    type Output = Bytes;
    /// Saturating: a negative amount of memory is never meaningful here.
    fn sub(self, o: Bytes) -> Bytes {
        self.saturating_sub(o)
    }
}
impl std::iter::Sum for Bytes {
    fn sum<I: Iterator<Item = Bytes>>(iter: I) -> Bytes {
        iter.fold(Bytes::ZERO, |a, b| a + b)
    }
}

/// Human form: `512 MiB`, `1.50 GiB`, `64 KiB`, `12 B`. Put together in a
/// small buffer and written out in one piece, with the decimals worked out
/// in integers: reasons print several sizes each, and a big host writes
/// hundreds of reasons a tick.
impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        let mut out = Text::default();
        if b >= GIB {
            if b.is_multiple_of(GIB) {
                out.number(b / GIB);
            } else if !fixed(&mut out, b, 30, 2) {
                return write!(f, "{:.2} GiB", b as f64 / GIB as f64);
            }
            out.push(" GiB");
        } else if b >= MIB {
            if b.is_multiple_of(MIB) {
                out.number(b / MIB);
            } else {
                fixed(&mut out, b, 20, 1);
            }
            out.push(" MiB");
        } else if b >= KIB {
            out.number(b / KIB);
            out.push(" KiB");
        } else {
            out.number(b);
            out.push(" B");
        }
        f.write_str(out.as_str())
    }
}

/// `n / 2^shift` with `digits` (1 or 2) decimals, exactly as `{:.N}` prints
/// the float `n as f64 / 2^shift` (rounded half to even). False, and
/// nothing written, from 2^53 on, where the float is no longer exact.
fn fixed(out: &mut Text, n: u64, shift: u32, digits: u32) -> bool {
    if n >= 1 << f64::MANTISSA_DIGITS {
        return false;
    }
    let scale = 10u64.pow(digits);
    let x = n * scale; // < 2^53 × 100: no overflow
    let (mut q, r, half) = (x >> shift, x & ((1 << shift) - 1), 1 << (shift - 1));
    if r > half || (r == half && q % 2 == 1) {
        q += 1;
    }
    out.number(q / scale);
    out.push(".");
    let frac = q % scale;
    if digits == 2 && frac < 10 {
        out.push("0");
    }
    out.number(frac);
    true
}

/// A few words on the stack: the longest size is 20 digits and a unit.
struct Text {
    buf: [u8; 40],
    len: usize,
}

impl Default for Text {
    fn default() -> Text {
        Text { buf: [0; 40], len: 0 }
    }
}

impl Text {
    fn push(&mut self, s: &str) {
        self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
        self.len += s.len();
    }

    fn number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let len = digits.len() - i;
        self.buf[self.len..self.len + len].copy_from_slice(&digits[i..]);
        self.len += len;
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).expect("digits and a unit are ASCII")
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SizeError {
    #[error("\"{0}\" is not a size: write a number with a unit, like 512MiB or 2GiB")]
    Malformed(String),
    #[error("\"{0}\" has an unknown unit: use B, KiB, MiB, GiB or TiB (K, M, G, T also mean powers of 1024)")]
    UnknownUnit(String),
    #[error("\"{0}\" is negative: a size must be zero or more")]
    Negative(String),
    #[error("\"{0}\" is too large: a size is at most 16 EiB (2^64 bytes)")]
    TooLarge(String),
}

impl std::str::FromStr for Bytes {
    type Err = SizeError;
    /// Parses `512MiB`, `2 GiB`, `1.5G`, `4096` (bytes). Units are powers of 1024.
    fn from_str(s: &str) -> Result<Bytes, SizeError> {
        let t = s.trim();
        if t.starts_with('-') {
            return Err(SizeError::Negative(s.into()));
        }
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num.parse().map_err(|_| SizeError::Malformed(s.into()))?;
        let mult = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" | "kb" => KIB,
            "m" | "mib" | "mb" => MIB,
            "g" | "gib" | "gb" => GIB,
            "t" | "tib" | "tb" => GIB * 1024,
            _ => return Err(SizeError::UnknownUnit(s.into())),
        };
        let bytes = (n * mult as f64).round();
        // `as u64` would saturate: 2^64 and more is no size, not 16 EiB.
        if bytes >= u64::MAX as f64 {
            return Err(SizeError::TooLarge(s.into()));
        }
        Ok(Bytes(bytes as u64))
    }
}

/// A point in time, milliseconds since the Unix epoch. The core never reads
/// a clock: the agent passes `now` in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
    pub fn plus(self, ms: u64) -> Millis {
        Millis(self.0 + ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!("512MiB".parse::<Bytes>(), Ok(Bytes::from_mib(512)));
        assert_eq!("2 GiB".parse::<Bytes>(), Ok(Bytes::from_gib(2)));
        assert_eq!("1.5G".parse::<Bytes>(), Ok(Bytes::from_mib(1536)));
        assert_eq!("4096".parse::<Bytes>(), Ok(Bytes(4096)));
        assert!(matches!("-1GiB".parse::<Bytes>(), Err(SizeError::Negative(_))));
        assert!(matches!("12 parsecs".parse::<Bytes>(), Err(SizeError::UnknownUnit(_))));
        assert!(matches!("lots".parse::<Bytes>(), Err(SizeError::Malformed(_))));
    }

    #[test]
    fn sizes_past_2_64_bytes_are_refused_and_sums_saturate() {
        assert!(matches!("99999999999999999999TiB".parse::<Bytes>(), Err(SizeError::TooLarge(_))));
        assert!(matches!("18446744073709551616".parse::<Bytes>(), Err(SizeError::TooLarge(_))));
        assert_eq!("16777215TiB".parse::<Bytes>(), Ok(Bytes(16_777_215 << 40)));
        let big = Bytes(u64::MAX - 1);
        assert_eq!([big, big].into_iter().sum::<Bytes>(), Bytes(u64::MAX));
        let mut b = big;
        b += big;
        assert_eq!(b, Bytes(u64::MAX));
    }

    #[test]
    fn displays_sizes() {
        assert_eq!(Bytes::from_mib(512).to_string(), "512 MiB");
        assert_eq!(Bytes::from_mib(1536).to_string(), "1.50 GiB");
        assert_eq!(Bytes::from_gib(2).to_string(), "2 GiB");
    }

    /// The `Display` this one replaced, with `format!` and float formatting.
    fn by_float(b: u64) -> String {
        if b >= GIB {
            if b.is_multiple_of(GIB) { format!("{} GiB", b / GIB) } else { format!("{:.2} GiB", b as f64 / GIB as f64) }
        } else if b >= MIB {
            if b.is_multiple_of(MIB) { format!("{} MiB", b / MIB) } else { format!("{:.1} MiB", b as f64 / MIB as f64) }
        } else if b >= KIB {
            format!("{} KiB", b / KIB)
        } else {
            format!("{b} B")
        }
    }

    #[test]
    fn decimals_match_float_formatting_ties_included() {
        // Exact ties (an odd multiple of 2^27 is x.xx5 GiB, of 2^18 x.x5 MiB)
        // round half to even, as float formatting does: 1.125 GiB is "1.12".
        assert_eq!(Bytes(9 << 27).to_string(), "1.12 GiB");
        assert_eq!(Bytes(11 << 27).to_string(), "1.38 GiB");
        for k in 0..20_000u64 {
            for b in [(2 * k + 1) << 27, (2 * k + 1) << 18, k * 104_729 + MIB, k * 1_234_567_891 + GIB, (1 << 53) - 1 - k, (1 << 53) + k * 999, u64::MAX - k, k, k * 1024, k * 53 + KIB, k << 20, k << 30] {
                assert_eq!(Bytes(b).to_string(), by_float(b), "{b}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_size_prints_as_float_formatting_does(b in 0u64..(1 << 54)) {
            proptest::prop_assert_eq!(Bytes(b).to_string(), by_float(b));
        }
    }
}
