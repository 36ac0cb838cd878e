//! Per-VM settings from two places, the config file's `[vm.NAME]` and the
//! domain's libvirt `<metadata>` in ebb's namespace (so they travel with the
//! VM). The config file wins; every value remembers where it came from.
//! Every per-VM setting the agent uses is resolved here, and only here.

use crate::config::{Size, VmReallocSection, VmSection};
use ebb_core::affinity::CpuSet;
use ebb_core::human::{FieldError, Span};
use ebb_core::sleep::SleepSettings;
use ebb_core::{Bytes, SleepMode, VmSettings};
use quick_xml::events::Event;
use serde::{Deserialize, Serialize};

/// Where a setting's value came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Config,
    Metadata,
    #[default]
    Default,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Metadata => "metadata",
            Source::Default => "default",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingSources {
    pub shares: Source,
    pub min: Source,
    pub max: Source,
    pub managed: Source,
    /// Where the sleep opt-in came from (`[vm.NAME.sleep]` or `<sleep>`).
    pub sleep: Source,
    /// Where the reallocation bounds came from (`[vm.NAME.realloc]` or `<realloc>`).
    #[serde(default)]
    pub realloc: Source,
    #[serde(default)]
    pub value: Source,
    #[serde(default)]
    pub handles_power_events: Source,
}

/// Settings read from a domain's metadata element, e.g.
/// `<ebb:vm xmlns:ebb="https://ebb.dev/xmlns/vm/1" managed="yes">
///    <ebb:memory shares="2000" min="256MiB" max="1GiB"/>
///    <ebb:sleep mode="save" idle_after="30m"/></ebb:vm>`.
/// A `<sleep>` element is the sleep opt-in, as a `[vm.NAME.sleep]` section
/// is; its attributes carry the section's names. So do `<realloc>` (the
/// `[vm.NAME.realloc]` section's) and `<power value="5"
/// handles_power_events="no"/>` (the `[vm.NAME]` fields of those names).
#[derive(Debug, Default, Clone)]
pub struct MetadataSettings {
    pub shares: Option<u32>,
    pub min: Option<Bytes>,
    pub max: Option<Bytes>,
    pub managed: Option<bool>,
    pub sleep: Option<SleepSettings>,
    pub realloc: Option<VmReallocSection>,
    pub value: Option<u32>,
    pub handles_power_events: Option<bool>,
}

