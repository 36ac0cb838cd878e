//! The wake methods against real BMCs (farm research §4): virtualbmc (IPMI)
//! and sushy-tools (Redfish) powering a placeholder libvirt domain that
//! stands for a host, and a Wake-on-LAN magic packet between two network
//! namespaces the test makes. Needs root, libvirt at qemu:///system and
//! scripts/setup-host.sh's ipmitool and BMC venv. Traffic stays on loopback
//! or in the test's namespaces.

use ebb_farm::wake::{self, BmcCredentials, WakeError, WakeMethod};
use ebb_farm::WakeSettings;
use ebb_lab::bmc::{PowerDomain, Sushy, VirtualBmc, WolNet, BMC_PASSWORD, BMC_USER, WOL_NET_BROADCAST};
use std::time::{Duration, Instant};

fn creds() -> BmcCredentials {
    BmcCredentials { user: BMC_USER.into(), password: BMC_PASSWORD.into(), insecure_tls: false }
}

/// How long a send may take here: a loopback BMC answers in about a second.
const TIMEOUT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn ipmi_powers_the_host_on() {
    let host = PowerDomain::define("ipmi").unwrap();
    let bmc = VirtualBmc::start(&host).await.unwrap();
    assert_eq!(host.state().unwrap(), "shut off");
    let settings = WakeSettings { ipmi: Some(bmc.address()), ..Default::default() };
    let started = Instant::now();
    let done = wake::send(WakeMethod::Ipmi, &settings, Some(&creds()), TIMEOUT).await.unwrap_or_else(|e| panic!("{e}\nvbmcd: {}", bmc.log_tail()));
    let sent = started.elapsed();
    assert!(done.contains("Up/On"), "{done}");
    let running = host.wait_state("running", Duration::from_secs(10)).await.unwrap();
    eprintln!("IPMI power on: ipmitool done in {sent:?}, domain running {running:?} later");
}

