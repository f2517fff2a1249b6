//! The TLS configuration of the sync client: rustls with the ring provider, the platform's
//! trust store or a private CA, and optional public-key pinning.

use std::sync::Arc;

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Builds the client's TLS configuration.
pub(super) fn client_config(
    trusted_roots_pem: &[String],
    pins: &[String],
) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = if trusted_roots_pem.is_empty() {
        Arc::new(
            rustls_platform_verifier::Verifier::new(provider.clone()).map_err(|err| {
                Error::InvalidConfig(format!("the platform trust store is unusable: {err}"))
            })?,
        )
    } else {
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots(trusted_roots_pem)?),
            provider.clone(),
        )
        .build()
        .map_err(|err| Error::InvalidConfig(format!("the trusted roots are unusable: {err}")))?
    };
    let verifier: Arc<dyn ServerCertVerifier> = if pins.is_empty() {
        verifier
    } else {
        Arc::new(PinnedVerifier {
            inner: verifier,
            pins: parse_pins(pins)?,
        })
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::InvalidConfig(format!("TLS: {err}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn roots(pems: &[String]) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in pems {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert =
                cert.map_err(|_| Error::InvalidConfig("a trusted root is not PEM".into()))?;
            roots.add(cert).map_err(|_| {
                Error::InvalidConfig("a trusted root is not a valid certificate".into())
            })?;
        }
    }
    if roots.is_empty() {
        return Err(Error::InvalidConfig(
            "the trusted roots hold no certificate".into(),
        ));
    }
    Ok(roots)
}

fn parse_pins(pins: &[String]) -> Result<Vec<[u8; 32]>> {
    pins.iter()
        .map(|pin| {
            let encoded = pin.trim().strip_prefix("sha256/").unwrap_or(pin.trim());
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .ok_or_else(|| Error::InvalidConfig("a pin is not a base64 SHA-256".into()))
        })
        .collect()
}

/// Verifies as `inner` does, then also requires the end-entity certificate's public key to be
/// one of the pins: a certificate from a compromised or coerced CA is refused.
#[derive(Debug)]
struct PinnedVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    pins: Vec<[u8; 32]>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let key: [u8; 32] = Sha256::digest(cert.subject_public_key_info().as_ref()).into();
        if self.pins.contains(&key) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_roots_and_pins_are_configuration_errors() {
        assert!(matches!(
            client_config(&["not pem".into()], &[]),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            parse_pins(&["sha256/abc".into()]),
            Err(Error::InvalidConfig(_))
        ));
        let pin = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(
            parse_pins(&[format!("sha256/{pin}"), pin]).unwrap(),
            vec![[7u8; 32]; 2]
        );
    }
}
