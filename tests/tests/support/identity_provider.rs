//! An OpenID Connect identity provider for tests: keys made by the test, its discovery
//! document and JWKS served over loopback HTTP, and access tokens signed on request. Keys can
//! be rotated, and the JWKS fetches are counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use fieldsync_server::jwt::test_signer::Signer;
use serde_json::{Value, json};

/// The audience the provider issues tokens for; the server is started with it.
pub const AUDIENCE: &str = "fieldsync";

/// A running provider, stopped when dropped.
pub struct TestIdentityProvider {
    /// Its issuer URL, as its tokens' `iss` spell it.
    pub issuer: String,
    keys: Arc<Mutex<Keys>>,
    jwks_fetches: Arc<AtomicUsize>,
    discoveries: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

struct Keys {
    /// Every key made, by key id.
    made: Vec<(String, Arc<Signer>)>,
    /// The ids of the keys the JWKS publishes.
    published: Vec<String>,
    /// The id of the key new tokens are signed with.
    signing: String,
}

#[derive(Clone)]
struct Served {
    issuer: String,
    keys: Arc<Mutex<Keys>>,
    jwks_fetches: Arc<AtomicUsize>,
    discoveries: Arc<AtomicUsize>,
}

impl TestIdentityProvider {
    /// Starts a provider publishing an ES256 key (`es-1`, which signs), an RS256 key (`rsa`)
    /// and an EdDSA key (`ed`).
    pub fn start() -> TestIdentityProvider {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener.set_nonblocking(true).expect("non-blocking");
        let address = listener.local_addr().expect("an address");
        let issuer = format!("http://{address}/realms/clinic");
        let made = vec![
            ("es-1".to_owned(), Arc::new(Signer::p256())),
            ("rsa".to_owned(), Arc::new(Signer::rsa())),
            ("ed".to_owned(), Arc::new(Signer::ed25519())),
        ];
        let keys = Arc::new(Mutex::new(Keys {
            published: made.iter().map(|(kid, _)| kid.clone()).collect(),
            made,
            signing: "es-1".into(),
        }));
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let discoveries = Arc::new(AtomicUsize::new(0));
        let served = Served {
            issuer: issuer.clone(),
            keys: keys.clone(),
            jwks_fetches: jwks_fetches.clone(),
            discoveries: discoveries.clone(),
        };
        let app = Router::new()
            .route(
                "/realms/clinic/.well-known/openid-configuration",
                get(discovery),
            )
            .route("/realms/clinic/protocol/openid-connect/certs", get(jwks))
            .with_state(served);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("the listener converts");
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("the provider serves");
            });
        });
        TestIdentityProvider {
            issuer,
            keys,
            jwks_fetches,
            discoveries,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Claims for `subject` in `groups`, issued now for this provider's audience and valid
    /// for `lifetime_secs` (negative: expired that long ago).
    pub fn claims(&self, subject: &str, groups: &[&str], lifetime_secs: i64) -> Value {
        let now = unix_now();
        json!({
            "iss": self.issuer,
            "aud": [AUDIENCE, "account"],
            "sub": subject,
            "name": format!("Person {subject}"),
            "email": format!("{subject}@clinic.example"),
            "groups": groups,
            "iat": now,
            "exp": now + lifetime_secs,
        })
    }

    /// A token with `claims`, signed with the current signing key.
    pub fn sign(&self, claims: Value) -> String {
        let kid = self.lock().signing.clone();
        self.sign_with(&kid, claims)
    }

    /// A token with `claims` signed with the key `kid` (published or not).
    pub fn sign_with(&self, kid: &str, claims: Value) -> String {
        self.signer(kid).token(kid, claims)
    }

    /// A token for `subject` in `groups`, valid for an hour.
    pub fn token(&self, subject: &str, groups: &[&str]) -> String {
        self.sign(self.claims(subject, groups, 3600))
    }

    /// The key `kid`.
    pub fn signer(&self, kid: &str) -> Arc<Signer> {
        self.lock()
            .made
            .iter()
            .find(|(id, _)| id == kid)
            .map(|(_, signer)| signer.clone())
            .expect("the key was made")
    }

    /// Makes a new ES256 key that signs from now on and is the only one published; returns
    /// its id.
    pub fn rotate(&self) -> String {
        let mut keys = self.lock();
        let kid = format!("es-{}", keys.made.len() + 1);
        keys.made.push((kid.clone(), Arc::new(Signer::p256())));
        keys.published = vec![kid.clone()];
        keys.signing = kid.clone();
        kid
    }

    /// Makes a key that is never published; returns its id.
    pub fn unpublished_key(&self) -> String {
        let mut keys = self.lock();
        let kid = format!("hidden-{}", keys.made.len() + 1);
        keys.made.push((kid.clone(), Arc::new(Signer::p256())));
        kid
    }

    /// The JWKS URL its discovery document names.
    pub fn jwks_url(&self) -> String {
        format!("{}/protocol/openid-connect/certs", self.issuer)
    }

    /// How many times the discovery document was fetched.
    pub fn discoveries(&self) -> usize {
        self.discoveries.load(Ordering::SeqCst)
    }

    /// How many times the JWKS was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for TestIdentityProvider {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn discovery(State(served): State<Served>) -> Json<Value> {
    served.discoveries.fetch_add(1, Ordering::SeqCst);
    Json(json!({
        "issuer": served.issuer,
        "jwks_uri": format!("{}/protocol/openid-connect/certs", served.issuer),
        "id_token_signing_alg_values_supported": ["ES256", "RS256", "EdDSA"],
    }))
}

async fn jwks(State(served): State<Served>) -> Json<Value> {
    served.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let keys = served.keys.lock().unwrap_or_else(|p| p.into_inner());
    let published: Vec<Value> = keys
        .made
        .iter()
        .filter(|(kid, _)| keys.published.contains(kid))
        .map(|(kid, signer)| signer.jwk(kid))
        .collect();
    Json(json!({ "keys": published }))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64
}
