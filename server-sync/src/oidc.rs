//! The clinic's identity provider (OpenID Connect): where its signing keys are found (issuer
//! discovery or a configured JWKS URL), keeping them fresh, and checking access tokens against
//! them. The checks themselves are [`crate::jwt`]'s; this is the I/O around them.
//!
//! Keys are fetched when the first token comes, again when they are older than
//! [`KEYS_MAX_AGE`] (so that a key the provider withdrew stops working), and once when a token
//! names a key the server does not know (the provider rotated its keys). Fetches are at least
//! a refetch interval ([`DEFAULT_REFETCH_INTERVAL`]) apart, so tokens naming made-up keys cannot make the server hammer
//! the provider. If a fetch fails, the keys held are kept.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::error::ServerError;
use crate::jwt::{self, Expected, Identity, JwtError, KeySet};

/// How old the keys may get before the next token fetches them again.
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// The least time between two fetches of the keys, unless configured otherwise.
pub const DEFAULT_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// The largest discovery or JWKS document the server reads.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// How long a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server trusts an identity provider.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The provider's issuer URL, exactly as its tokens' `iss` spell it.
    pub issuer: String,
    /// The server's client id at the provider, which tokens name in `aud`.
    pub audience: String,
    /// The JWKS URL, when the provider is not to be asked through discovery.
    pub jwks_url: Option<String>,
    /// The claim listing a person's groups or roles.
    pub groups_claim: String,
    /// Members of this group are administrators.
    pub admin_group: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: i64,
    /// The least time between two fetches of the keys.
    pub refetch_interval: Duration,
    /// Certificates (PEM) of a private certificate authority the provider's TLS certificate
    /// chains to; empty for the system's trusted roots.
    pub ca_pem: Option<String>,
}

/// What a checked token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    /// Who the provider says they are.
    pub identity: Identity,
    /// Whether they are in the administrators' group.
    pub admin: bool,
}

