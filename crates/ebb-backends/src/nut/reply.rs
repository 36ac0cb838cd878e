//! The answer to `LIST VAR <ups>`, parsed as its bytes arrive within the
//! bounds below, and what ebb reads from its variables. No I/O: the client
//! feeds what it reads; the fuzzer feeds anything.

use std::collections::BTreeMap;

/// The longest line of an answer. NUT caps a value at 256 bytes
/// (`ST_MAX_VALUE_LEN`), so a `VAR` line stays under 1 KiB even with every
/// character of its value escaped; 4 KiB leaves room for long UPS and
/// variable names.
pub const MAX_LINE: usize = 4096;
/// The most variables one UPS may list. Real ones list 20 to a few hundred
/// (the largest are SNMP units with per-outlet variables).
pub const MAX_VARS: usize = 1024;
/// The most bytes one answer may take: about ten times a large real one
/// (300 variables with 256-byte values is under 100 KB).
pub const MAX_REPLY_BYTES: usize = 1 << 20;

/// What is wrong with an answer, whoever sent it: a sentence that follows
/// "upsd at ADDR".
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ReplyError {
    #[error("knows no UPS named {ups:?}: check the name (`upsc -l HOST` lists the UPSes upsd serves)")]
    UnknownUps { ups: String },
    #[error("refused access (ERR ACCESS-DENIED): allow this host in upsd.conf / upsd.users")]
    AccessDenied,
    #[error("answered ERR {code}")]
    Err { code: String },
    #[error("sent a line ebb cannot read: {line:?}")]
    Malformed { line: String },
    #[error("sent bytes that are not text (byte {byte:#04x} in line {line}): is it upsd that listens there?")]
    Undecodable { byte: u8, line: usize },
    #[error("sent a line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("sent more than {MAX_REPLY_BYTES} bytes in one answer")]
    TooManyBytes,
    #[error("sent more than {MAX_VARS} variables")]
    TooManyVars,
    #[error("stopped before the end of its answer")]
    Unfinished,
}

/// The answer to `LIST VAR <ups>`, parsed as its bytes arrive, within the
/// bounds above. No I/O: the client feeds what it reads; the fuzzer feeds
/// anything.
#[derive(Debug)]
pub struct ListVarReply {
    begin: String,
    end: String,
    ups: String,
    begun: bool,
    /// The line so far, without its newline…
    line: Vec<u8>,
    /// …and how much of it is known to be UTF-8.
    valid: usize,
    lines: usize,
    received: usize,
    var_lines: usize,
    vars: BTreeMap<String, String>,
}

impl ListVarReply {
    pub fn new(ups: &str) -> ListVarReply {
        ListVarReply {
            begin: format!("BEGIN LIST VAR {ups}"),
            end: format!("END LIST VAR {ups}"),
            ups: ups.to_string(),
            begun: false,
            line: Vec::new(),
            valid: 0,
            lines: 0,
            received: 0,
            var_lines: 0,
            vars: BTreeMap::new(),
        }
    }

