//! A real upsd fixture (`Upsd`) and a certificate authority of a test's own
//! (`TestCa`) for upsd's TLS.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::free_port;

/// A real upsd (Debian's nut-server) serving one `dummy-ups` UPS named
/// `test` on a loopback port, in a folder of its own; its state is set by
/// rewriting the driver's file. Both daemons are stopped on drop.
pub struct Upsd {
    dir: tempfile::TempDir,
    port: u16,
    /// The certificate database upsd reads (CERTPATH), kept while it runs.
    _cert: Option<UpsdCert>,
}

impl Upsd {
    pub fn start(status: &str) -> io::Result<Upsd> {
        Upsd::start_with(status, None)
    }

    /// A upsd that takes up TLS (STARTTLS) with `cert`.
    pub fn start_tls(status: &str, cert: UpsdCert) -> io::Result<Upsd> {
        Upsd::start_with(status, Some(cert))
    }

    fn start_with(status: &str, cert: Option<UpsdCert>) -> io::Result<Upsd> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let p = dir.path().to_path_buf();
        let dev = p.join("ups.dev");
        write_ups(&dev, status)?;
        std::fs::write(p.join("nut.conf"), "MODE=standalone\n")?;
        std::fs::write(p.join("ups.conf"), format!("[test]\ndriver = dummy-ups\nport = {}\ndesc = \"ebb test\"\n", dev.display()))?;
        let tls = cert.as_ref().map_or(String::new(), |c| format!("CERTPATH {}\nCERTIDENT \"upsd\" \"{}\"\n", c.dir.path().display(), c.password));
        std::fs::write(p.join("upsd.conf"), format!("LISTEN 127.0.0.1 {port}\nSTATEPATH {}\n{tls}", p.display()))?;
        std::fs::write(p.join("upsd.users"), "")?;
        let upsd = Upsd { dir, port, _cert: cert };
        for (prog, args) in [("/lib/nut/dummy-ups", &["-a", "test", "-u", "root"][..]), ("/lib/nut/upsd", &["-u", "root"][..])] {
            let out = std::process::Command::new(prog)
                .args(args)
                .env("NUT_CONFPATH", &p)
                .env("NUT_STATEPATH", &p)
                .output()
                .map_err(|e| io::Error::new(e.kind(), format!("{prog}: {e}: install nut-server (scripts/setup-host.sh)")))?;
            if !out.status.success() {
                return Err(io::Error::other(format!("{prog}: {}", String::from_utf8_lossy(&out.stderr))));
            }
        }
        Ok(upsd)
    }

    /// `test@127.0.0.1:PORT`, as `power.ups` takes it.
    pub fn ups(&self) -> String {
        format!("test@127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sets `ups.status` (e.g. "OB LB"); charge 8 % when LB, else 100 %.
    pub fn set(&self, status: &str) -> io::Result<()> {
        write_ups(&self.dir.path().join("ups.dev"), status)
    }
}

/// A certificate authority of a test's own in an NSS database, made with
/// certutil (libnss3-tools) by the steps of the README's "Setting up NUT
/// for ebb": the CA in a database of its own, upsd's key in upsd's, and a
/// certificate for it issued from a request.
pub struct TestCa {
    dir: tempfile::TempDir,
    issued: std::cell::Cell<u32>,
}

/// An NSS database for upsd (its CERTPATH) holding its key and the
/// certificate `upsd` a [`TestCa`] issued for it.
pub struct UpsdCert {
    dir: tempfile::TempDir,
    password: &'static str,
}

impl TestCa {
    pub fn new() -> io::Result<TestCa> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        nss_db(d, "ca-password")?;
        let noise = noise(d);
        // A self-signed CA certificate; -2 asks: a CA? path length (-1: no limit)? critical?
        let ca = ["-S", "-n", "ups-ca", "-s", "CN=ebb test CA", "-x", "-t", "CT,,", "-v", "12", "-m", "1", "-2", "-z", &noise];
        certutil(d, &[&ca[..], &KEY, &["--keyUsage", "certSigning,crlSigning"]].concat(), "y\n-1\ny\n")?;
        std::fs::write(d.join("ca.pem"), certutil(d, &["-L", "-n", "ups-ca", "-a"], "")?)?;
        Ok(TestCa { dir, issued: std::cell::Cell::new(1) })
    }

    /// The CA's certificate in PEM, as power.ups_ca takes it.
    pub fn pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A key for upsd and a certificate for it issued for `names`, as
    /// certutil's --extSAN takes them ("ip:127.0.0.1,dns:ups.example").
    pub fn issue(&self, names: &str) -> io::Result<UpsdCert> {
        let cert = UpsdCert { dir: tempfile::tempdir()?, password: "upsd-password" };
        let (db, ca) = (cert.dir.path(), self.dir.path());
        nss_db(db, cert.password)?;
        let (csr, crt) = (path_str(&db.join("upsd.csr"))?.to_string(), path_str(&db.join("upsd.crt"))?.to_string());
        // The key stays in upsd's database; the CA signs a request for it.
        certutil(db, &[&["-R", "-s", "CN=upsd", "-a", "-o", &csr, "-z", &noise(db)][..], &KEY].concat(), "")?;
        self.issued.set(self.issued.get() + 1);
        let serial = self.issued.get().to_string();
        let sign = ["-C", "-c", "ups-ca", "-i", &csr, "-a", "-o", &crt, "-m", &serial, "-v", "12", "-Z", "SHA256", "--extSAN", names];
        certutil(ca, &[&sign[..], &["--keyUsage", "digitalSignature", "--extKeyUsage", "serverAuth"]].concat(), "")?;
        certutil(db, &["-A", "-n", "upsd", "-t", ",,", "-a", "-i", &crt], "")?;
        Ok(cert)
    }
}

