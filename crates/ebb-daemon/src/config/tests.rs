use super::*;
use ebb_core::devices::DeviceConfig;
use ebb_core::memory::MemoryConfig;
use ebb_core::power::Watts;
use ebb_core::realloc::ReallocConfig;
use ebb_core::SleepMode;
use ebb_surrogate::{Limits, SurrogateConfig};
use std::time::Duration;

#[test]
fn empty_config_gives_defaults() {
    let c = Config::parse("").unwrap();
    assert_eq!(c.agent.uri, "qemu:///system");
    assert_eq!(c.agent.tick, Duration::from_secs(2));
    assert_eq!(c.memory, MemoryConfig::default());
}

#[test]
fn example_config_documents_the_defaults() {
    let c = Config::parse(include_str!("../../../../ebb.example.toml")).unwrap();
    assert_eq!(c.memory, MemoryConfig::default());
    assert_eq!(c.surrogate, SurrogateConfig::default());
    assert_eq!(c.surrogate_limits(), Limits::default());
    assert_eq!(c.realloc, ReallocConfig::default());
    let d = PowerSection::default();
    assert_eq!(
        (c.power.low_battery(), c.power.sysfs, c.power.timeout, c.power.ups, c.power.shutdown_timeout, c.power.ups_ca, c.power.ups_tls_name),
        (d.low_battery(), d.sysfs, d.timeout, d.ups, d.shutdown_timeout, d.ups_ca, d.ups_tls_name)
    );
    assert_eq!(c.power.devices, DeviceConfig::default());
    assert_eq!(c.power.devices.disk_standby_command, None);
    assert_eq!(c.clients, ebb_core::clients::ClientsConfig::default());
    let d = AgentSection::default();
    assert_eq!((c.agent.uri, c.agent.tick, c.agent.fast_tick, c.agent.socket, c.agent.journal), (d.uri, d.tick, d.fast_tick, d.socket, d.journal));
}

#[test]
fn full_config_parses() {
    let c = Config::parse(
        r#"
        [agent]
        uri = "test:///default"
        tick = "500ms"
        [memory]
        pool = "2GiB"
        idle_tax = 0.5
        [vm.web]
        shares = 2000
        min = "256MiB"
        max = "1GiB"
        "#,
    )
    .unwrap();
    assert_eq!(c.agent.tick, Duration::from_millis(500));
    assert_eq!(c.memory.pool, Some(Bytes::from_gib(2)));
    let web = c.vm_section(&VmId::new("web")).unwrap();
    assert_eq!(web.min.unwrap().0, Bytes::from_mib(256));
}

#[test]
fn realloc_bounds_that_contradict_are_named() {
    let e = Config::parse("[vm.web.realloc]\ncpu_shares_min = 5000\ncpu_shares_max = 100\n").unwrap_err().to_string();
    assert!(e.contains("vm.web.realloc.cpu_shares_min"), "{e}");
    let e = Config::parse("[vm.web.realloc]\nvcpus_min = 0\n").unwrap_err().to_string();
    assert!(e.contains("vcpus_min = 0"), "{e}");
    let e = Config::parse("[vm.web.realloc]\ncpu_cap_max = 0\n").unwrap_err().to_string();
    assert!(e.contains("cpu_cap_max"), "{e}");
    let e = Config::parse("[vm.web.realloc]\nnet_max = \"512B\"\n").unwrap_err().to_string();
    assert!(e.contains("vm.web.realloc.net_max = 512 B") && e.contains("1 KiB"), "{e}");
    let e = Config::parse("[vm.web.realloc]\nnet_max = \"fast\"\n").unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("\"fast\" is not a size"), "{e}");
    let c = Config::parse("[vm.web.realloc]\nnet_max = \"100MiB\"\n").unwrap();
    assert_eq!(c.vm_section(&VmId::new("web")).unwrap().realloc.as_ref().unwrap().settings().net_max, Some(Bytes::from_mib(100)));
    let e = Config::parse("[realloc]\ncpu_busy = 0.5\ncpu_busy_leave = 0.7\n").unwrap_err().to_string();
    assert!(e.contains("cpu_busy_leave"), "{e}");
    let c = Config::parse("[vm.web.realloc]\ncritical = true\ncpu_cap_max = 2.0\n").unwrap();
    let s = c.vm_section(&VmId::new("web")).unwrap().realloc.as_ref().unwrap().settings();
    assert!(s.critical && !s.disabled && s.cap_max == Some(2.0));
}

