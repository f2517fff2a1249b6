//! The HTTP client for what the server calls itself: the identity provider, the attachment
//! bucket, webhooks' receivers. One TLS setup for all: rustls with ring, the system's trusted
//! roots or a private certificate authority, and no redirects (a redirect could carry a
//! signed request, or a token, somewhere else).

use std::sync::Arc;
use std::time::Duration;

use crate::error::ServerError;

/// How a client reaches what it calls.
pub struct Outbound<'a> {
    /// What is called, for error messages ("the identity provider").
    pub what: &'a str,
    /// A PEM file's text of the certificate authority the far end's certificate chains to,
    /// when it is a private one; `None` for the system's trusted roots.
    pub ca_pem: Option<&'a str>,
    /// The longest one request may take.
    pub timeout: Duration,
    /// The longest connecting may take.
    pub connect_timeout: Duration,
}

impl Outbound<'_> {
    /// The client.
    pub fn client(&self) -> Result<reqwest::Client, ServerError> {
        let what = self.what;
        let config_error = |err: &dyn std::fmt::Display| {
            ServerError::Config(format!("{what}'s TLS settings: {err}"))
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|err| config_error(&err))?;
        let tls = match self.ca_pem {
            None => {
                let verifier = rustls_platform_verifier::Verifier::new(provider)
                    .map_err(|err| config_error(&err))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_no_client_auth()
            }
            Some(pem) => {
                use rustls::pki_types::CertificateDer;
                use rustls::pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let cert = cert.map_err(|_| config_error(&"the CA file is not PEM"))?;
                    roots.add(cert).map_err(|err| config_error(&err))?;
                }
                if roots.is_empty() {
                    return Err(config_error(&"the CA file holds no certificate"));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| config_error(&err))
    }
}

/// Whether `url` may be called: `https`, or `http` to this machine only (a service on
/// loopback, as in tests). What travels in the clear elsewhere could be read or forged.
pub fn secure_or_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => true,
        "http" => loopback,
        _ => false,
    }
}