    /// Takes the next bytes of the answer: the variables once `END LIST VAR`
    /// has arrived (what follows it is not read), None while more is to come.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<Option<BTreeMap<String, String>>, ReplyError> {
        while !bytes.is_empty() {
            let (part, rest, complete) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            self.received += part.len() + usize::from(complete);
            if self.received > MAX_REPLY_BYTES {
                return Err(ReplyError::TooManyBytes);
            }
            if self.line.len() + part.len() > MAX_LINE {
                return Err(ReplyError::LineTooLong);
            }
            self.line.extend_from_slice(part);
            bytes = rest;
            match std::str::from_utf8(&self.line[self.valid..]) {
                Ok(_) => self.valid = self.line.len(),
                // Not text whatever follows: said now, not once the line ends.
                Err(e) if e.error_len().is_some() => {
                    return Err(ReplyError::Undecodable { byte: self.line[self.valid + e.valid_up_to()], line: self.lines + 1 });
                }
                // A character cut by the read: its rest comes with the next bytes.
                Err(e) => self.valid += e.valid_up_to(),
            }
            if complete {
                self.valid = 0;
                let line = std::mem::take(&mut self.line);
                if self.take_line(&line)? {
                    return Ok(Some(std::mem::take(&mut self.vars)));
                }
            }
        }
        Ok(None)
    }

    /// One whole line; true at the end of the list.
    fn take_line(&mut self, raw: &[u8]) -> Result<bool, ReplyError> {
        self.lines += 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw)
            .map_err(|e| ReplyError::Undecodable { byte: raw.get(e.valid_up_to()).copied().unwrap_or_default(), line: self.lines })?;
        let text = line.trim();
        if let Some(code) = text.strip_prefix("ERR ") {
            let code = code.split_whitespace().next().unwrap_or("");
            return Err(match code {
                "UNKNOWN-UPS" => ReplyError::UnknownUps { ups: self.ups.clone() },
                "ACCESS-DENIED" => ReplyError::AccessDenied,
                _ => ReplyError::Err { code: code.to_string() },
            });
        }
        let malformed = || ReplyError::Malformed { line: line.chars().take(200).collect() };
        if !self.begun {
            self.begun = text == self.begin;
            return if self.begun { Ok(false) } else { Err(malformed()) };
        }
        if text == self.end {
            return Ok(true);
        }
        let (name, value) = parse_var(line, &self.ups).ok_or_else(malformed)?;
        self.var_lines += 1;
        if self.var_lines > MAX_VARS {
            return Err(ReplyError::TooManyVars);
        }
        self.vars.insert(name, value);
        Ok(false)
    }
}

/// A whole answer to `LIST VAR <ups>` at once.
pub fn parse_list_var(ups: &str, bytes: &[u8]) -> Result<BTreeMap<String, String>, ReplyError> {
    ListVarReply::new(ups).feed(bytes)?.ok_or(ReplyError::Unfinished)
}

/// `VAR <ups> <name> "<value>"` → (name, value), unescaping `\"` and `\\`.
fn parse_var(line: &str, ups: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("VAR ")?.strip_prefix(ups)?.strip_prefix(' ')?;
    let (name, quoted) = rest.split_once(' ')?;
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut value = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => value.push(chars.next()?),
            '"' => return None,
            c => value.push(c),
        }
    }
    (!name.is_empty()).then(|| (name.to_string(), value))
}

/// What ebb reads from a UPS.
#[derive(Clone, Debug, PartialEq)]
pub struct UpsReading {
    /// `ups.status` as sent, e.g. "OB LB".
    pub status: String,
    pub on_line: bool,
    pub on_battery: bool,
    pub low_battery: bool,
    /// FSD: the UPS (or its master) orders a shutdown now.
    pub forced_shutdown: bool,
    /// `battery.charge`, percent.
    pub charge: Option<f64>,
    /// `battery.runtime`, seconds left.
    pub runtime_s: Option<f64>,
    /// `ups.load`, percent of its capacity.
    pub load: Option<f64>,
    /// `ups.realpower`, watts drawn.
    pub realpower_w: Option<f64>,
}

impl UpsReading {
    /// None without `ups.status`.
    pub fn from_vars(vars: &BTreeMap<String, String>) -> Option<UpsReading> {
        let status = vars.get("ups.status")?.trim().to_string();
        let has = |flag: &str| status.split_whitespace().any(|f| f == flag);
        let num = |name: &str| vars.get(name).and_then(|v| v.trim().parse::<f64>().ok());
        Some(UpsReading {
            on_line: has("OL"),
            on_battery: has("OB"),
            low_battery: has("LB"),
            forced_shutdown: has("FSD"),
            charge: num("battery.charge"),
            runtime_s: num("battery.runtime"),
            load: num("ups.load"),
            realpower_w: num("ups.realpower"),
            status,
        })
    }
}

