//! TLS for `wss://`: the certificate chain and key from `[tls]`, read at start and on every
//! reload, so SIGHUP picks up a renewed certificate without touching open sessions.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;

use crate::config::{ConfigError, ErrorKind, TlsConfig};

fn error(key: &str, path: &str, message: String) -> ConfigError {
    ConfigError {
        origin: format!("TLS file {path}"),
        key: Some(key.to_string()),
        kind: ErrorKind::File(message),
    }
}

/// Reads the files and builds the server configuration. ALPN offers `h2` (RFC 8441
/// WebSockets over HTTP/2) when `http2`, and `http/1.1`.
pub fn load(cfg: &TlsConfig, http2: bool) -> Result<Arc<ServerConfig>, ConfigError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert_file)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            error(
                "tls.cert_file",
                &cfg.cert_file,
                format!("cannot read certificates: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(error(
            "tls.cert_file",
            &cfg.cert_file,
            "holds no PEM certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file).map_err(|e| {
        error(
            "tls.key_file",
            &cfg.key_file,
            format!("cannot read the private key: {e}"),
        )
    })?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            error(
                "tls.key_file",
                &cfg.key_file,
                format!("does not match the certificate: {e}"),
            )
        })?;
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}
