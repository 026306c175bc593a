//! TLS for dbfork's own PostgreSQL connections, as libpq reads the URL's
//! `sslmode` (and `sslrootcert`, `sslcert`, `sslkey`):
//!
//! | sslmode | dbfork's connections |
//! |---|---|
//! | absent, `disable` | no TLS (absent: as before, and as the Unix socket always is) |
//! | `allow`, `prefer` | TLS when the server offers it, certificate not checked |
//! | `require` | TLS or no connection; the certificate is checked against `sslrootcert` when one is given (libpq does the same) |
//! | `verify-ca` | TLS, the certificate must chain to `sslrootcert` |
//! | `verify-full` | and name the host |
//!
//! `sslrootcert` is a PEM file (default `~/.postgresql/root.crt`, as libpq);
//! `sslcert` and `sslkey` a client certificate and its key. The workers and
//! the PostgreSQL tools dbfork runs get the same settings (`DATABASE_URL`,
//! `PGSSLMODE` and friends).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};
use crate::url::DbUrl;

/// What the URL asks of TLS: the mode for tokio-postgres and the
/// connector, or `None` for plain connections.
pub(super) fn from_url(url: &DbUrl) -> Result<Option<(SslMode, MakeRustlsConnect)>> {
    let param = |name: &str| {
        url.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let bad = |reason: String| Error::BadUrl {
        url: url.to_string(),
        reason,
    };
    let mode = match param("sslmode") {
        None | Some("disable") => return Ok(None),
        Some(m @ ("allow" | "prefer" | "require" | "verify-ca" | "verify-full")) => m,
        Some(other) => {
            return Err(bad(format!(
            "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
        )))
        }
    };
    // ring rather than aws-lc-rs: no C toolchain or cmake in the build, and
    // a test database's connection needs no post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let root_file = param("sslrootcert").map(PathBuf::from).or_else(|| {
        let default = PathBuf::from(std::env::var_os("HOME")?).join(".postgresql/root.crt");
        default.is_file().then_some(default)
    });
    let chain = match (mode, &root_file) {
        ("verify-ca" | "verify-full", None) => {
            return Err(bad(format!(
                "sslmode={mode} checks the server's certificate against a CA: give sslrootcert=PATH (a PEM file) in the URL, or put the CA in ~/.postgresql/root.crt"
            )))
        }
        ("allow" | "prefer", _) | (_, None) => None,
        (_, Some(file)) => {
            let roots = roots(file).map_err(bad)?;
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| bad(format!("sslrootcert {}: {e}", file.display())))?,
            )
        }
    };
    let verifier = Arc::new(Verifier {
        provider: provider.clone(),
        chain,
        names: mode == "verify-full",
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (param("sslcert"), param("sslkey")) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| bad(format!("sslcert {cert}: {e}")))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| bad(format!("sslkey {key}: {e}")))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| bad(format!("sslcert / sslkey: {e}")))?
        }
        _ => {
            return Err(bad(
                "a client certificate needs both sslcert and sslkey".to_string()
            ))
        }
    };
    let ssl = match mode {
        "allow" | "prefer" => SslMode::Prefer,
        _ => SslMode::Require,
    };
    Ok(Some((ssl, MakeRustlsConnect::new(config))))
}

/// The CA certificates of the PEM file `file`.
fn roots(file: &Path) -> std::result::Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| format!("sslrootcert {}: {e}", file.display()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "sslrootcert {} holds no usable certificate",
            file.display()
        ));
    }
    Ok(roots)
}

/// How a server's certificate is checked. Without `chain` (libpq's
/// `require` without a root certificate, and `prefer`): not at all, the
/// connection is encrypted whoever's certificate it is. With `chain` and
/// not `names` (`verify-ca`): it must chain to the root, whatever host it
/// is for. The handshake's signatures are checked in every case.
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
    names: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The libpq variables that carry the URL's TLS settings to the PostgreSQL
/// tools dbfork runs (pg_dump, pg_restore, psql in a setup).
pub(super) fn client_env(url: &DbUrl) -> Vec<(String, String)> {
    [
        ("sslmode", "PGSSLMODE"),
        ("sslrootcert", "PGSSLROOTCERT"),
        ("sslcert", "PGSSLCERT"),
        ("sslkey", "PGSSLKEY"),
    ]
    .into_iter()
    .filter_map(|(param, var)| {
        url.params
            .iter()
            .find(|(k, _)| k == param)
            .map(|(_, v)| (var.to_string(), v.clone()))
    })
    .collect()
}
