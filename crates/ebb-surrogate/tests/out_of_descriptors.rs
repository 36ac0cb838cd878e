//! The process out of descriptors (EMFILE), whatever took them: a client
//! pending in a listener's backlog is still accepted, with the spare
//! descriptor the surrogate keeps, and refused with a 503 that says so,
//! instead of waiting in silence. A test binary of its own: it lowers its
//! process's RLIMIT_NOFILE.

mod common;

use common::*;
use ebb_core::VmId;
use ebb_surrogate::{Limits, ServiceSpec, Surrogate, VmPower};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_a_pending_client_is_refused_not_left_waiting() {
    bounded(20, async {
        let (listen, backend) = (free_addr(), free_addr());
        let _b = Backend::start(backend, "vm1");
        let (mut s, _rx) = Surrogate::new(Limits::default());
        s.add_vm(VmId::new("vm1"), vec![ServiceSpec::http("web", listen, backend)], VmPower::Awake).unwrap();
        // The clients' sockets exist before the descriptors run out.
        let mut sockets: Vec<TcpSocket> = (0..3).map(|_| TcpSocket::new_v4().unwrap()).collect();

        let was = getrlimit(Resource::Nofile);
        setrlimit(Resource::Nofile, Rlimit { current: Some(512), maximum: was.maximum }).unwrap();
        let mut filler = Vec::new();
        while let Ok(f) = std::fs::File::open("/dev/null") {
            filler.push(f);
        }
        for _ in 0..2 {
            let mut c = sockets.pop().unwrap().connect(listen).await.unwrap();
            let mut text = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut text))
                .await
                .expect("a client left waiting while ebb is out of descriptors")
                .unwrap();
            let text = String::from_utf8_lossy(&text);
            assert!(text.starts_with("HTTP/1.1 503") && text.contains("ran out of file descriptors"), "{text}");
        }

        // Descriptors back: the next client is served.
        drop(filler);
        setrlimit(Resource::Nofile, was).unwrap();
        let c = sockets.pop().unwrap().connect(listen).await.unwrap();
        drop(c);
        let (status, body) = http_get(listen, "/again").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "vm1 GET /again"));
    })
    .await
}