/// The provider, its keys, and the HTTP client that fetches them.
pub struct Provider {
    expected: Expected,
    admin_group: Option<String>,
    jwks_url: Option<String>,
    refetch_interval: Duration,
    http: reqwest::Client,
    keys: RwLock<Keys>,
    /// Held while fetching, so that tokens arriving meanwhile wait for one fetch.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Keys {
    set: Arc<KeySet>,
    fetched_at: Option<Instant>,
    tried_at: Option<Instant>,
    /// Found through discovery, once.
    discovered_jwks_url: Option<String>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl Provider {
    /// A provider for `config`; nothing is fetched until the first token comes.
    pub fn new(config: &OidcConfig) -> Result<Provider, ServerError> {
        check_url("issuer", &config.issuer)?;
        if let Some(url) = &config.jwks_url {
            check_url("JWKS URL", url)?;
        }
        if config.audience.is_empty() {
            return Err(ServerError::Config("the OIDC audience is empty".into()));
        }
        Ok(Provider {
            expected: Expected {
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                leeway_secs: config.leeway_secs,
                groups_claim: config.groups_claim.clone(),
            },
            admin_group: config.admin_group.clone(),
            jwks_url: config.jwks_url.clone(),
            refetch_interval: config.refetch_interval,
            http: crate::outbound::Outbound {
                what: "the identity provider",
                ca_pem: config.ca_pem.as_deref(),
                timeout: FETCH_TIMEOUT,
                connect_timeout: FETCH_TIMEOUT,
            }
            .client()?,
            keys: RwLock::default(),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// Checks `token` and says who it names. A token whose key the server does not know makes
    /// it fetch the keys again, at most once every refetch interval: such a token is refused
    /// if the keys were fetched less than that ago, and otherwise, when the provider does not
    /// answer, gets [`ServerError::TryAgain`] (it may be good), as does every token while no
    /// keys could be fetched yet.
    pub async fn verify(&self, token: &str) -> Result<SignedIn, ServerError> {
        let (mut keys, mut fetched_at) = self.current_keys();
        if fetched_at.is_none_or(|at| at.elapsed() >= KEYS_MAX_AGE) {
            // Keys too old are kept while the provider does not answer.
            if let Some((fresh, at)) = self.refresh(fetched_at).await {
                (keys, fetched_at) = (fresh, Some(at));
            }
        }
        if keys.is_empty() {
            return Err(unreachable_keys());
        }
        let identity = match jwt::verify(token, &keys, &self.expected, unix_now()) {
            Err(JwtError::UnknownKey) => match self.refresh(fetched_at).await {
                Some((fresh, _)) => jwt::verify(token, &fresh, &self.expected, unix_now()),
                // Keys fetched a moment ago do not hold it: it is not the provider's key.
                None if fetched_at.is_some_and(|at| at.elapsed() < self.refetch_interval) => {
                    Err(JwtError::UnknownKey)
                }
                None => return Err(unreachable_keys()),
            },
            verified => verified,
        }
        .map_err(ServerError::InvalidToken)?;
        let admin = self
            .admin_group
            .as_ref()
            .is_some_and(|group| identity.groups.contains(group));
        Ok(SignedIn { identity, admin })
    }

    /// The keys held and when they were fetched.
    fn current_keys(&self) -> (Arc<KeySet>, Option<Instant>) {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        (keys.set.clone(), keys.fetched_at)
    }

    /// Keys newer than those fetched at `held`: fetched now unless a fetch was tried less
    /// than the refetch interval ago, or fetched by another request meanwhile. `None` if
    /// there are none (too soon, or the provider did not answer).
    async fn refresh(&self, held: Option<Instant>) -> Option<(Arc<KeySet>, Instant)> {
        let _fetching = self.fetching.lock().await;
        let jwks_url = {
            let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
            if let Some(at) = keys.fetched_at
                && held.is_none_or(|held| at > held)
            {
                return Some((keys.set.clone(), at));
            }
            if keys
                .tried_at
                .is_some_and(|at| at.elapsed() < self.refetch_interval)
            {
                return None;
            }
            self.jwks_url
                .clone()
                .or_else(|| keys.discovered_jwks_url.clone())
        };
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .tried_at = Some(Instant::now());
        match self.fetch(jwks_url).await {
            Ok((set, discovered)) => {
                let set = Arc::new(set);
                let now = Instant::now();
                let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
                keys.set = set.clone();
                keys.fetched_at = Some(now);
                keys.discovered_jwks_url = discovered;
                tracing::info!(keys = set.len(), "fetched the identity provider's keys");
                Some((set, now))
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not fetch the identity provider's keys");
                None
            }
        }
    }

    /// The key set, by discovery when no JWKS URL is known; returns the URL found too.
    async fn fetch(&self, jwks_url: Option<String>) -> Result<(KeySet, Option<String>), String> {
        let jwks_url = match jwks_url {
            Some(url) => url,
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.expected.issuer.trim_end_matches('/')
                );
                let discovery: Discovery = serde_json::from_slice(&self.get(&url).await?)
                    .map_err(|_| "the discovery document does not read".to_owned())?;
                // A provider answering for another issuer is not the one configured.
                if discovery.issuer != self.expected.issuer {
                    return Err("the discovery document names another issuer".into());
                }
                check_url("JWKS URL", &discovery.jwks_uri).map_err(|err| err.to_string())?;
                discovery.jwks_uri
            }
        };
        let body = self.get(&jwks_url).await?;
        let text = std::str::from_utf8(&body).map_err(|_| "the JWKS is not UTF-8".to_owned())?;
        let set = KeySet::from_jwks(text).map_err(|err| err.to_string())?;
        if set.is_empty() {
            return Err("the JWKS holds no signing key this server accepts".into());
        }
        let discovered = self.jwks_url.is_none().then_some(jwks_url);
        Ok((set, discovered))
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|err| format!("{url}: {err}"))?;
        if !response.status().is_success() {
            return Err(format!("{url} answered {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| format!("{url}: {err}"))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("{url} sent more than {MAX_DOCUMENT_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// No keys to check a token with: the server's trouble, not the token's.
fn unreachable_keys() -> ServerError {
    ServerError::TryAgain("the identity provider's signing keys are not at hand yet".into())
}

/// An `https` URL, or `http` to this machine (a provider on loopback, as in tests): keys
/// fetched in the clear from elsewhere could be anyone's.
fn check_url(what: &str, url: &str) -> Result<(), ServerError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|_| ServerError::Config(format!("the OIDC {what} is not a URL")))?;
    if crate::outbound::secure_or_loopback(&parsed) {
        return Ok(());
    }
    Err(ServerError::Config(format!(
        "the OIDC {what} must be an https URL (http only to this machine)"
    )))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fetched_over_https_or_from_this_machine_only() {
        for good in [
            "https://login.microsoftonline.com/tenant/v2.0",
            "http://127.0.0.1:8080/realms/clinic",
            "http://localhost/realms/clinic",
            "http://[::1]:9000/",
        ] {
            assert!(check_url("issuer", good).is_ok(), "{good}");
        }
        for bad in [
            "http://idp.clinic.example/realms/clinic",
            "http://10.0.0.5/",
            "ftp://127.0.0.1/",
            "not a url",
        ] {
            let err = check_url("issuer", bad).unwrap_err().to_string();
            assert!(err.contains("OIDC issuer"), "{bad}: {err}");
        }
        let config = OidcConfig {
            issuer: "https://idp.clinic.example/realms/clinic".into(),
            audience: String::new(),
            jwks_url: None,
            groups_claim: "groups".into(),
            admin_group: None,
            leeway_secs: 60,
            refetch_interval: DEFAULT_REFETCH_INTERVAL,
            ca_pem: None,
        };
        assert!(Provider::new(&config).is_err(), "an audience is needed");
        let with_bad_ca = OidcConfig {
            audience: "fieldsync".into(),
            ca_pem: Some("not a certificate".into()),
            ..config
        };
        assert!(Provider::new(&with_bad_ca).is_err());
    }
}