#[test]
fn power_settings_are_checked() {
    let e = Config::parse("[power]\nups = \"127.0.0.1\"\n").unwrap_err().to_string();
    assert!(e.contains("name@host"), "{e}");
    let c = Config::parse("[power]\nups = \"ups1@10.0.0.5\"\n").unwrap();
    assert_eq!(c.power.ups_address().unwrap().unwrap(), ("ups1".to_string(), "10.0.0.5:3493".to_string()));
    assert!(Config::parse("[power]\nlow_charge = 120\n").unwrap_err().to_string().contains("low_charge"));
    assert!(Config::parse("[power]\npower_off_command = []\n").unwrap_err().to_string().contains("power_off_command"));
    assert!(Config::parse("[power]\nmodel_table = [1, 2, 3]\n").unwrap_err().to_string().contains("11 watt figures"));
    assert!(Config::parse("[power]\nidle_watts = 300.0\nmax_watts = 200.0\n").unwrap_err().to_string().contains("max_watts"));
    assert!(Config::parse("[power]\nbudget = 0.0\n").unwrap_err().to_string().contains("budget"));
    let c = Config::parse("[power]\nmodel_table = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110]\n").unwrap();
    assert_eq!(c.power.model().host(0.55), Watts(65.0));
}

#[test]
fn device_settings_are_checked() {
    let e = Config::parse("[power.devices]\ngovernor = \"turbo\"\n").unwrap_err().to_string();
    assert!(e.contains("power.devices.governor = \"turbo\"") && e.contains("powersave"), "{e}");
    let e = Config::parse("[power.devices]\ncpu_low = 0.6\ncpu_high = 0.5\n").unwrap_err().to_string();
    assert!(e.contains("power.devices.cpu_low (0.6) must be below"), "{e}");
    assert!(Config::parse("[power.devices]\nmax_freq_fraction = 0\n").unwrap_err().to_string().contains("max_freq_fraction"));
    assert!(Config::parse("[power.devices]\ndisk_standby_command = []\n").unwrap_err().to_string().contains("disk_standby_command"));
    assert!(Config::parse("[power.devices]\ndisk_idle_after = \"0s\"\n").unwrap_err().to_string().contains("more than zero"));
    let e = Config::parse("[power.devices]\nspindown = true\n").unwrap_err().to_string();
    assert!(e.contains("spindown") && e.contains("line 2"), "{e}");
    let c = Config::parse("[power.devices]\ncpufreq = true\ncpu_low_after = \"5s\"\ndisk_idle_after = \"20m\"\ndisk_standby_command = [\"hdparm\", \"-y\"]\n").unwrap();
    let d = &c.power.devices;
    assert!(d.cpufreq);
    assert_eq!((d.cpu_low_after.as_millis(), d.disk_idle_after.map(|s| s.as_millis())), (5_000, Some(1_200_000)));
}

#[test]
fn unknown_field_is_named_with_its_line() {
    let e = Config::parse("[memory]\npool = \"1GiB\"\nballoon_speed = 3\n").unwrap_err().to_string();
    assert!(e.contains("balloon_speed"), "{e}");
    assert!(e.contains("line 3"), "{e}");
}

