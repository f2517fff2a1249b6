//! The sync client over TLS: a clinic's private CA, public-key pinning, and refusals. A TLS
//! terminator in the test (as a reverse proxy would be in a deployment) forwards to a real
//! server process.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use fieldsync_core::{Error, Filter, SyncClient, SyncConfig};
use fieldsync_tests::server::ServerProcess;
use fieldsync_tests::{fields, open_device};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PublicKeyData};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const SERVER: &str = env!("CARGO_BIN_EXE_server-under-test");

struct Pki {
    ca_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: PrivateKeyDer<'static>,
    /// The pin of the server's public key, `sha256/<base64>`.
    server_pin: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let pin = base64::engine::general_purpose::STANDARD
        .encode(Sha256::digest(server_key.subject_public_key_info()));
    Pki {
        ca_pem: ca_cert.pem(),
        server_cert: server_cert.der().clone(),
        server_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        server_pin: format!("sha256/{pin}"),
    }
}

/// Terminates TLS on a free loopback port and forwards each connection to `upstream`;
/// returns the `https://localhost:<port>` URL.
async fn tls_terminator(pki: &Pki, upstream: String) -> String {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pki.server_cert.clone()], pki.server_key.clone_key())
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    format!("https://localhost:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_and_a_pinned_key_are_trusted_and_nothing_else_is() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(Path::new(SERVER), dir.path().join("server.db"));
    let token = server.user_with_device("ada", &["north"]);
    let pki = pki();
    let url = tls_terminator(&pki, server.url.trim_start_matches("http://").to_owned()).await;
    let phone = open_device(&dir.path().join("phone.db"));
    phone
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Ada"})),
        )
        .unwrap();

    // The platform's trust store does not know the clinic's CA: refused, nothing sent.
    let platform = SyncClient::new(SyncConfig::new(&url, &token)).unwrap();
    assert!(matches!(
        platform.sync_now(&phone).await,
        Err(Error::Network(_))
    ));
    // A wrong pin is refused even though the CA is trusted.
    let mut pinned_wrong = SyncConfig::new(&url, &token);
    pinned_wrong.trusted_roots_pem = vec![pki.ca_pem.clone()];
    pinned_wrong.pinned_spki_sha256 = vec![format!(
        "sha256/{}",
        base64::engine::general_purpose::STANDARD.encode([0u8; 32])
    )];
    assert!(matches!(
        SyncClient::new(pinned_wrong)
            .unwrap()
            .sync_now(&phone)
            .await,
        Err(Error::Network(_))
    ));
    assert_eq!(phone.outbox_len().unwrap(), 1, "nothing left the device");

    // The clinic's CA with the server's pinned key: synced.
    let mut config = SyncConfig::new(&url, &token);
    config.trusted_roots_pem = vec![pki.ca_pem.clone()];
    config.pinned_spki_sha256 = vec![pki.server_pin.clone()];
    let report = SyncClient::new(config.clone())
        .unwrap()
        .sync_now(&phone)
        .await
        .unwrap();
    assert_eq!(report.pushed, 1);

    let tablet = open_device(&dir.path().join("tablet.db"));
    let mut tablet_config = config;
    tablet_config.token = server.device("ada");
    SyncClient::new(tablet_config)
        .unwrap()
        .sync_now(&tablet)
        .await
        .unwrap();
    assert_eq!(tablet.count("clients", &Filter::All).unwrap(), 1);
}
