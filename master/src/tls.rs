//! TLS for the agent link (rustls with ring): the master's acceptor from
//! `--tls-cert`/`--tls-key`, the agent's connector trusting `--tls-ca`.

use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {path}: {why}")]
pub struct TlsError {
    /// The flag naming the file.
    pub flag: &'static str,
    /// The file.
    pub path: String,
    /// What is wrong.
    pub why: String,
}

fn certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |why: String| TlsError {
        flag,
        path: path.display().to_string(),
        why,
    };
    // Read first: a missing file names the OS error, not a PEM one.
    std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The master's side: its certificate chain and private key (PEM).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain = certs("--tls-cert", cert)?;
    let key_err = |why: String| TlsError {
        flag: "--tls-key",
        path: key.display().to_string(),
        why,
    };
    std::fs::metadata(key).map_err(|e| key_err(e.to_string()))?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| key_err(e.to_string()))?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| key_err(format!("does not go with --tls-cert: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The agent's side: trusts the certificates in `ca` (PEM) and nothing else.
pub fn connector(ca: &Path) -> Result<TlsConnector, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs("--tls-ca", ca)? {
        roots.add(cert).map_err(|e| TlsError {
            flag: "--tls-ca",
            path: ca.display().to_string(),
            why: e.to_string(),
        })?;
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}