/// The fuzz target's checks (`fuzz/fuzz_targets/nut_reply.rs`), here so the
/// inputs it found run as unit tests too: `data` is an answer from upsd,
/// parsed for the UPS `test`.
#[doc(hidden)]
pub fn fuzz_reply(data: &[u8]) {
    let whole = parse_list_var("test", data);
    if let Ok(vars) = &whole {
        assert!(vars.len() <= MAX_VARS, "{} variables", vars.len());
        assert!(vars.keys().all(|k| !k.is_empty()));
    }
    // The same bytes cut into reads of any size parse the same.
    let cut = data.len() % 7 + 1;
    let mut reply = ListVarReply::new("test");
    let chunked = data
        .chunks(cut)
        .find_map(|c| reply.feed(c).transpose())
        .unwrap_or(Err(ReplyError::Unfinished));
    assert_eq!(whole.as_ref().ok(), chunked.as_ref().ok(), "whole: {whole:?}, in reads of {cut}: {chunked:?}");
    // The same bytes sent without end: the parser gives up within its byte bound.
    if data.is_empty() {
        return;
    }
    let mut reply = ListVarReply::new("test");
    let mut fed = 0;
    while reply.feed(data) == Ok(None) {
        fed += data.len();
        assert!(fed <= MAX_REPLY_BYTES, "took {fed} bytes of an endless answer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nut::NutError;

    /// What the dummy-ups driver's upsd (NUT 2.8.0) answered here.
    const REAL: &[u8] = include_bytes!("../../../../fuzz/seeds/nut_reply/dummy-ups.txt");

    #[test]
    fn a_real_answer_parses_in_one_read_or_byte_by_byte() {
        let vars = parse_list_var("test", REAL).unwrap();
        assert_eq!((vars.len(), vars["ups.status"].as_str(), vars["driver.parameter.port"].as_str()), (17, "OL", "/tmp/nutx/ups.dev"));
        let mut reply = ListVarReply::new("test");
        let (last, first) = REAL.split_last().unwrap();
        assert!(first.iter().all(|b| reply.feed(&[*b]) == Ok(None)));
        assert_eq!(reply.feed(&[*last]), Ok(Some(vars)));
        fuzz_reply(REAL);
    }

    fn list(lines: &[String]) -> Vec<u8> {
        let mut out = b"BEGIN LIST VAR test\n".to_vec();
        for l in lines {
            out.extend_from_slice(l.as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(b"END LIST VAR test\n");
        out
    }

    #[test]
    fn each_bound_holds_at_its_limit_and_fails_past_it() {
        let value = |len: usize| format!("VAR test v \"{}\"", "x".repeat(len - 13));
        assert!(parse_list_var("test", &list(&[value(MAX_LINE)])).is_ok());
        assert_eq!(parse_list_var("test", &list(&[value(MAX_LINE + 1)])), Err(ReplyError::LineTooLong));
        let vars = |n: usize| (0..n).map(|i| format!("VAR test v{i} \"1\"")).collect::<Vec<_>>();
        assert_eq!(parse_list_var("test", &list(&vars(MAX_VARS))).unwrap().len(), MAX_VARS);
        assert_eq!(parse_list_var("test", &list(&vars(MAX_VARS + 1))), Err(ReplyError::TooManyVars));
        // Long lines under every other bound: the answer's own bound.
        let long = vec![value(MAX_LINE); MAX_REPLY_BYTES / MAX_LINE + 1];
        assert_eq!(parse_list_var("test", &list(&long)), Err(ReplyError::TooManyBytes));
        let e = NutError::Reply { addr: "h:1".into(), problem: ReplyError::TooManyVars };
        assert_eq!(e.to_string(), "upsd at h:1 sent more than 1024 variables");
    }

    #[test]
    fn errors_garbage_and_a_cut_answer_are_told_apart() {
        let p = |bytes: &[u8]| parse_list_var("test", bytes);
        assert_eq!(p(b"ERR UNKNOWN-UPS\n"), Err(ReplyError::UnknownUps { ups: "test".into() }));
        assert_eq!(p(b"ERR ACCESS-DENIED\n"), Err(ReplyError::AccessDenied));
        assert_eq!(p(b"BEGIN LIST VAR test\r\nERR DATA-STALE\r\n"), Err(ReplyError::Err { code: "DATA-STALE".into() }));
        assert_eq!(p(b"\x16\x03\x01\xff\xfe\n"), Err(ReplyError::Undecodable { byte: 0xff, line: 1 }));
        assert_eq!(p(b"BEGIN LIST VAR test\nVAR test ups.status \"O\xe9L\"\n"), Err(ReplyError::Undecodable { byte: 0xe9, line: 2 }));
        // Bytes that are not text are named as soon as they come, not when (or if) their line ends…
        assert_eq!(ListVarReply::new("test").feed(b"\x16\x03\x01\xfc"), Err(ReplyError::Undecodable { byte: 0xfc, line: 1 }));
        // …while a character cut between two reads is text.
        let mut r = ListVarReply::new("test");
        assert_eq!(r.feed(b"BEGIN LIST VAR test\nVAR test ups.mfr \"\xc3"), Ok(None));
        assert_eq!(r.feed(b"\xa9\"\nEND LIST VAR test\n").unwrap().unwrap()["ups.mfr"], "\u{e9}");
        assert!(matches!(p(b"hello\n"), Err(ReplyError::Malformed { line }) if line == "hello"));
        assert_eq!(p(b"BEGIN LIST VAR test\nVAR test ups.status \"OL\"\n"), Err(ReplyError::Unfinished));
        let e = NutError::Reply { addr: "h:1".into(), problem: ReplyError::Undecodable { byte: 0xff, line: 1 } };
        assert!(e.to_string().starts_with("upsd at h:1 sent bytes that are not text (byte 0xff in line 1)"), "{e}");
    }

    /// Every input of the fuzz target `target`: its seeds (`fuzz/seeds/`) and
    /// the inputs it found, kept in this crate's `fuzz-regressions/` once fixed.
    fn fuzz_inputs(target: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let seeds = std::fs::read_dir(crate_dir.join("../../fuzz/seeds").join(target)).expect("the target's seeds");
        let found = std::fs::read_dir(crate_dir.join("fuzz-regressions").join(target)).into_iter().flatten();
        seeds.chain(found).map(|e| e.unwrap().path()).map(|p| (p.clone(), std::fs::read(p).unwrap())).collect()
    }

    #[test]
    fn fuzz_inputs_keep_their_properties() {
        for (path, data) in fuzz_inputs("nut_reply") {
            println!("{}", path.display());
            fuzz_reply(&data);
        }
    }

    #[test]
    fn var_lines() {
        assert_eq!(parse_var(r#"VAR test ups.status "OB LB""#, "test"), Some(("ups.status".into(), "OB LB".into())));
        assert_eq!(parse_var(r#"VAR test ups.mfr "say \"hi\" \\ ok""#, "test"), Some(("ups.mfr".into(), r#"say "hi" \ ok"#.into())));
        assert_eq!(parse_var(r#"VAR other ups.status "OL""#, "test"), None);
        assert_eq!(parse_var(r#"VAR test ups.status OL"#, "test"), None);
        assert_eq!(parse_var(r#"VAR test ups.status "O"L""#, "test"), None);
        assert_eq!(parse_var("garbage", "test"), None);
    }

    #[test]
    fn readings_from_flags() {
        let vars: BTreeMap<String, String> = [("ups.status", "OB LB"), ("battery.charge", "9"), ("ups.realpower", "210.5")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = UpsReading::from_vars(&vars).unwrap();
        assert!(r.on_battery && r.low_battery && !r.on_line && !r.forced_shutdown);
        assert_eq!((r.charge, r.realpower_w, r.runtime_s), (Some(9.0), Some(210.5), None));
        assert_eq!(UpsReading::from_vars(&BTreeMap::new()), None);
    }
}
