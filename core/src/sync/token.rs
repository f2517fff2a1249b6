//! Where a sync gets its bearer token when the clinic signs its staff in through an identity
//! provider: the app's sign-in library, asked before every sync and once more when the server
//! refuses the token it gave.

use super::BoxFuture;

/// Gives the sync engine an identity provider's access token. Apps implement it over their
/// sign-in library (AppAuth, MSAL, ...), which refreshes the token as it needs to.
pub trait TokenProvider: Send + Sync + std::fmt::Debug {
    /// A current access token. Called before every sync, and once more when the server
    /// refused the token this returned (it expired meanwhile, or the provider rotated its
    /// keys). An error means no token can be had without the person: they must sign in again,
    /// which the sync reports as [`crate::Error::SignInRequired`] with this text. It answers
    /// from what the sign-in library holds (refreshing a token is fine, asking the person is
    /// not): one that takes longer than the request timeout counts as no token.
    fn token(&self) -> BoxFuture<'_, Result<String, String>>;
}