#[test]
fn zero_and_negative_sizes_are_refused() {
    let e = Config::parse("[memory]\npool = \"0MiB\"\n").unwrap_err().to_string();
    assert!(e.contains("zero") && e.contains("line 2"), "{e}");
    let e = Config::parse("[vm.a]\nmin = -5\n").unwrap_err().to_string();
    assert!(e.contains("negative"), "{e}");
    let e = Config::parse("[vm.a]\nmin = \"-1GiB\"\n").unwrap_err().to_string();
    assert!(e.contains("negative"), "{e}");
}

#[test]
fn min_above_max_is_refused() {
    let e = Config::parse("[vm.db]\nmin = \"1GiB\"\nmax = \"512MiB\"\n").unwrap_err().to_string();
    assert!(e.contains("vm.db.min (1 GiB) is above vm.db.max (512 MiB)"), "{e}");
    assert!(e.contains("line 2"), "{e}");
}

#[test]
fn pool_below_sum_of_minimums_says_by_how_much() {
    let e = Config::parse(
        "[memory]\npool = \"1GiB\"\n[vm.a]\nmin = \"768MiB\"\n[vm.b]\nmin = \"512MiB\"\n",
    )
    .unwrap_err().to_string();
    assert!(e.contains("by 256 MiB"), "{e}");
    assert!(e.contains("line 2"), "{e}");
}

#[test]
fn domain_patterns() {
    assert!(glob_match("ebb-demo-*", "ebb-demo-1"));
    assert!(glob_match("*web*", "prod-web-2"));
    assert!(!glob_match("ebb-demo-*", "prod"));
    assert!(glob_match("db", "db") && !glob_match("db", "db2"));
    let c = Config::parse("[agent]\ndomains = [\"a*\", \"b\"]\n").unwrap();
    assert!(c.agent.is_ebbs("alpha") && c.agent.is_ebbs("b") && !c.agent.is_ebbs("c"));
    assert!(Config::parse("").unwrap().agent.is_ebbs("anything"));
}

#[test]
fn a_pattern_with_many_stars_matches_in_linear_time() {
    // Exponential backtracking would never finish these.
    let name = format!("relx-{}", "a".repeat(200));
    let stars = format!("relx-{}b", "*a".repeat(30));
    assert!(!glob_match(&stars, &name));
    assert!(glob_match(&format!("{}*", "*a".repeat(30)), &name));
    assert!(glob_match(&format!("relx-{}", "*a".repeat(30)), &name));
    let c = Config::parse(&format!("[agent]\ndomains = [{stars:?}]\n")).unwrap();
    assert!(!c.agent.is_ebbs(&name));
    assert!(glob_match("wé*🚀", "wéb-🚀") && !glob_match("w?b", "web"));
}

/// The plain definition, exponential but fine on small inputs.
fn glob_reference(p: &[char], n: &[char]) -> bool {
    match p.split_first() {
        None => n.is_empty(),
        Some(('*', rest)) => (0..=n.len()).any(|k| glob_reference(rest, &n[k..])),
        Some((c, rest)) => n.first() == Some(c) && glob_reference(rest, &n[1..]),
    }
}

proptest::proptest! {
    #[test]
    fn glob_match_agrees_with_the_definition(pattern in "[ab*é]{0,8}", name in "[abé]{0,10}") {
        let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
        proptest::prop_assert_eq!(glob_match(&pattern, &name), glob_reference(&p, &n));
    }
}