/// EC P-256 keys signed with SHA-256.
const KEY: [&str; 6] = ["-k", "ec", "-q", "nistp256", "-Z", "SHA256"];

/// An empty NSS database in `dir`, its password and random seed beside it.
fn nss_db(dir: &Path, password: &str) -> io::Result<()> {
    std::fs::write(dir.join("password"), password)?;
    let mut seed = [0u8; 64];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    std::fs::write(noise(dir), seed)?;
    certutil(dir, &["-N"], "").map(drop)
}

/// The random seed certutil takes for a key (without it, it asks for keystrokes).
fn noise(dir: &Path) -> String {
    dir.join("noise").display().to_string()
}

fn path_str(p: &Path) -> io::Result<&str> {
    p.to_str().ok_or_else(|| io::Error::other(format!("{} is not UTF-8", p.display())))
}

/// certutil on the NSS database in `db` (its password file beside it),
/// `input` on its stdin: its stdout.
fn certutil(db: &Path, args: &[&str], input: &str) -> io::Result<Vec<u8>> {
    let mut child = Command::new("certutil")
        .args(args)
        .arg("-d")
        .arg(format!("sql:{}", db.display()))
        .arg("-f")
        .arg(db.join("password"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("certutil: {e}: install libnss3-tools (scripts/setup-host.sh)")))?;
    child.stdin.take().expect("piped").write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!("certutil {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(out.stdout)
}

fn write_ups(dev: &Path, status: &str) -> io::Result<()> {
    let charge = if status.contains("LB") { 8 } else { 100 };
    std::fs::write(dev, format!("ups.status: {status}\nbattery.charge: {charge}\nbattery.runtime: 1200\nups.load: 25\nups.realpower: 180\n"))
}

impl Drop for Upsd {
    fn drop(&mut self) {
        for pidfile in ["upsd.pid", "dummy-ups-test.pid"] {
            if let Ok(pid) = std::fs::read_to_string(self.dir.path().join(pidfile)) {
                let _ = std::process::Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
}
