//! `serve`'s identity provider settings: whose access tokens the server accepts besides its
//! own device tokens (what the provider's groups give their members is stored, see
//! `group-grants set`).

use clap::Args;

use crate::error::ServerError;
use crate::oidc::{OidcConfig, Provider};

/// Sign-in through the clinic's identity provider (OpenID Connect); without `--oidc-issuer`,
/// only device tokens are accepted.
#[derive(Args, Debug, Clone)]
pub(super) struct IdentityArgs {
    /// The identity provider's issuer URL, exactly as its tokens' `iss` claim spells it
    /// (Keycloak: `https://HOST/realms/REALM`; Entra ID:
    /// `https://login.microsoftonline.com/TENANT/v2.0`; Okta: `https://ORG.okta.com/oauth2/default`).
    #[arg(long, env = "FIELDSYNC_OIDC_ISSUER", requires = "oidc_audience")]
    oidc_issuer: Option<String>,
    /// The audience the server's tokens are issued for (its client id or API identifier).
    #[arg(long, env = "FIELDSYNC_OIDC_AUDIENCE", requires = "oidc_issuer")]
    oidc_audience: Option<String>,
    /// The provider's JWKS URL, when it is not to be found through the issuer's
    /// `/.well-known/openid-configuration`.
    #[arg(long, env = "FIELDSYNC_OIDC_JWKS_URL", requires = "oidc_issuer")]
    oidc_jwks_url: Option<String>,
    /// The token claim listing a person's groups or roles.
    #[arg(long, env = "FIELDSYNC_OIDC_GROUPS_CLAIM", default_value = "groups")]
    oidc_groups_claim: String,
    /// Members of this group (as the groups claim names it) are administrators.
    #[arg(long, env = "FIELDSYNC_OIDC_ADMIN_GROUP", requires = "oidc_issuer")]
    oidc_admin_group: Option<String>,
    /// Seconds of clock difference allowed when checking a token's expiry and start.
    #[arg(long, env = "FIELDSYNC_OIDC_LEEWAY_SECS", default_value_t = 60)]
    oidc_leeway_secs: u32,
    /// The least seconds between two fetches of the provider's keys (a token naming a key the
    /// server does not know makes it fetch them again).
    #[arg(long, env = "FIELDSYNC_OIDC_REFETCH_SECS", default_value_t = crate::oidc::DEFAULT_REFETCH_INTERVAL.as_secs())]
    oidc_refetch_secs: u64,
    /// A PEM file of the certificate authority the provider's TLS certificate chains to, when
    /// it is a private one (default: the system's trusted roots).
    #[arg(long, env = "FIELDSYNC_OIDC_CA_FILE", requires = "oidc_issuer")]
    oidc_ca_file: Option<std::path::PathBuf>,
}

impl IdentityArgs {
    /// The provider configured, if any; a file that does not read or a setting that cannot
    /// work stops the server before it serves.
    pub(super) fn provider(&self) -> Result<Option<Provider>, ServerError> {
        let (Some(issuer), Some(audience)) = (&self.oidc_issuer, &self.oidc_audience) else {
            return Ok(None);
        };
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read_to_string(path).map_err(|err| {
                ServerError::Config(format!(
                    "the {what} {} cannot be read: {err}",
                    path.display()
                ))
            })
        };
        let ca_pem = self
            .oidc_ca_file
            .as_deref()
            .map(|path| read(path, "CA file"))
            .transpose()?;
        let provider = Provider::new(&OidcConfig {
            issuer: issuer.clone(),
            audience: audience.clone(),
            jwks_url: self.oidc_jwks_url.clone(),
            groups_claim: self.oidc_groups_claim.clone(),
            admin_group: self.oidc_admin_group.clone(),
            leeway_secs: i64::from(self.oidc_leeway_secs),
            refetch_interval: std::time::Duration::from_secs(self.oidc_refetch_secs),
            ca_pem,
        })?;
        tracing::info!(issuer = %issuer, "accepting the identity provider's access tokens");
        Ok(Some(provider))
    }
}