#[test]
fn ups_addresses_parse_host_and_port_as_upsc_does() {
    let ups = |text: &str| PowerSection { ups: Some(text.into()), ..PowerSection::default() }.ups_address().unwrap();
    assert_eq!(ups("u@host").unwrap(), ("u".into(), "host:3493".into()));
    assert_eq!(ups("u@10.0.0.5:3494").unwrap(), ("u".into(), "10.0.0.5:3494".into()));
    assert_eq!(ups("u@[::1]").unwrap(), ("u".into(), "[::1]:3493".into()));
    assert_eq!(ups("u@[fe80::1]:3494").unwrap(), ("u".into(), "[fe80::1]:3494".into()));
    for (bad, why) in [
        ("u@127.0.0.1:99999", "from 1 to 65535"),
        ("u@127.0.0.1:0", "from 1 to 65535"),
        ("u@127.0.0.1:", "from 1 to 65535"),
        ("u@[::1", "no closing ']'"),
        ("u@[::1]x", "only :port"),
        ("u@[nope]:1", "not an IPv6 address"),
        ("u@::1", "in brackets"),
        ("u@:3493", "host is empty"),
        ("u@a b", "host is empty or has spaces"),
        ("@host", "names no UPS"),
    ] {
        let e = ups(bad).unwrap_err().to_string();
        assert!(e.contains(&format!("power.ups = {bad:?}")) && e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn a_ups_ca_that_cannot_be_used_is_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let parse = |power: String| Config::parse(&format!("[power]\nups = \"u@127.0.0.1\"\n{power}")).unwrap_err().to_string();
    let e = parse("ups_ca = \"/nonexistent/ca.pem\"\n".into());
    assert!(e.starts_with("line 3: power.ups_ca = \"/nonexistent/ca.pem\" cannot be read (No such file or directory"), "{e}");
    // A wrong path is refused, not read without end (or waited on).
    for path in ["/dev/zero", "/"] {
        let e = parse(format!("ups_ca = \"{path}\"\n"));
        assert!(e.starts_with(&format!("line 3: power.ups_ca = \"{path}\" is not a file")), "{e}");
    }
    let big = dir.path().join("big.pem");
    std::fs::File::create(&big).unwrap().set_len(ebb_backends::nut::MAX_CA_BYTES + 1).unwrap();
    let e = parse(format!("ups_ca = \"{}\"\n", big.display()));
    assert!(e.contains("big.pem\" is larger than 1048576 bytes"), "{e}");
    let block = |body: &str| format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n");
    for (name, text, why) in [
        ("empty.pem", String::new(), "holds no certificate: give the CA certificate in PEM"),
        ("binary.der", "0\u{82}\u{1}\n".into(), "holds no certificate"),
        ("key.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(), "holds no certificate"),
        ("base64.pem", block("!!!!"), "is not a PEM file ("),
        ("junk.pem", block("AAAA"), "certificate 1 in it cannot be a CA ("),
    ] {
        let path = file(name, &text);
        let e = parse(format!("ups_ca = \"{path}\"\n"));
        assert!(e.starts_with(&format!("line 3: power.ups_ca = \"{path}\" {why}")), "{name}: {e}");
    }
    let ca = file("junk2.pem", &block("AAAA"));
    let e = parse(format!("ups_ca = \"{ca}\"\nups_tls_name = \"no spaces please\"\n"));
    assert!(e.starts_with("line 4: power.ups_tls_name = \"no spaces please\" is neither a host name nor an IP address"), "{e}");
    let e = Config::parse(&format!("[power]\nups_ca = \"{ca}\"\n")).unwrap_err().to_string();
    assert!(e.contains("power.ups is not set"), "{e}");
    let e = Config::parse("[power]\nups = \"u@h\"\nups_tls_name = \"h\"\n").unwrap_err().to_string();
    assert!(e.starts_with("line 3: power.ups_tls_name is set without power.ups_ca"), "{e}");
}

#[test]
fn the_tls_name_is_the_host_of_power_ups_unless_given() {
    let power = |ups: &str, name: Option<&str>| PowerSection { ups: Some(ups.into()), ups_tls_name: name.map(Into::into), ..PowerSection::default() };
    let name = |p: PowerSection| p.ups_tls_name(&p.ups_address().unwrap().unwrap().1);
    assert_eq!(name(power("u@ups.lan", None)), "ups.lan");
    assert_eq!(name(power("u@10.0.0.5:3494", None)), "10.0.0.5");
    assert_eq!(name(power("u@[fe80::1]:3494", None)), "fe80::1");
    assert_eq!(name(power("u@10.0.0.5", Some("ups.lan"))), "ups.lan");
}

#[test]
fn paths_compare_after_lexical_normalisation() {
    assert_eq!(lexical(Path::new("/var/lib/./ebb/../ebb//j.db")), PathBuf::from("/var/lib/ebb/j.db"));
    assert_eq!(lexical(Path::new("/../j.db")), PathBuf::from("/j.db"));
    assert_eq!(lexical(Path::new("../a/./b/..")), PathBuf::from("../a"));
    let e = Config::parse("[agent]\nsocket = \"/var/lib/ebb/../ebb/journal.db-wal\"\n").unwrap_err().to_string();
    assert!(e.contains("the journal's own file /var/lib/ebb/journal.db-wal"), "{e}");
}

#[test]
fn the_sleep_threshold_is_one_rule_for_the_config_and_the_metadata() {
    for v in ["-0.1", "1.5", "inf", "NaN"] {
        let from_config = Config::parse(&format!("[vm.web.sleep]\ncpu_threshold = {}\n", v.to_lowercase())).unwrap_err().to_string();
        let from_metadata = crate::settings::parse_metadata(&format!(r#"<vm><sleep cpu_threshold="{v}"/></vm>"#)).unwrap_err().to_string();
        assert!(from_config.contains("in [0, 1]") && from_metadata.contains("in [0, 1]"), "{v}: {from_config} / {from_metadata}");
    }
    for v in ["0", "0.05", "1"] {
        Config::parse(&format!("[vm.web.sleep]\ncpu_threshold = {v}\n")).unwrap();
        crate::settings::parse_metadata(&format!(r#"<vm><sleep cpu_threshold="{v}"/></vm>"#)).unwrap();
    }
}

#[test]
fn durations_are_more_than_zero_and_at_most_a_year() {
    assert_eq!(parse_duration("366h").unwrap(), Duration::from_secs(366 * 3600));
    assert!(parse_duration("9000h").unwrap_err().to_string().contains("longer than a year"));
    assert!(parse_duration("0.0000000000001ms").unwrap_err().to_string().contains("shorter than a millisecond"));
    assert!(parse_duration("0.5ms").unwrap_err().to_string().contains("shorter than a millisecond"));
    assert_eq!(parse_duration("1ms").unwrap(), Duration::from_millis(1));
    let e = Config::parse("[vm.web.sleep]\nidle_after = 1e-12\n").unwrap_err().to_string();
    assert!(e.contains("line 2: vm.web.sleep.idle_after") && e.contains("shorter than a millisecond"), "{e}");
    let e = crate::settings::parse_metadata(r#"<vm><sleep idle_after="99999999999999999999999h"/></vm>"#).unwrap_err().to_string();
    assert!(e.contains("longer than a year"), "{e}");
}

#[test]
fn sleep_sections_opt_in() {
    let c = Config::parse("[vm.web.sleep]\nidle_after = \"5m\"\nmode = \"pause\"\n").unwrap();
    let s = c.vm["web"].sleep.as_ref().unwrap();
    assert!(s.enabled, "the section is the opt-in");
    assert_eq!(s.mode, SleepMode::Pause);
    assert_eq!(s.idle_after.as_millis(), 300_000);
    assert!(!Config::parse("[vm.web.sleep]\nenabled = false\n").unwrap().vm["web"].sleep.as_ref().unwrap().enabled);
    assert!(Config::parse("[vm.web.sleep]\nmode = \"hibernate\"\n").unwrap_err().to_string().contains("hibernate"));
    assert!(Config::parse("[vm.web.sleep]\ncpu_threshold = 2.0\n").unwrap_err().to_string().contains("cpu_threshold"));
    assert!(!c.vm.contains_key("db"));
}

#[test]
fn services_parse_and_are_checked() {
    let c = Config::parse(
        "[[vm.web.service]]\nname = \"http\"\nlisten = \"127.0.0.1:8080\"\nbackend = \"127.0.0.1:18080\"\nhttp = true\n\
         [[vm.web.service.canned]]\nmethod = \"GET\"\npath = \"/healthz\"\nstatus = 200\nbody = \"ok\"\n",
    )
    .unwrap();
    assert_eq!(c.vm["web"].service[0].canned[0].path, "/healthz");
    let e = Config::parse(
        "[[vm.web.service]]\nname = \"http\"\nlisten = \"127.0.0.1:8080\"\nbackend = \"127.0.0.1:18080\"\nhttp = true\n\
         [[vm.web.service.canned]]\nmethod = \"GET\"\npath = \"healthz\"\nstatus = 200\n",
    )
    .unwrap_err().to_string();
    assert!(e.contains("vm.web.service") && e.contains("healthz"), "{e}");
    let e = Config::parse(
        "[[vm.a.service]]\nname = \"x\"\nlisten = \"127.0.0.1:8080\"\nbackend = \"127.0.0.1:1\"\n\
         [[vm.b.service]]\nname = \"y\"\nlisten = \"127.0.0.1:8080\"\nbackend = \"127.0.0.1:2\"\n",
    )
    .unwrap_err().to_string();
    assert!(e.contains("127.0.0.1:8080") && e.contains("already"), "{e}");
    assert!(Config::parse("[surrogate]\nwake_deadline = \"10s\"\nqueue_depth = 5\n").is_ok());
}

#[test]
fn bad_values_are_explained() {
    assert!(Config::parse("[memory]\nidle_tax = 1.5\n").unwrap_err().to_string().contains("idle_tax"));
    assert!(Config::parse("[memory]\nstep_min = \"1GiB\"\nstep_max = \"64MiB\"\n")
        .unwrap_err().to_string()
        .contains("step_min"));
    assert!(Config::parse("[agent]\ntick = \"2 fortnights\"\n").unwrap_err().to_string().contains("unknown unit"));
    assert!(Config::parse("[memory]\npool = \"lots\"\n").unwrap_err().to_string().contains("not a size"));
}

#[test]
fn errors_found_after_parsing_point_at_their_field_by_its_path() {
    let e = Config::parse("[surrogate]\nwake_deadline = \"5s\"\nqueue_depth = 0\n").unwrap_err();
    assert!(matches!(&e, ParseError::Invalid { line: Some(3), error } if error.field == "surrogate.queue_depth"), "{e:?}");
    let e = Config::parse("[power]\nidle_watts = 1.0\nmodel_table = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, -1]\n").unwrap_err().to_string();
    assert!(e.starts_with("line 3: power.model_table[10] = -1 is out of range"), "{e}");
    // A VM's name may hold dots: the longest key the path goes on with is its.
    let e = Config::parse("[vm.web]\nshares = 1\n[vm.\"web.1\"]\nshares = 1\nmin = \"2GiB\"\nmax = \"1GiB\"\n").unwrap_err().to_string();
    assert!(e.starts_with("line 5: vm.web.1.min (2 GiB) is above vm.web.1.max (1 GiB)"), "{e}");
    let e = Config::parse(
        "[[vm.a.service]]\nname = \"x\"\nlisten = \"127.0.0.1:8080\"\nbackend = \"127.0.0.1:1\"\n\
         [[vm.b.service]]\nname = \"y\"\nlisten = \"127.0.0.1:8080\"\nbackend = \"127.0.0.1:2\"\n",
    )
    .unwrap_err();
    assert!(matches!(&e, ParseError::Invalid { line: Some(_), error } if error.field == "vm.b.service"), "{e:?}");
    // A rule about no field the file holds has no line.
    let e = Config::parse("[surrogate]\nwake_deadline = \"5ms\"\n").unwrap_err();
    assert!(matches!(&e, ParseError::Invalid { line: None, .. }) && e.to_string().contains("probe_settle"), "{e:?}");
}

#[test]
fn clients_timers_take_human_spans_and_a_bad_one_names_its_field_and_line() {
    let c = Config::parse("[clients]\nheartbeat_ttl = \"30s\"\nconsole_idle = \"2m\"\nsurrogate_idle = 10\n").unwrap();
    assert_eq!(c.clients.heartbeat_ttl.as_millis(), 30_000);
    assert_eq!(c.clients.console_idle.as_millis(), 120_000);
    assert_eq!(c.clients.surrogate_idle.as_millis(), 10_000);
    let e = Config::parse("[agent]\n[clients]\nheartbeat_ttl = \"2h\"\n").unwrap_err().to_string();
    assert!(e.starts_with("line 3: clients.heartbeat_ttl (2h) is longer than clients.heartbeat_max_ttl (1h)"), "{e}");
    let e = Config::parse("[clients]\nconsole_idle = \"0s\"\n").unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("console_idle") && e.contains("more than zero"), "{e}");
    let e = Config::parse("[clients]\nidle = \"1s\"\n").unwrap_err().to_string();
    assert!(e.contains("unknown field") && e.contains("idle"), "{e}");
}

#[test]
fn the_farm_section_is_optional_and_checked_and_the_example_holds_its_defaults() {
    assert!(Config::parse("").unwrap().farm.is_none());
    // The example's section, uncommented.
    let example = include_str!("../../../../ebb.example.toml");
    let section: String = example[example.find("# [farm]").unwrap()..]
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.starts_with('[') || l.contains(" = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let f = Config::parse(&section).unwrap().farm.unwrap();
    assert_eq!(f.endpoints.len(), 3);
    let d = Config::parse("[farm]\nendpoints = [\"http://10.0.0.5:2379\"]\n").unwrap().farm.unwrap();
    assert_eq!((f.lease_ttl, f.timeout, f.wake_resend, f.wake_give_up, f.bmc_insecure_tls), (d.lease_ttl, d.timeout, d.wake_resend, d.wake_give_up, d.bmc_insecure_tls));
    assert_eq!(f.bmc_user.as_deref(), Some("admin"));
    let e = Config::parse("[farm]\nendpoints = [\"http://a:1\"]\nwake_give_up = \"10s\"\n").unwrap_err().to_string();
    assert!(e.contains("farm.wake_give_up (10s) must be longer than farm.wake_resend (30s)"), "{e}");
    // [farm.sleep]'s defaults are the example's.
    let example_sleep = f.sleep.clone().unwrap();
    let default_sleep = Config::parse("[farm]\nendpoints = [\"http://a:1\"]\n[farm.sleep]\n").unwrap().farm.unwrap().sleep.unwrap();
    assert_eq!((example_sleep.after, example_sleep.min_awake, example_sleep.max_per_hour, example_sleep.state), (default_sleep.after, default_sleep.min_awake, default_sleep.max_per_hour, default_sleep.state));
    assert_eq!(f.wake.methods(), ["ipmi", "redfish", "wol"]);
    let e = Config::parse("[farm]\nendpoints = [\"http://a:1\"]\n[farm.wake]\nmac = \"52:54\"\n").unwrap_err().to_string();
    assert!(e.starts_with("line 4: farm.wake.mac = \"52:54\" is not a MAC address"), "{e}");
    assert_eq!((d.host, d.lease_ttl.to_string(), d.timeout.to_string()), (None, "10s".into(), "2s".into()));
    let e = Config::parse("[farm]\nendpoints = [\"http://a:1\"]\nlease_ttl = \"1s\"\n").unwrap_err().to_string();
    assert!(e.starts_with("line 3: farm.lease_ttl = 1s is not a lease etcd grants"), "{e}");
    let e = Config::parse("[farm]\nendpoints = [\"http://a:1\",\n  \"a:2\"]\n").unwrap_err().to_string();
    assert!(e.starts_with("line 2: farm.endpoints[1] = \"a:2\" does not start with http://"), "{e}");
    let e = Config::parse("[farm]\nendpoint = \"http://a:1\"\n").unwrap_err().to_string();
    assert!(e.contains("endpoint"), "{e}");
}

#[test]
fn the_web_view_needs_a_token_on_tcp_and_refuses_tokens_anyone_could_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str, mode: u32| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p.display().to_string()
    };
    let (good, other, open, short) = (
        file("good", "0123456789abcdef0123\n", 0o600),
        file("other", "fedcba9876543210fedc\n", 0o640),
        file("open", "0123456789abcdef0123\n", 0o644),
        file("short", "abc\n", 0o600),
    );
    // Off by default.
    assert_eq!(Config::parse("").unwrap().web.listen().unwrap(), None);
    let e = Config::parse("[web]\nlisten = \"0.0.0.0:8740\"\n").unwrap_err().to_string();
    assert!(e.starts_with("line 2: web.listen = \"0.0.0.0:8740\" is a TCP address, and a TCP listener needs a token"), "{e}");
    let ok = Config::parse(&format!("[web]\nlisten = \"127.0.0.1:8740\"\nread_token_file = \"{good}\"\nwrite_token_file = \"{other}\"\n")).unwrap();
    let tokens = ok.web.tokens().unwrap();
    assert_eq!((tokens.read.as_deref(), tokens.write.as_deref()), (Some("0123456789abcdef0123"), Some("fedcba9876543210fedc")));
    assert!(!format!("{tokens:?}").contains("0123"), "a token is never printed");
    let e = Config::parse(&format!("[web]\nlisten = \"127.0.0.1:8740\"\nread_token_file = \"{open}\"\n")).unwrap_err().to_string();
    assert!(e.contains("every user may read it (mode 644)"), "{e}");
    let e = Config::parse(&format!("[web]\nlisten = \"127.0.0.1:8740\"\nread_token_file = \"{short}\"\n")).unwrap_err().to_string();
    assert!(e.contains("at least 16 letters, digits or - . _ ~"), "{e}");
    let b64 = file("b64", "abc+def/ghi=jkl#mno&pq\n", 0o600);
    let e = Config::parse(&format!("[web]\nlisten = \"127.0.0.1:8740\"\nread_token_file = \"{b64}\"\n")).unwrap_err().to_string();
    assert!(e.contains("it travels in a URL"), "{e}");
    let e = Config::parse(&format!("[web]\nlisten = \"127.0.0.1:8740\"\nread_token_file = \"{good}\"\nwrite_token_file = \"{good}\"\n")).unwrap_err().to_string();
    assert!(e.contains("hold the same token"), "{e}");
    let e = Config::parse("[web]\nlisten = \"localhost\"\n").unwrap_err().to_string();
    assert!(e.contains("neither an address with a port"), "{e}");
    // A unix socket needs no token, but not agent.socket's path.
    assert!(Config::parse("[web]\nlisten = \"/run/ebb/web.sock\"\n").is_ok());
    let e = Config::parse("[web]\nlisten = \"/run/ebb/ebb.sock\"\n").unwrap_err().to_string();
    assert!(e.contains("agent.socket's path"), "{e}");
    // The example's section, uncommented (its token paths swapped for real files).
    let example = include_str!("../../../../ebb.example.toml");
    let section: String = example[example.find("# [web]").unwrap()..example.find("# [farm]").unwrap()]
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.starts_with('[') || (l.contains(" = ") && !l.starts_with(' ')))
        .map(|l| l.replace("/etc/ebb/web-read.token", &good).replace("/etc/ebb/web-write.token", &other) + "\n")
        .collect();
    assert!(Config::parse(&section).unwrap().web.listen().unwrap().is_some(), "{section}");
}