#[tokio::test]
async fn ipmi_with_a_wrong_password_names_the_method_and_the_bmc() {
    let host = PowerDomain::define("ipmi-bad").unwrap();
    let bmc = VirtualBmc::start(&host).await.unwrap();
    let settings = WakeSettings { ipmi: Some(bmc.address()), ..Default::default() };
    let wrong = BmcCredentials { password: "not-the-password".into(), ..creds() };
    let e = wake::send(WakeMethod::Ipmi, &settings, Some(&wrong), TIMEOUT).await.unwrap_err();
    match &e {
        WakeError::Failed { method: WakeMethod::Ipmi, address, detail } => {
            assert_eq!(address, &bmc.address());
            assert!(detail.contains("user and password"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    let message = e.to_string();
    assert!(message.starts_with(&format!("ipmi wake of {} failed: ipmitool said: ", bmc.address())), "{message}");
    assert!(!message.contains("not-the-password"), "{message}");
    assert_eq!(host.state().unwrap(), "shut off", "a refused wake powers nothing on");
}

#[tokio::test]
async fn redfish_powers_the_host_on() {
    let host = PowerDomain::define("redfish").unwrap();
    let sushy = Sushy::start(&host).await.unwrap();
    assert_eq!(sushy.power_state().as_deref(), Some("Off"));
    let settings = WakeSettings { redfish: Some(sushy.system_url()), ..Default::default() };
    let started = Instant::now();
    let done = wake::send(WakeMethod::Redfish, &settings, Some(&creds()), TIMEOUT).await.unwrap_or_else(|e| panic!("{e}\nsushy: {}", sushy.log_tail()));
    let sent = started.elapsed();
    assert!(done.contains("accepted"), "{done}");
    let running = host.wait_state("running", Duration::from_secs(10)).await.unwrap();
    assert_eq!(sushy.power_state().as_deref(), Some("On"));
    eprintln!("Redfish reset On: answered in {sent:?}, domain running {running:?} later");
}

/// Over https with a self-signed certificate, as most BMCs are: refused
/// unless the credentials accept any certificate, then the host powers on.
#[tokio::test]
async fn redfish_over_tls_checks_the_certificate_unless_told_not_to() {
    let host = PowerDomain::define("redfish-tls").unwrap();
    let sushy = Sushy::start_tls(&host).await.unwrap();
    let settings = WakeSettings { redfish: Some(sushy.system_url()), ..Default::default() };
    assert!(sushy.system_url().starts_with("https://"));
    let e = wake::send(WakeMethod::Redfish, &settings, Some(&creds()), TIMEOUT).await.unwrap_err();
    let message = e.to_string();
    assert!(message.contains("TLS with 127.0.0.1") && message.contains("insecure_tls"), "{message}");
    eprintln!("self-signed, checked: {message}");
    assert_eq!(host.state().unwrap(), "shut off");
    let trusting = BmcCredentials { insecure_tls: true, ..creds() };
    let done = wake::send(WakeMethod::Redfish, &settings, Some(&trusting), TIMEOUT).await.unwrap_or_else(|e| panic!("{e}\nsushy: {}", sushy.log_tail()));
    assert!(done.contains("accepted"), "{done}");
    host.wait_state("running", Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn redfish_for_an_unknown_system_says_the_status_and_what_to_check() {
    let host = PowerDomain::define("redfish-bad").unwrap();
    let sushy = Sushy::start(&host).await.unwrap();
    let url = sushy.system_url().replace(host.uuid(), "00000000-0000-0000-0000-000000000000");
    let settings = WakeSettings { redfish: Some(url.clone()), ..Default::default() };
    let e = wake::send(WakeMethod::Redfish, &settings, None, TIMEOUT).await.unwrap_err();
    let message = e.to_string();
    assert!(matches!(&e, WakeError::Failed { method: WakeMethod::Redfish, address, .. } if *address == url), "{e:?}");
    assert!(message.contains("the BMC answered") && message.contains("check the System URL"), "{message}");
    assert_eq!(host.state().unwrap(), "shut off");
}

/// A BMC that never answers: IPMI to a UDP port nobody reads, Redfish to a
/// listener that accepts and stays silent. Each fails within its timeout.
#[tokio::test]
async fn a_bmc_that_does_not_answer_fails_within_the_timeout() {
    let timeout = Duration::from_secs(2);
    let silent_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let ipmi = WakeSettings { ipmi: Some(silent_udp.local_addr().unwrap().to_string()), ..Default::default() };
    let started = Instant::now();
    let e = wake::send(WakeMethod::Ipmi, &ipmi, Some(&creds()), timeout).await.unwrap_err();
    let took = started.elapsed();
    assert!(took < timeout + Duration::from_millis(500), "IPMI took {took:?}");
    assert_eq!(e, WakeError::TimedOut { method: WakeMethod::Ipmi, address: silent_udp.local_addr().unwrap().to_string(), after: timeout });
    eprintln!("IPMI, silent BMC: {e} ({took:?})");

    let silent_tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent_tcp.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent_tcp.accept().await {
            conns.push(c);
        }
    });
    let url = format!("http://{addr}/redfish/v1/Systems/x");
    let redfish = WakeSettings { redfish: Some(url.clone()), ..Default::default() };
    let started = Instant::now();
    let e = wake::send(WakeMethod::Redfish, &redfish, None, timeout).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e, WakeError::TimedOut { method: WakeMethod::Redfish, address: url, after: timeout });
    assert!(took < timeout + Duration::from_millis(500), "Redfish took {took:?}");
    held.abort();
}

/// The magic packet crosses a veth between two namespaces as a subnet
/// broadcast, and arrives exactly as Wake-on-LAN defines it.
#[test]
fn wol_magic_packet_reaches_the_hosts_segment() {
    let net = WolNet::up().unwrap();
    let nic = net.listener_udp(9).unwrap();
    nic.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mac = "52:54:00:ab:cd:ef";
    let settings = WakeSettings { mac: Some(mac.into()), broadcast: Some(WOL_NET_BROADCAST.into()), ..Default::default() };
    let done = net
        .in_sender(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(wake::send(WakeMethod::Wol, &settings, None, Duration::from_secs(2)))
        })
        .unwrap()
        .unwrap();
    assert!(done.contains(&format!("{WOL_NET_BROADCAST}:9")), "{done}");
    let mut buf = [0u8; 512];
    let (n, from) = nic.recv_from(&mut buf).expect("no magic packet arrived within 5 s");
    assert_eq!(&buf[..n], &wake::magic_packet([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef])[..]);
    assert_eq!(from.ip().to_string(), "10.251.7.1", "sent from the sender's namespace");
}

/// A MAC that is not one is refused before anything is sent.
#[tokio::test]
async fn wol_refuses_a_bad_mac() {
    let settings = WakeSettings { mac: Some("52:54:00:ab:cd".into()), ..Default::default() };
    let e = wake::send(WakeMethod::Wol, &settings, None, Duration::from_secs(1)).await.unwrap_err();
    assert!(e.to_string().starts_with("wol wake of 52:54:00:ab:cd failed: farm.wake.mac"), "{e}");
}
