//! How a reading authenticates upsd: the CA file, read within bounds, and
//! the name upsd's certificate must hold.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a CA file or a name cannot be used for TLS to upsd: a sentence that
/// follows the setting's name and value.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot be read ({0}): give the PEM file of the CA that signed upsd's certificate")]
    Unreadable(String),
    #[error("is not a PEM file ({0}): give the CA certificate in PEM (-----BEGIN CERTIFICATE-----)")]
    NotPem(String),
    #[error("holds no certificate: give the CA certificate in PEM (-----BEGIN CERTIFICATE-----)")]
    NoCertificate,
    #[error("is larger than {MAX_CA_BYTES} bytes: give the PEM file of the CA that signed upsd's certificate")]
    TooLarge,
    #[error("is not a file: give the PEM file of the CA that signed upsd's certificate")]
    NotAFile,
    #[error("certificate {index} in it cannot be a CA ({detail})")]
    BadCertificate { index: usize, detail: String },
    #[error("is neither a host name nor an IP address: give the name upsd's certificate is issued for")]
    BadName,
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

/// How a reading authenticates upsd: the CA its certificate must chain to
/// and the name the certificate must hold.
#[derive(Clone, Debug)]
pub struct NutTls {
    pub(super) config: Arc<rustls::ClientConfig>,
    pub(super) name: ServerName<'static>,
    /// The CA file, named when a certificate is refused.
    pub(super) ca: PathBuf,
}

impl NutTls {
    /// `ca`: a PEM file with the CA certificate(s) upsd's certificate must
    /// chain to; `name`: the host name or IP address it must be issued for.
    pub fn new(ca: &Path, name: &str) -> Result<NutTls, TlsSetupError> {
        let name = ServerName::try_from(name.to_string()).map_err(|_| TlsSetupError::BadName)?;
        let mut roots = rustls::RootCertStore::empty();
        for (i, cert) in load_ca(ca)?.into_iter().enumerate() {
            roots.add(cert).map_err(|e| TlsSetupError::BadCertificate { index: i + 1, detail: e.to_string() })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(NutTls { config: Arc::new(config), name, ca: ca.to_path_buf() })
    }
}

/// The most bytes a CA file may hold: a whole system bundle of public CAs
/// is about 220 KB. The bound keeps a wrong path (a disk image) from
/// growing ebb's memory.
pub const MAX_CA_BYTES: u64 = 1 << 20;

/// The certificates of a PEM file (other sections, such as keys, skipped).
fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let unreadable = |e: io::Error| TlsSetupError::Unreadable(e.to_string());
    // Looked at before it is opened: opening a FIFO waits for a writer.
    if !std::fs::metadata(path).map_err(unreadable)?.is_file() {
        return Err(TlsSetupError::NotAFile);
    }
    let mut pem = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(MAX_CA_BYTES + 1).read_to_end(&mut pem)).map_err(unreadable)?;
    if pem.len() as u64 > MAX_CA_BYTES {
        return Err(TlsSetupError::TooLarge);
    }
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().map_err(|e| TlsSetupError::NotPem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate);
    }
    Ok(certs)
}
