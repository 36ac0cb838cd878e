//! The surrogate on real loopback sockets: every client gets its answer or a
//! clear refusal, within bounded time. All traffic goes to 127.0.0.1.

mod common;

use common::*;
use ebb_core::VmId;
use ebb_surrogate::{
    CannedReply, Limits, Refusal, ServiceSpec, SpecError, Surrogate, SurrogateError,
    SurrogateEvent, VmPower, WakeReason,
};
use std::io::ErrorKind;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn vm() -> VmId {
    VmId::new("vm1")
}

fn health() -> CannedReply {
    CannedReply {
        method: "GET".into(),
        path: "/healthz".into(),
        status: 200,
        content_type: "text/plain".into(),
        body: "ok".into(),
    }
}

fn web(listen: std::net::SocketAddr, backend: std::net::SocketAddr) -> ServiceSpec {
    ServiceSpec {
        canned: vec![health()],
        ..ServiceSpec::http("web", listen, backend)
    }
}

fn setup(limits: Limits, services: Vec<ServiceSpec>, state: VmPower, wake: Wake) -> Driver {
    let (mut s, rx) = Surrogate::new(limits);
    s.add_vm(vm(), services, state).unwrap();
    Driver::spawn(s, rx, vm(), wake)
}

/// `n` clients at once, client i asking `/c/i`: each must get the backend's
/// answer to its own request.
async fn each_gets_its_own_answer(listen: std::net::SocketAddr, n: usize) {
    let clients: Vec<_> = (0..n)
        .map(|i| tokio::spawn(async move { (i, http_get(listen, &format!("/c/{i}")).await) }))
        .collect();
    for c in clients {
        let (i, r) = c.await.unwrap();
        let (status, body) = r.unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!((status, body), (200, format!("vm1 GET /c/{i}")));
    }
}