/// Why a domain's ebb metadata is refused, in a sentence naming the element
/// and attribute.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("ebb metadata is not well-formed XML: {0}")]
    Xml(#[from] quick_xml::Error),
    #[error("ebb metadata has a malformed attribute: {0}")]
    Attribute(#[from] quick_xml::events::attributes::AttrError),
    #[error("ebb metadata attribute {key} is malformed: {source}")]
    Value { key: String, source: quick_xml::Error },
    /// One setting, as written (`<sleep mode="nap">`), and what is wrong with it.
    #[error("{setting}: {problem}")]
    Setting { setting: String, problem: String },
    /// A rule of the section an element stands for (`<sleep>`, `<realloc>`).
    #[error(transparent)]
    Rule(#[from] FieldError),
}

/// The refusal of `setting` (`<sleep mode="nap">`), for `problem`.
fn refuse(setting: &str, problem: impl ToString) -> MetadataError {
    MetadataError::Setting { setting: setting.to_string(), problem: problem.to_string() }
}

pub fn parse_metadata(xml: &str) -> Result<MetadataSettings, MetadataError> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut out = MetadataSettings::default();
    loop {
        let e = match reader.read_event()? {
            Event::Start(e) | Event::Empty(e) => e,
            Event::Eof => break,
            _ => continue,
        };
        let element = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
        if element == "sleep" {
            out.sleep = Some(SleepSettings { enabled: true, ..SleepSettings::default() });
        }
        for attr in e.attributes() {
            let attr = attr?;
            let key = String::from_utf8_lossy(attr.key.local_name().as_ref()).into_owned();
            if attr.key.as_ref().starts_with(b"xmlns") {
                continue;
            }
            let value = match attr.unescape_value() {
                Ok(v) => v.into_owned(),
                Err(source) => return Err(MetadataError::Value { key, source }),
            };
            let field = format!("<{element} {key}=\"{value}\">");
            match (element.as_str(), key.as_str()) {
                ("vm", "managed") => out.managed = Some(parse_bool(&value).ok_or_else(|| refuse(&field, "use yes or no"))?),
                ("memory", "shares") => {
                    let s: u32 = value.parse().map_err(|_| refuse(&field, "shares must be a whole number"))?;
                    if s == 0 {
                        return Err(refuse(&field, "shares must be more than zero"));
                    }
                    out.shares = Some(s);
                }
                ("memory", "min") => out.min = Some(parse_size(&value, &field)?),
                ("memory", "max") => out.max = Some(parse_size(&value, &field)?),
                ("sleep", _) => {
                    let sleep = out.sleep.get_or_insert_with(SleepSettings::default);
                    parse_sleep(sleep, &key, &value, &field)?;
                    sleep.validate(&field)?;
                }
                ("realloc", _) => parse_realloc(out.realloc.get_or_insert_with(VmReallocSection::default), &key, &value, &field)?,
                ("power", "value") => {
                    out.value = Some(value.parse().map_err(|_| refuse(&field, format!("a whole number from 0 to {}", u32::MAX)))?)
                }
                ("power", "handles_power_events") => out.handles_power_events = Some(parse_bool(&value).ok_or_else(|| refuse(&field, "use yes or no"))?),
                _ => return Err(refuse(&field, "ebb does not know this setting")),
            }
        }
    }
    if let Some(r) = &out.realloc {
        r.validate("<realloc>")?;
    }

    Ok(out)
}

fn parse_realloc(r: &mut VmReallocSection, key: &str, value: &str, field: &str) -> Result<(), MetadataError> {
    let whole = || value.parse::<u64>().map_err(|_| refuse(field, "a whole number"));
    let yes_no = || parse_bool(value).ok_or_else(|| refuse(field, "use yes or no"));
    match key {
        "enabled" => r.enabled = Some(yes_no()?),
        "critical" => r.critical = yes_no()?,
        "cpu_shares_min" => r.cpu_shares_min = Some(whole()?),
        "cpu_shares_max" => r.cpu_shares_max = Some(whole()?),
        "cpu_cap_max" => r.cpu_cap_max = Some(value.parse().map_err(|_| refuse(field, "a fraction of one vCPU, like 1.5"))?),
        "net_max" => r.net_max = Some(Size(parse_size(value, field)?)),
        "disk_max" => r.disk_max = Some(Size(parse_size(value, field)?)),
        "vcpus_min" => r.vcpus_min = Some(value.parse().map_err(|_| refuse(field, "a whole number of vCPUs"))?),
        "cpus" => {
            let set = CpuSet::parse(value).map_err(|e| refuse(field, e))?;
            if set.is_empty() {
                return Err(refuse(field, "names no CPU"));
            }
            r.cpus = Some(set);
        }
        _ => return Err(refuse(field, "ebb does not know this setting")),
    }
    Ok(())
}

fn parse_sleep(s: &mut SleepSettings, key: &str, value: &str, field: &str) -> Result<(), MetadataError> {
    match key {
        "enabled" => s.enabled = parse_bool(value).ok_or_else(|| refuse(field, "use yes or no"))?,
        "mode" => {
            s.mode = match value {
                "save" => SleepMode::Save,
                "pause" => SleepMode::Pause,
                _ => return Err(refuse(field, "mode is save or pause")),
            }
        }
        "idle_after" => s.idle_after = Span::parse(value).map_err(|e| refuse(field, e))?,
        "cpu_threshold" => s.cpu_threshold = value.parse().map_err(|_| refuse(field, "a fraction of one vCPU, like 0.05"))?,
        "net_threshold" => s.net_threshold = value.parse().map_err(|e| refuse(field, e))?,
        "disk_threshold" => s.disk_threshold = value.parse().map_err(|e| refuse(field, e))?,
        _ => return Err(refuse(field, "ebb does not know this setting")),
    }
    Ok(())
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Some(true),
        "no" | "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

fn parse_size(v: &str, field: &str) -> Result<Bytes, MetadataError> {
    let b: Bytes = v.parse().map_err(|e| refuse(field, e))?;
    if b == Bytes::ZERO {
        return Err(refuse(field, "a size of zero is not allowed"));
    }
    Ok(b)
}

#[derive(Debug, Clone)]
pub struct Resolved {
    pub settings: VmSettings,
    /// The sleep opt-in and its thresholds; None when the VM never sleeps.
    pub sleep: Option<SleepSettings>,
    /// Reallocation bounds and flags (`[vm.NAME.realloc]` or `<realloc>`).
    pub realloc: Option<VmReallocSection>,
    /// Its value when power drops; None: not set (counted as 1).
    pub value: Option<u32>,
    /// false: saved before the others on low battery.
    pub handles_power_events: bool,
    pub sources: SettingSources,
    /// Values that had to be ignored, in words.
    pub problems: Vec<String>,
}

/// Merges config over metadata over defaults.
pub fn resolve(config: Option<&VmSection>, meta: Option<&MetadataSettings>) -> Resolved {
    fn pick<T: Clone>(cfg: Option<T>, meta: Option<T>, default: T) -> (T, Source) {
        match (cfg, meta) {
            (Some(v), _) => (v, Source::Config),
            (None, Some(v)) => (v, Source::Metadata),
            (None, None) => (default, Source::Default),
        }
    }
    let d = VmSettings::default();
    let cfg = config.cloned().unwrap_or_default();
    let meta = meta.cloned().unwrap_or_default();
    let (shares, s_src) = pick(cfg.shares, meta.shares, d.shares);
    let (min, min_src) = pick(cfg.min.map(|s| Some(s.0)), meta.min.map(Some), None);
    let (max, max_src) = pick(cfg.max.map(|s| Some(s.0)), meta.max.map(Some), None);
    let (managed, m_src) = pick(cfg.managed, meta.managed, d.managed);
    // A `[vm.NAME.sleep]` section replaces a `<sleep>` element as a whole,
    // and a `[vm.NAME.realloc]` section a `<realloc>` one.
    let (sleep, sleep_src) = pick(cfg.sleep.map(Some), meta.sleep.map(Some), None);
    let (realloc, realloc_src) = pick(cfg.realloc.map(Some), meta.realloc.map(Some), None);
    let (value, value_src) = pick(cfg.value.map(Some), meta.value.map(Some), None);
    let (handles_power_events, h_src) = pick(cfg.handles_power_events, meta.handles_power_events, true);
    let mut resolved = Resolved {
        settings: VmSettings { shares, min, max, managed, burst_rate: None },
        sleep,
        realloc,
        value,
        handles_power_events,
        sources: SettingSources {
            shares: s_src,
            min: min_src,
            max: max_src,
            managed: m_src,
            sleep: sleep_src,
            realloc: realloc_src,
            value: value_src,
            handles_power_events: h_src,
        },
        problems: vec![],
    };
    // A min from one place above a max from the other: keep the guarantee,
    // drop the cap, and say so.
    if let (Some(lo), Some(hi)) = (min, max) {
        if lo > hi {
            resolved.problems.push(format!(
                "min {lo} ({:?}) is above max {hi} ({:?}): ignoring the max",
                min_src, max_src
            ));
            resolved.settings.max = None;
            resolved.sources.max = Source::Default;
        }
    }
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const META: &str = r#"<ebb:vm xmlns:ebb="https://ebb.dev/xmlns/vm/1" managed="yes"><ebb:memory shares="2000" min="256MiB" max="1GiB"/></ebb:vm>"#;

    #[test]
    fn parses_metadata() {
        let m = parse_metadata(META).unwrap();
        assert_eq!(
            (m.shares, m.min, m.max, m.managed, m.sleep, m.value),
            (Some(2000), Some(Bytes::from_mib(256)), Some(Bytes::from_gib(1)), Some(true), None, None)
        );
        assert!(m.realloc.is_none() && m.handles_power_events.is_none());
    }

    #[test]
    fn sleep_from_metadata_unless_the_config_has_a_section() {
        let xml = r#"<ebb:vm xmlns:ebb="https://ebb.dev/xmlns/vm/1"><ebb:sleep mode="pause" idle_after="30m" cpu_threshold="0.1"/></ebb:vm>"#;
        let m = parse_metadata(xml).unwrap();
        let r = resolve(None, Some(&m));
        let sleep = r.sleep.unwrap();
        assert!(sleep.enabled);
        assert_eq!((sleep.mode, sleep.idle_after, sleep.cpu_threshold), (SleepMode::Pause, Span::from_secs(30 * 60), 0.1));
        assert_eq!(r.sources.sleep, Source::Metadata);

        let cfg = Config::parse("[vm.web.sleep]\nidle_after = \"5m\"\n").unwrap();
        let r = resolve(cfg.vm.get("web"), Some(&m));
        let sleep = r.sleep.unwrap();
        assert_eq!((sleep.mode, sleep.idle_after), (SleepMode::Save, Span::from_secs(5 * 60)));
        assert_eq!(r.sources.sleep, Source::Config);

        let off = parse_metadata(r#"<vm><sleep enabled="no"/></vm>"#).unwrap();
        assert!(!resolve(None, Some(&off)).sleep.unwrap().enabled);
        assert_eq!(resolve(None, None).sleep, None);
        for bad in [r#"<vm><sleep mode="hibernate"/></vm>"#, r#"<vm><sleep idle_after="soon"/></vm>"#, r#"<vm><sleep cpu_threshold="-1"/></vm>"#, r#"<vm><sleep cpu_threshold="2"/></vm>"#, r#"<vm><sleep naps="3"/></vm>"#] {
            let e = parse_metadata(bad).unwrap_err().to_string();
            assert!(e.contains("<sleep "), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_metadata_is_named() {
        let e = parse_metadata(r#"<vm><memory min="lots"/></vm>"#).unwrap_err().to_string();
        assert!(e.contains("min=\"lots\""), "{e}");
        let e = parse_metadata(r#"<vm><memory colour="red"/></vm>"#).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        assert!(parse_metadata("<vm><memory").is_err());
    }

    #[test]
    fn config_wins_over_metadata_and_sources_are_kept() {
        let cfg = Config::parse("[vm.web]\nshares = 500\n").unwrap();
        let meta = parse_metadata(META).unwrap();
        let r = resolve(cfg.vm.get("web"), Some(&meta));
        assert_eq!(r.settings.shares, 500);
        assert_eq!(r.sources.shares, Source::Config);
        assert_eq!(r.settings.min, Some(Bytes::from_mib(256)));
        assert_eq!(r.sources.min, Source::Metadata);
        let r = resolve(None, None);
        assert_eq!(r.settings, VmSettings::default());
        assert_eq!(r.sources.shares, Source::Default);
    }

    #[test]
    fn min_above_max_across_sources_drops_the_max() {
        let cfg = Config::parse("[vm.web]\nmin = \"2GiB\"\n").unwrap();
        let meta = parse_metadata(META).unwrap();
        let r = resolve(cfg.vm.get("web"), Some(&meta));
        assert_eq!(r.settings.min, Some(Bytes::from_gib(2)));
        assert_eq!(r.settings.max, None);
        assert_eq!(r.problems.len(), 1);
    }

    #[test]
    fn realloc_and_power_settings_come_from_metadata_unless_the_config_has_them() {
        let xml = r#"<ebb:vm xmlns:ebb="https://ebb.dev/xmlns/vm/1"><ebb:realloc critical="yes" cpu_shares_max="4096" net_max="10MiB" vcpus_min="1" cpus="0-1"/><ebb:power value="7" handles_power_events="no"/></ebb:vm>"#;
        let m = parse_metadata(xml).unwrap();
        let r = resolve(None, Some(&m));
        let realloc = r.realloc.as_ref().unwrap();
        assert!(realloc.critical);
        assert_eq!((realloc.cpu_shares_max, realloc.net_max.map(|s| s.0), realloc.vcpus_min), (Some(4096), Some(Bytes::from_mib(10)), Some(1)));
        assert_eq!(realloc.cpus.as_ref().map(|c| c.to_string()).as_deref(), Some("0-1"));
        assert_eq!((r.value, r.handles_power_events), (Some(7), false));
        assert_eq!((r.sources.realloc, r.sources.value, r.sources.handles_power_events), (Source::Metadata, Source::Metadata, Source::Metadata));

        // The config's section replaces the element as a whole; its fields win one by one.
        let cfg = Config::parse("[vm.web]\nvalue = 3\n[vm.web.realloc]\nvcpus_min = 2\n").unwrap();
        let r = resolve(cfg.vm.get("web"), Some(&m));
        let realloc = r.realloc.unwrap();
        assert_eq!((realloc.critical, realloc.vcpus_min, realloc.cpus), (false, Some(2), None));
        assert_eq!((r.value, r.sources.value, r.handles_power_events, r.sources.handles_power_events), (Some(3), Source::Config, false, Source::Metadata));
        let r = resolve(None, None);
        assert_eq!((r.value, r.handles_power_events, r.sources.handles_power_events), (None, true, Source::Default));

        // The config file's rules hold for metadata too.
        for (bad, says) in [
            (r#"<vm><realloc vcpus_min="0"/></vm>"#, "vcpus_min = 0"),
            (r#"<vm><realloc cpu_shares_min="900" cpu_shares_max="100"/></vm>"#, "above cpu_shares_max"),
            (r#"<vm><realloc cpus="lots"/></vm>"#, "cpus=\"lots\""),
            (r#"<vm><realloc boost="9"/></vm>"#, "does not know"),
            (r#"<vm><power value="-1"/></vm>"#, "value=\"-1\""),
        ] {
            let e = parse_metadata(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
