//! TLS for the server and for outbound calls, from PEM files named in the configuration.
//! Files are read and checked once, when a listener or channel is built, so that a wrong
//! path or a file of the wrong kind stops the process with the key and file named
//! instead of failing every handshake later. Rotating a certificate means restarting
//! the pods (a rolling restart drains without failed calls).

use std::path::Path;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::{ClientsConfig, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} = {file:?}: {reason}")]
    File {
        key: &'static str,
        file: String,
        reason: String,
    },
}

/// The PEM text of `file`, checked to hold at least one certificate.
fn certificates(key: &'static str, file: &str) -> Result<Vec<u8>, TlsError> {
    let pem = read(key, file)?;
    let mut count = 0;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        certificate.map_err(|err| invalid(key, file, format!("not a PEM certificate: {err}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(invalid(key, file, "holds no PEM certificate".into()));
    }
    Ok(pem)
}

/// The PEM text of `file`, checked to hold a private key.
fn private_key(key: &'static str, file: &str) -> Result<Vec<u8>, TlsError> {
    let pem = read(key, file)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|err| invalid(key, file, format!("holds no PEM private key: {err}")))?;
    Ok(pem)
}

fn read(key: &'static str, file: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(Path::new(file.trim())).map_err(|err| invalid(key, file, err.to_string()))
}

fn invalid(key: &'static str, file: &str, reason: String) -> TlsError {
    TlsError::File {
        key,
        file: file.to_owned(),
        reason,
    }
}

fn set(value: &str) -> bool {
    !value.trim().is_empty()
}

/// The server's TLS settings, or `None` for plaintext. With `tls_client_ca_file`, a
/// client without a certificate signed by one of those CAs is refused at the handshake.
pub fn server_config(config: &ServerConfig) -> Result<Option<ServerTlsConfig>, TlsError> {
    if !set(&config.tls_cert_file) {
        return Ok(None);
    }
    let identity = Identity::from_pem(
        certificates("server.tls_cert_file", &config.tls_cert_file)?,
        private_key("server.tls_key_file", &config.tls_key_file)?,
    );
    let mut tls = ServerTlsConfig::new().identity(identity);
    if set(&config.tls_client_ca_file) {
        tls = tls.client_ca_root(Certificate::from_pem(certificates(
            "server.tls_client_ca_file",
            &config.tls_client_ca_file,
        )?));
    }
    Ok(Some(tls))
}

/// Outbound TLS settings, or `None` for plaintext. `domain` is the name the server's
/// certificate must carry when `clients.tls_domain` does not say; `None` leaves it to
/// the endpoint's host.
pub fn client_config(
    config: &ClientsConfig,
    domain: Option<&str>,
) -> Result<Option<ClientTlsConfig>, TlsError> {
    if !set(&config.tls_ca_file) {
        return Ok(None);
    }
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(certificates(
        "clients.tls_ca_file",
        &config.tls_ca_file,
    )?));
    if set(&config.tls_cert_file) {
        tls = tls.identity(Identity::from_pem(
            certificates("clients.tls_cert_file", &config.tls_cert_file)?,
            private_key("clients.tls_key_file", &config.tls_key_file)?,
        ));
    }
    let domain = if set(&config.tls_domain) {
        Some(config.tls_domain.trim())
    } else {
        domain
    };
    if let Some(domain) = domain {
        tls = tls.domain_name(domain);
    }
    Ok(Some(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_of_the_wrong_kind_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("not-pem.txt");
        std::fs::write(&text, "hello").unwrap();
        let text = text.to_string_lossy().into_owned();
        let config = ServerConfig {
            tls_cert_file: text.clone(),
            tls_key_file: text.clone(),
            ..ServerConfig::default()
        };
        let err = server_config(&config).unwrap_err().to_string();
        assert!(
            err.contains("server.tls_cert_file") && err.contains("no PEM certificate"),
            "{err}"
        );
        let missing = ClientsConfig {
            tls_ca_file: "/nonexistent/ca.crt".into(),
            ..ClientsConfig::default()
        };
        let err = client_config(&missing, None).unwrap_err().to_string();
        assert!(
            err.contains("clients.tls_ca_file") && err.contains("/nonexistent/ca.crt"),
            "{err}"
        );
        assert!(server_config(&ServerConfig::default()).unwrap().is_none());
        assert!(
            client_config(&ClientsConfig::default(), None)
                .unwrap()
                .is_none()
        );
    }
}