/// Expects the connection to be reset, not closed in order or left open.
async fn expect_reset(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("a refused raw client must not hang");
    match r {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a reset, read {n} bytes"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awake_splice_round_trip_counts_as_activity() {
    bounded(10, async {
        let (listen, backend) = (free_addr(), free_addr());
        let _b = Backend::start(backend, "vm1");
        let d = setup(
            Limits::default(),
            vec![web(listen, backend)],
            VmPower::Awake,
            Wake::Never,
        );
        assert_eq!(d.stats(&vm()).last_activity, None);
        let (status, body) = http_get(listen, "/hello?x=1").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "vm1 GET /hello?x=1"));
        let st = d.stats(&vm());
        assert!(st.bytes_in >= 30 && st.bytes_out >= 50, "{st:?}");
        assert!(st.last_activity.is_some());
        assert_eq!(st.answered_locally, 0);
        assert_eq!(d.wake_requests(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asleep_canned_reply_and_echo_are_answered_locally() {
    bounded(10, async {
        let (listen, backend, echo_listen, echo_backend) =
            (free_addr(), free_addr(), free_addr(), free_addr());
        let echo = ServiceSpec {
            echo: true,
            ..ServiceSpec::tcp("echo", echo_listen, echo_backend)
        };
        let d = setup(
            Limits::default(),
            vec![web(listen, backend), echo],
            VmPower::Asleep,
            Wake::Never,
        );

        let (status, body) = http_get(listen, "/healthz?from=lb").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"));

        let mut s = TcpStream::connect(echo_listen).await.unwrap();
        s.write_all(b"ping\r\n").await.unwrap();
        let mut got = [0u8; 6];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping\r\n");
        drop(s);

        tokio::time::sleep(Duration::from_millis(100)).await;
        let st = d.stats(&vm());
        assert_eq!(st.answered_locally, 2, "{st:?}");
        assert_eq!(
            (st.bytes_in, st.bytes_out, st.last_activity),
            (0, 0, None),
            "{st:?}"
        );
        assert_eq!(d.wake_requests(), 0);
        assert_eq!(
            d.surrogate.lock().unwrap().state(&vm()),
            Some(VmPower::Asleep)
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asleep_request_wakes_the_vm_and_gets_its_answer() {
    bounded(10, async {
        let (listen, backend) = (free_addr(), free_addr());
        let wake = Wake::Http {
            addr: backend,
            name: "vm1".into(),
            delay: Duration::from_millis(300),
        };
        let d = setup(Limits::default(), vec![web(listen, backend)], VmPower::Asleep, wake);
        let t = Instant::now();
        let (status, body) = http_get(listen, "/api/items").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "vm1 GET /api/items"));
        assert!(t.elapsed() >= Duration::from_millis(300));
        let events = d.events.lock().unwrap().clone();
        assert_eq!(events.len(), 1, "{events:?}");
        let SurrogateEvent::WakeNeeded { vm: v, service, reason } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!((v, service.as_str()), (&vm(), "web"));
        assert!(
            matches!(reason, WakeReason::Request { method, path, .. } if method == "GET" && path == "/api/items"),
            "{reason:?}"
        );
        let st = d.stats(&vm());
        assert!(st.bytes_in > 0 && st.last_activity.is_some(), "{st:?}");
        assert_eq!(st.held_connections, 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_clients_each_get_their_answer_once() {
    bounded(20, async {
        let (listen, backend) = (free_addr(), free_addr());
        let wake = Wake::Http {
            addr: backend,
            name: "vm1".into(),
            delay: Duration::from_millis(400),
        };
        let d = setup(
            Limits::default(),
            vec![web(listen, backend)],
            VmPower::Asleep,
            wake,
        );
        each_gets_its_own_answer(listen, 200).await;
        assert_eq!(
            d.backend_requests.load(std::sync::atomic::Ordering::SeqCst),
            200
        );
        assert_eq!(d.wake_requests(), 1);
        assert_eq!(d.refusals(), 0);
        let st = d.stats(&vm());
        assert_eq!(
            (st.held_connections, st.held_bytes, st.refused),
            (0, 0, 0),
            "{st:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_dropped_unanswered_is_sent_again_and_answered_once() {
    bounded(20, async {
        let (listen, backend) = (free_addr(), free_addr());
        let d = setup(
            Limits {
                replay_in_flight: 4,
                ..Limits::default()
            },
            vec![web(listen, backend)],
            VmPower::Asleep,
            Wake::AwakeOnly {
                delay: Duration::from_millis(200),
            },
        );
        let flaky = Backend::start_flaky(backend, "vm1", Arc::new(AtomicUsize::new(0)));
        each_gets_its_own_answer(listen, 50).await;
        // Each request answered once although half the connects were dropped.
        assert_eq!(flaky.count(), 50);
        assert_eq!(d.refusals(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_sending_byte_by_byte_during_the_wake_gets_its_answer() {
    bounded(10, async {
        let (listen, backend) = (free_addr(), free_addr());
        let wake = Wake::Http {
            addr: backend,
            name: "vm1".into(),
            delay: Duration::from_millis(150),
        };
        let d = setup(
            Limits::default(),
            vec![web(listen, backend)],
            VmPower::Asleep,
            wake,
        );
        let mut s = TcpStream::connect(listen).await.unwrap();
        s.set_nodelay(true).unwrap();
        let req = b"GET /slowly HTTP/1.1\r\nHost: test\r\nX-Pad: 0123456789\r\n\r\n";
        for b in req {
            s.write_all(&[*b]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (status, body) = read_response(&mut s).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "vm1 GET /slowly"));
        assert_eq!(
            d.backend_requests.load(std::sync::atomic::Ordering::SeqCst),
            1
        );
        assert_eq!(d.stats(&vm()).bytes_in, req.len() as u64);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_http_clients_past_the_queue_get_a_prompt_503() {
    bounded(10, async {
        let (listen, backend) = (free_addr(), free_addr());
        let limits = Limits {
            queue_depth: 10,
            ..Limits::default()
        };
        let wake = Wake::Http {
            addr: backend,
            name: "vm1".into(),
            delay: Duration::from_millis(800),
        };
        let d = setup(limits, vec![web(listen, backend)], VmPower::Asleep, wake);
        let t0 = Instant::now();
        let clients: Vec<_> = (0..30)
            .map(|i| {
                tokio::spawn(async move {
                    let r = http_get(listen, &format!("/o/{i}")).await.unwrap();
                    (i, r, t0.elapsed())
                })
            })
            .collect();
        let (mut ok, mut refused) = (0, 0);
        for c in clients {
            let (i, (status, body), took) = c.await.unwrap();
            match status {
                200 => {
                    assert_eq!(body, format!("vm1 GET /o/{i}"));
                    ok += 1;
                }
                503 => {
                    assert!(body.contains("queue full"), "{body}");
                    assert!(took < Duration::from_millis(500), "503 took {took:?}");
                    refused += 1;
                }
                s => panic!("status {s}"),
            }
        }
        assert_eq!((ok, refused), (10, 20));
        assert_eq!(d.stats(&vm()).refused, 20);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_raw_tcp_clients_past_the_queue_are_reset() {
    bounded(10, async {
        let (listen, backend) = (free_addr(), free_addr());
        let limits = Limits {
            queue_depth: 10,
            ..Limits::default()
        };
        let wake = Wake::Echo {
            addr: backend,
            delay: Duration::from_millis(500),
        };
        let d = setup(
            limits,
            vec![ServiceSpec::tcp("raw", listen, backend)],
            VmPower::Asleep,
            wake,
        );
        let clients: Vec<_> = (0..30)
            .map(|i| {
                tokio::spawn(async move {
                    let mut s = match TcpStream::connect(listen).await {
                        Ok(s) => s,
                        // Refused so fast the reset beat the connect call.
                        Err(e) if e.kind() == ErrorKind::ConnectionReset => return false,
                        Err(e) => panic!("client {i}: {e}"),
                    };
                    let msg = format!("hello {i}\n");
                    // A reset that arrives before the write is reported by
                    // the write (and a read after it sees only the end).
                    if let Err(e) = s.write_all(msg.as_bytes()).await {
                        assert!(matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe), "client {i}: {e}");
                        return false;
                    }
                    let mut got = vec![0u8; msg.len()];
                    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got)).await
                    {
                        Ok(Ok(_)) => {
                            assert_eq!(got, msg.as_bytes());
                            true
                        }
                        Ok(Err(e)) => {
                            assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
                            false
                        }
                        Err(_) => panic!("client {i} hung"),
                    }
                })
            })
            .collect();
        let mut ok = 0;
        for c in clients {
            ok += c.await.unwrap() as usize;
        }
        assert_eq!(ok, 10);
        assert_eq!(d.stats(&vm()).refused, 20);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_failure_refuses_every_held_client() {
    bounded(10, async {
        let (listen, backend, raw_listen, raw_backend) =
            (free_addr(), free_addr(), free_addr(), free_addr());
        let wake = Wake::Fail {
            reason: "disk full".into(),
            delay: Duration::from_millis(300),
        };
        let services = vec![
            web(listen, backend),
            ServiceSpec::tcp("raw", raw_listen, raw_backend),
        ];
        let d = setup(Limits::default(), services, VmPower::Asleep, wake);
        let t0 = Instant::now();
        let http: Vec<_> = (0..5)
            .map(|i| tokio::spawn(async move { http_get(listen, &format!("/f/{i}")).await }))
            .collect();
        let mut raw = TcpStream::connect(raw_listen).await.unwrap();
        raw.write_all(b"data").await.unwrap();
        for c in http {
            let (status, body) = c.await.unwrap().unwrap();
            assert_eq!(status, 503);
            assert!(body.contains("wake failed: disk full"), "{body}");
        }
        expect_reset(&mut raw).await;
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        // A client arriving while the wake is failed is refused at once.
        let (status, _) = http_get(listen, "/late").await.unwrap();
        assert_eq!(status, 503);
        assert_eq!(d.stats(&vm()).refused, 7);
        assert_eq!(d.wake_requests(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_exceeded_refuses_within_the_deadline() {
    bounded(10, async {
        let (listen, backend, raw_listen, raw_backend) =
            (free_addr(), free_addr(), free_addr(), free_addr());
        let limits = Limits {
            wake_deadline: Duration::from_secs(1),
            ..Limits::default()
        };
        // The agent says awake, but the service never answers: the surrogate
        // probes until the deadline.
        let wake = Wake::AwakeOnly {
            delay: Duration::from_millis(100),
        };
        let services = vec![
            web(listen, backend),
            ServiceSpec::tcp("raw", raw_listen, raw_backend),
        ];
        let d = setup(limits, services, VmPower::Asleep, wake);
        let t0 = Instant::now();
        let h = tokio::spawn(async move { http_get(listen, "/never").await });
        let mut raw = TcpStream::connect(raw_listen).await.unwrap();
        raw.write_all(b"data").await.unwrap();
        let (status, body) = h.await.unwrap().unwrap();
        let took = t0.elapsed();
        assert_eq!(status, 503);
        assert!(body.contains("did not wake in 1 s"), "{body}");
        assert!(
            took >= Duration::from_millis(950) && took < Duration::from_millis(1600),
            "{took:?}"
        );
        expect_reset(&mut raw).await;
        assert!(t0.elapsed() < Duration::from_millis(1600));
        assert_eq!(d.stats(&vm()).refused, 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_that_accepts_then_closes_is_not_taken_for_the_service() {
    bounded(10, async {
        let (listen, backend) = (free_addr(), free_addr());
        // Awake at once, but the forward only accepts-and-closes for 300 ms,
        // as QEMU's user network does while the guest's service starts.
        let d = setup(
            Limits::default(),
            vec![web(listen, backend)],
            VmPower::Asleep,
            Wake::AwakeOnly {
                delay: Duration::ZERO,
            },
        );
        let closing = Backend::start_closing(backend);
        let client = tokio::spawn(async move { http_get(listen, "/boot").await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        closing.stop();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let real = Backend::start(backend, "vm1");
        let (status, body) = client.await.unwrap().unwrap();
        assert_eq!((status, body.as_str()), (200, "vm1 GET /boot"));
        assert_eq!(real.count(), 1);
        assert_eq!(d.refusals(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awake_backend_refusing_gets_the_client_a_503_or_a_reset_and_reports() {
    bounded(10, async {
        let (listen, backend, raw_listen, raw_backend) = (free_addr(), free_addr(), free_addr(), free_addr());
        let services = vec![web(listen, backend), ServiceSpec::tcp("raw", raw_listen, raw_backend)];
        let d = setup(Limits::default(), services, VmPower::Awake, Wake::Never);
        let (status, body) = http_get(listen, "/").await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(body.contains(&format!("{backend} refused the connection")), "{body}");
        // The reset can arrive before the client's connect call returns.
        match TcpStream::connect(raw_listen).await {
            Ok(mut s) => expect_reset(&mut s).await,
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let events = d.events.lock().unwrap().clone();
        assert!(
            matches!(&events[..], [SurrogateEvent::Refused { why: Refusal::BackendDown { backend: b }, .. }, SurrogateEvent::Refused { .. }] if *b == backend),
            "{events:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_address_is_a_clear_error_and_nothing_stays_bound() {
    bounded(10, async {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_addr = taken.local_addr().unwrap();
        let (free, b1, b2) = (free_addr(), free_addr(), free_addr());
        let (mut s, _rx) = Surrogate::new(Limits::default());
        let services = vec![
            ServiceSpec::tcp("ssh", free, b1),
            ServiceSpec::http("web", taken_addr, b2),
        ];
        let err = s.add_vm(vm(), services, VmPower::Asleep).unwrap_err();
        assert!(matches!(err, SurrogateError::Bind { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("service web of VM vm1") && msg.contains(&taken_addr.to_string()),
            "{msg}"
        );
        // The first service's address was released again.
        std::net::TcpListener::bind(free).expect("nothing must stay bound");
        assert!(s.stats(&vm()).is_err());

        let mut bad = health();
        bad.path = "healthz".into();
        let spec = ServiceSpec {
            canned: vec![bad],
            ..ServiceSpec::http("web", free, b2)
        };
        let err = s.add_vm(vm(), vec![spec], VmPower::Asleep).unwrap_err();
        assert!(err.to_string().contains("path \"healthz\""), "{err}");
        std::net::TcpListener::bind(free).expect("nothing must stay bound");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_whose_services_loop_to_or_clash_with_another_vm_s_is_refused_before_binding() {
    bounded(10, async {
        let (listen, backend, free) = (free_addr(), free_addr(), free_addr());
        let (mut s, _rx) = Surrogate::new(Limits::default());
        s.add_vm(vm(), vec![web(listen, backend)], VmPower::Awake)
            .unwrap();
        let other = VmId::new("vm2");
        let looped = ServiceSpec::tcp("raw", free, listen);
        let err = s
            .add_vm(other.clone(), vec![looped], VmPower::Awake)
            .unwrap_err();
        assert!(
            matches!(err, SurrogateError::InvalidService(SpecError::Loop { .. })),
            "{err:?}"
        );
        assert!(err.to_string().contains("vm.vm1.service web"), "{err}");
        std::net::TcpListener::bind(free).expect("nothing must stay bound");
        let wildcard = (std::net::Ipv4Addr::UNSPECIFIED, listen.port()).into();
        let clash = ServiceSpec::tcp("raw", wildcard, backend);
        let err = s.add_vm(other, vec![clash], VmPower::Awake).unwrap_err();
        assert!(
            matches!(err, SurrogateError::InvalidService(SpecError::ListenClash { .. })),
            "{err:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_vm_frees_the_address_and_refuses_held_clients() {
    bounded(10, async {
        let (listen, backend) = (free_addr(), free_addr());
        let (mut s, _rx) = Surrogate::new(Limits::default());
        s.add_vm(vm(), vec![web(listen, backend)], VmPower::Asleep)
            .unwrap();
        let held = tokio::spawn(async move { http_get(listen, "/held").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(s.stats(&vm()).unwrap().held_connections, 1);
        s.remove_vm(&vm()).unwrap();
        let (status, body) = held.await.unwrap().unwrap();
        assert_eq!(status, 503);
        assert!(body.contains("stopped serving"), "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(listen).await.is_err());
        drop(std::net::TcpListener::bind(listen).expect("address free again"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_queued_while_asleep_are_replayed_in_order() {
    bounded(10, async {
        let (listen, backend) = (free_udp_addr(), free_udp_addr());
        let d = setup(
            Limits::default(),
            vec![ServiceSpec::udp("dns", listen, backend)],
            VmPower::Asleep,
            Wake::Never,
        );
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..5 {
            client
                .send_to(format!("d{i}").as_bytes(), listen)
                .await
                .unwrap();
        }
        // Wait for the wake request, then "wake": the VM's service binds and
        // the agent says awake.
        for _ in 0..100 {
            if d.wake_requests() == 1 && d.stats(&vm()).held_bytes == 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(d.wake_requests(), 1);
        assert_eq!(d.stats(&vm()).held_bytes, 10);
        let vm_side = UdpSocket::bind(backend).await.unwrap();
        d.surrogate
            .lock()
            .unwrap()
            .set_state(&vm(), VmPower::Awake)
            .unwrap();
        let mut buf = [0u8; 64];
        for i in 0..5 {
            let (n, from) = vm_side.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], format!("d{i}").as_bytes());
            vm_side
                .send_to(format!("r{i}").as_bytes(), from)
                .await
                .unwrap();
        }
        for i in 0..5 {
            let (n, from) = client.recv_from(&mut buf).await.unwrap();
            assert_eq!((&buf[..n], from), (format!("r{i}").as_bytes(), listen));
        }
        // Awake: relayed directly now.
        client.send_to(b"live", listen).await.unwrap();
        let (n, _) = vm_side.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"live");
        // The relay counts a datagram after it forwards it, either way: wait
        // for the counts (the client may read the last answer before it is counted).
        let mut st = d.stats(&vm());
        for _ in 0..200 {
            if st.bytes_in == 14 && st.bytes_out == 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            st = d.stats(&vm());
        }
        assert_eq!(
            (
                st.bytes_in,
                st.bytes_out,
                st.held_bytes,
                st.datagrams_dropped
            ),
            (14, 10, 0, 0),
            "{st:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_queue_is_bounded() {
    bounded(10, async {
        let (listen, backend) = (free_udp_addr(), free_udp_addr());
        let limits = Limits {
            udp_queue: 3,
            ..Limits::default()
        };
        let d = setup(
            limits,
            vec![ServiceSpec::udp("dns", listen, backend)],
            VmPower::Asleep,
            Wake::Never,
        );
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..8 {
            client
                .send_to(format!("d{i}").as_bytes(), listen)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let st = d.stats(&vm());
        assert_eq!((st.held_bytes, st.datagrams_dropped), (6, 5), "{st:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_idle_connection_counts_as_activity_only_when_configured() {
    bounded(10, async {
        let (s, _rx) = Surrogate::new(Limits::default());
        let mut s = s;
        let mut clients = Vec::new();
        let mut backends = Vec::new();
        for (name, counts) in [("streamer", true), ("plain", false)] {
            let (listen, backend) = (free_addr(), free_addr());
            backends.push(Backend::start(backend, name));
            let spec = ServiceSpec {
                hold_open_counts_as_activity: counts,
                ..ServiceSpec::http("web", listen, backend)
            };
            s.add_vm(VmId::new(name), vec![spec], VmPower::Awake)
                .unwrap();
            // Connected, nothing sent: the backend waits for a request.
            clients.push(TcpStream::connect(listen).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let streamer = s.stats(&VmId::new("streamer")).unwrap();
        let plain = s.stats(&VmId::new("plain")).unwrap();
        assert_eq!((streamer.open_connections, plain.open_connections), (1, 1));
        let recent = streamer.last_activity.expect("held open counts").elapsed();
        assert!(recent < Duration::from_millis(50), "{recent:?}");
        assert_eq!(plain.last_activity, None);
        drop(clients);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let streamer = s.stats(&VmId::new("streamer")).unwrap();
        assert_eq!(streamer.open_connections, 0);
        // Activity ended when the connection closed.
        assert!(streamer.last_activity.unwrap().elapsed() >= Duration::from_millis(50));
    })
    .await
}

/// Reads an HTTP answer, or reports how the connection ended without one.
async fn outcome(s: &mut TcpStream) -> Result<(u16, String), String> {
    match tokio::time::timeout(Duration::from_secs(8), read_response(s)).await {
        Err(_) => Err("no answer within 8 s".into()),
        Ok(Err(e)) => Err(format!("{:?}: {e}", e.kind())),
        Ok(Ok(r)) => Ok(r),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_descriptor_share_a_vm_refuses_with_a_reason_and_another_vm_still_answers() {
    bounded(20, async {
        let (listen, backend, raw_listen, raw_backend) = (free_addr(), free_addr(), free_addr(), free_addr());
        let (other_listen, other_backend) = (free_addr(), free_addr());
        // Echo backends: a client that sends nothing stays open and idle,
        // and its connection ends when it leaves.
        let _idle = Backend::start_echo(backend);
        let _raw = Backend::start_echo(raw_backend);
        let _other = Backend::start(other_backend, "vm2");
        let limits = Limits {
            max_fds_per_vm: 24,
            max_fds: 40,
            ..Limits::default()
        };
        let (mut s, _rx) = Surrogate::new(limits);
        s.add_vm(vm(), vec![web(listen, backend), ServiceSpec::tcp("raw", raw_listen, raw_backend)], VmPower::Awake).unwrap();
        s.add_vm(VmId::new("vm2"), vec![web(other_listen, other_backend)], VmPower::Awake).unwrap();

        // 24 descriptors: four spliced connections (6 each). Every client
        // past them gets a 503 that says why, at once.
        let mut idle = Vec::new();
        for _ in 0..12 {
            idle.push(TcpStream::connect(listen).await.unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (mut open, mut refused) = (0, 0);
        for c in &mut idle {
            let mut b = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(300), c.peek(&mut b)).await {
                Err(_) => open += 1,
                Ok(_) => {
                    let (status, body) = outcome(c).await.unwrap();
                    assert_eq!(status, 503, "{body}");
                    assert!(body.contains("file descriptors ebb gives one VM"), "{body}");
                    refused += 1;
                }
            }
        }
        assert_eq!((open, refused), (4, 8));
        // A raw TCP client past the share is reset.
        match TcpStream::connect(raw_listen).await {
            Ok(mut c) => expect_reset(&mut c).await,
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        }
        // The other VM's service has descriptors of its own.
        let (status, body) = http_get(other_listen, "/still").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "vm2 GET /still"));
        // The idle clients leave: the VM takes clients again.
        drop(idle);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut c = TcpStream::connect(raw_listen).await.unwrap();
        c.write_all(b"back\n").await.unwrap();
        let mut got = [0u8; 5];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"back\n");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_clients_past_the_descriptor_share_are_refused_and_the_rest_answered() {
    bounded(20, async {
        let (listen, backend) = (free_addr(), free_addr());
        let wake = Wake::Http {
            addr: backend,
            name: "vm1".into(),
            delay: Duration::from_millis(300),
        };
        // 16 descriptors, an eighth kept for the replays: 14 held clients.
        let limits = Limits {
            max_fds_per_vm: 16,
            ..Limits::default()
        };
        let d = setup(limits, vec![web(listen, backend)], VmPower::Asleep, wake);
        let clients: Vec<_> = (0..30).map(|i| tokio::spawn(async move { (i, http_get(listen, &format!("/h/{i}")).await) })).collect();
        let (mut answered, mut refused) = (0, 0);
        for c in clients {
            match c.await.unwrap() {
                (i, Ok((200, body))) => {
                    assert_eq!(body, format!("vm1 GET /h/{i}"));
                    answered += 1;
                }
                (_, Ok((503, body))) => {
                    assert!(body.contains("file descriptors"), "{body}");
                    refused += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((answered, refused), (14, 16));
        assert_eq!(d.backend_requests.load(Ordering::SeqCst), 14);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_udp_source_ports_stays_within_the_flow_shares() {
    bounded(20, async {
        let (l1, b1, l2, b2) = (free_udp_addr(), free_udp_addr(), free_udp_addr(), free_udp_addr());
        let limits = Limits {
            udp_flows: 8,
            udp_flows_total: 10,
            ..Limits::default()
        };
        let (mut s, _rx) = Surrogate::new(limits);
        s.add_vm(vm(), vec![ServiceSpec::udp("dns", l1, b1)], VmPower::Awake).unwrap();
        s.add_vm(VmId::new("vm2"), vec![ServiceSpec::udp("dns", l2, b2)], VmPower::Awake).unwrap();
        // Each backend answers every datagram with itself.
        for b in [b1, b2] {
            let sock = UdpSocket::bind(b).await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                    let _ = sock.send_to(&buf[..n], from).await;
                }
            });
        }
        // 20 source ports at each service, one datagram each.
        let mut last = Vec::new();
        for listen in [l1, l2] {
            for i in 0..20 {
                let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                c.send_to(format!("p{i}").as_bytes(), listen).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
                if i == 19 {
                    last.push(c);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let flows = |v: &str| s.stats(&VmId::new(v)).unwrap().udp_flows;
        let (f1, f2) = (flows("vm1"), flows("vm2"));
        assert!(f1 <= 8 && f2 <= 8 && f1 + f2 <= 10, "flows {f1} + {f2}");
        assert!(f2 >= 1, "the second service was starved of flows");
        // The newest source port of each service was relayed both ways.
        for c in last {
            let mut buf = [0u8; 64];
            let (n, _) = tokio::time::timeout(Duration::from_secs(2), c.recv_from(&mut buf)).await.expect("no echo").unwrap();
            assert_eq!(&buf[..n], b"p19");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_reason_from_the_network_carries_no_control_characters() {
    bounded(10, async {
        let (listen, backend) = (free_addr(), free_addr());
        let d = setup(Limits::default(), vec![web(listen, backend)], VmPower::Asleep, Wake::Never);
        let mut c = TcpStream::connect(listen).await.unwrap();
        c.write_all(b"GET /\x1b]0;PWNED\x07\x1b[2J HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let reason = loop {
            if let Some(SurrogateEvent::WakeNeeded { reason, .. }) = d.events.lock().unwrap().first() {
                break reason.to_string();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(!reason.chars().any(char::is_control), "{reason:?}");
        assert!(reason.contains(r"/\u{1b}]0;PWNED\u{7}\u{1b}[2J"), "{reason}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_takes_the_request_and_stays_silent_gets_a_503_at_the_bound_and_one_copy() {
    bounded(20, async {
        let (listen, backend) = (free_addr(), free_addr());
        let limits = Limits {
            wake_deadline: Duration::from_secs(1),
            replay_deadline: Duration::from_secs(1),
            ..Limits::default()
        };
        let silent = Backend::start_silent(backend);
        let d = setup(limits, vec![web(listen, backend)], VmPower::Asleep, Wake::AwakeOnly { delay: Duration::from_millis(100) });
        let t0 = Instant::now();
        let (status, body) = http_get(listen, "/slow").await.unwrap();
        let took = t0.elapsed();
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("sent no answer within 2 s") && body.contains("not sent again"), "{body}");
        // The bound is wake_deadline + replay_deadline from the accept.
        assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(3), "{took:?}");
        assert_eq!(silent.count(), 1, "the request was sent twice");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let events = d.events.lock().unwrap().clone();
        assert!(events.iter().any(|e| matches!(e, SurrogateEvent::Refused { why: Refusal::Silent { .. }, .. })), "{events:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_a_slow_service_cannot_take_in_time_are_refused_at_the_bound_unsent() {
    bounded(20, async {
        let (listen, backend) = (free_addr(), free_addr());
        let limits = Limits {
            wake_deadline: Duration::from_secs(1),
            replay_deadline: Duration::from_secs(1),
            replay_in_flight: 1,
            ..Limits::default()
        };
        // One answer at a time, each 400 ms: about five fit in the bound.
        let l = std::net::TcpListener::bind(backend).unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut buf = [0u8; 1024];
                // The prober's connection, closed unused, is no request.
                if !matches!(s.read(&mut buf), Ok(1..)) {
                    continue;
                }
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(400));
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            }
        });
        let d = setup(limits, vec![web(listen, backend)], VmPower::Asleep, Wake::AwakeOnly { delay: Duration::from_millis(100) });
        let t0 = Instant::now();
        let clients: Vec<_> = (0..20)
            .map(|i| tokio::spawn(async move { (http_get(listen, &format!("/q/{i}")).await, t0.elapsed()) }))
            .collect();
        let (mut answered, mut busy, mut silent) = (0, 0, 0);
        for c in clients {
            let (r, took) = c.await.unwrap();
            let (status, body) = r.unwrap();
            assert!(took < Duration::from_millis(2500), "a client waited {took:?}, past its 2 s bound");
            match status {
                200 => answered += 1,
                503 if body.contains("not sent again") => silent += 1,
                503 if body.contains("it was not sent, retry") => busy += 1,
                _ => panic!("{status} {body}"),
            }
        }
        assert!(answered >= 2 && busy >= 1, "answered {answered}, busy {busy}, silent {silent}");
        // The service reads each answered or silent request once (the
        // silent ones after their clients were told), and never one of the
        // clients told "it was not sent".
        tokio::time::sleep(Duration::from_millis(450) * silent as u32 + Duration::from_millis(200)).await;
        assert_eq!(served.load(Ordering::SeqCst), answered + silent, "answered {answered}, busy {busy}, silent {silent}");
        assert_eq!(d.refusals(), busy + silent);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_that_stall_in_the_service_do_not_hold_back_the_others() {
    bounded(30, async {
        let (listen, backend) = (free_addr(), free_addr());
        let limits = Limits {
            wake_deadline: Duration::from_secs(5),
            replay_deadline: Duration::from_secs(5),
            replay_in_flight: 2,
            ..Limits::default()
        };
        // The first three replays stall (one on the prober's connection,
        // one per turn): only once every other client has its answer are
        // they answered.
        let (release, stalls) = tokio::sync::watch::channel(false);
        let service = Backend::start_stalling(backend, "vm1", 3, stalls);
        let d = setup(limits, vec![web(listen, backend)], VmPower::Asleep, Wake::AwakeOnly { delay: Duration::from_millis(100) });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..20 {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send((i, http_get(listen, &format!("/c/{i}")).await)).unwrap() });
        }
        let mut answered = Vec::new();
        for _ in 0..17 {
            let (i, r) = rx.recv().await.unwrap();
            let (status, body) = r.unwrap();
            assert_eq!((status, body.as_str()), (200, format!("vm1 GET /c/{i}").as_str()), "client {i} was not answered while three replays stalled");
            answered.push(i);
        }
        release.send_replace(true);
        for _ in 0..3 {
            let (i, r) = rx.recv().await.unwrap();
            assert_eq!(r.unwrap(), (200, format!("vm1 GET /c/{i}")), "a stalled replay was given up");
            answered.push(i);
        }
        answered.sort();
        assert_eq!(answered, (0..20).collect::<Vec<_>>());
        assert_eq!(service.count(), 20, "a request was sent twice");
        assert_eq!(d.refusals(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_grow_past_the_initial_window_for_a_service_that_answers_in_parallel() {
    bounded(30, async {
        let (listen, backend) = (free_addr(), free_addr());
        let open_max = Arc::new(AtomicUsize::new(0));
        let slow = Backend::start_slow(backend, "vm1", Duration::from_millis(100), open_max.clone());
        let d = setup(
            Limits { replay_in_flight: 2, ..Limits::default() },
            vec![web(listen, backend)],
            VmPower::Asleep,
            Wake::AwakeOnly { delay: Duration::from_millis(100) },
        );
        each_gets_its_own_answer(listen, 150).await;
        assert_eq!(slow.count(), 150);
        let most = open_max.load(Ordering::SeqCst);
        // The window doubled while answers stayed as fast as the fastest,
        // and never left its bound (64, plus the prober's connection).
        assert!((8..=65).contains(&most), "{most} backend connections open at once");
        assert_eq!(d.refusals(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_client_that_says_nothing_or_too_much_never_wakes_the_vm() {
    bounded(15, async {
        let (listen, backend) = (free_addr(), free_addr());
        let limits = Limits { wake_deadline: Duration::from_secs(2), ..Limits::default() };
        let d = setup(limits, vec![web(listen, backend)], VmPower::Asleep, Wake::Never);
        // A port scanner or a connect-only check: connects, waits, says nothing.
        let mut silent = TcpStream::connect(listen).await.unwrap();
        // A request line past any server's limit.
        let mut long = TcpStream::connect(listen).await.unwrap();
        let line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(64 * 1024));
        let _ = long.write_all(line.as_bytes()).await;
        let (status, body) = read_response(&mut long).await.unwrap();
        assert_eq!(status, 503);
        assert!(body.contains("request line too long"), "{body}");
        // A HEAD health check takes the GET entry.
        let mut head = TcpStream::connect(listen).await.unwrap();
        head.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut text = String::new();
        head.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK") && !text.ends_with("ok"), "{text:?}");
        // The silent one is told why at the wake deadline, not closed empty.
        let t = Instant::now();
        let (status, body) = read_response(&mut silent).await.unwrap();
        assert_eq!(status, 503);
        assert!(body.contains("no request"), "{body}");
        assert!(t.elapsed() < Duration::from_secs(3));
        assert_eq!(d.wake_requests(), 0, "the VM was woken");
        assert_eq!(d.surrogate.lock().unwrap().state(&vm()), Some(VmPower::Asleep));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_waiting_for_their_replay_still_count_as_held() {
    bounded(20, async {
        let (listen, backend) = (free_addr(), free_addr());
        let _b = Backend::start_slow(backend, "vm1", Duration::from_millis(700), Arc::new(AtomicUsize::new(0)));
        let limits = Limits { replay_in_flight: 1, ..Limits::default() };
        let d = setup(limits, vec![web(listen, backend)], VmPower::Asleep, Wake::AwakeOnly { delay: Duration::ZERO });
        let clients: Vec<_> = (0..4).map(|i| tokio::spawn(async move { http_get(listen, &format!("/c/{i}")).await })).collect();
        let awake = Instant::now() + Duration::from_secs(5);
        while d.surrogate.lock().unwrap().state(&vm()) != Some(VmPower::Awake) {
            assert!(Instant::now() < awake, "never woken");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The service takes 0.7 s per answer, one at a time: the clients
        // behind the first wait for their replay, held, and so the idle
        // detector sees them (a VM put back to sleep under them would
        // refuse them all at their bound).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let st = d.stats(&vm());
        assert!(st.held_connections >= 3, "{st:?}");
        for c in clients {
            let (status, _) = c.await.unwrap().unwrap();
            assert_eq!(status, 200);
        }
        assert_eq!(d.stats(&vm()).held_connections, 0);
    })
    .await
}

/// Seed 002: each client connection the surrogate holds or splices is
/// client activity, told to the agent when it opens and when it closes;
/// the surrogate's own canned answers are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_and_spliced_connections_are_client_activity_and_canned_answers_are_not() {
    bounded(10, async {
        let (listen, backend) = (free_addr(), free_addr());
        let wake = Wake::Http { addr: backend, name: "vm1".into(), delay: Duration::from_millis(100) };
        let d = setup(Limits::default(), vec![web(listen, backend)], VmPower::Asleep, wake);
        assert_eq!(http_get(listen, "/healthz").await.unwrap().0, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(d.clients.lock().unwrap().is_empty(), "a canned answer is no client: {:?}", d.clients.lock().unwrap());
        // Held while the VM wakes, then spliced; then one spliced at once.
        assert_eq!(http_get(listen, "/held").await.unwrap().0, 200);
        assert_eq!(http_get(listen, "/spliced").await.unwrap().0, 200);
        let deadline = Instant::now() + Duration::from_secs(3);
        let balance = loop {
            let ev = d.clients.lock().unwrap().clone();
            let mut open: std::collections::BTreeMap<std::net::SocketAddr, i32> = Default::default();
            for e in &ev {
                match e {
                    SurrogateEvent::ClientOpened { vm: v, service, peer } if *v == vm() && service == "web" => *open.entry(*peer).or_default() += 1,
                    SurrogateEvent::ClientClosed { vm: v, service, peer } if *v == vm() && service == "web" => *open.entry(*peer).or_default() -= 1,
                    e => panic!("{e:?}"),
                }
            }
            // Both clients seen and every connection closed (the events may lag the answers).
            if (open.len() == 2 && open.values().all(|n| *n == 0)) || Instant::now() > deadline {
                break (ev.len(), open);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (events, open) = balance;
        assert_eq!(open.len(), 2, "two clients' connections: {open:?}");
        assert!(open.iter().all(|(peer, n)| peer.ip().is_loopback() && *n == 0), "every open is closed: {open:?}");
        assert!(events >= 4, "{events}");
    })
    .await
}
