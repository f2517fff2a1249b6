//! An S3-compatible bucket that holds attachments' chunk bytes: AWS S3, MinIO, Ceph's RADOS
//! Gateway, or anything else speaking the S3 API. Each chunk is one object, written and read
//! whole in one request, signed with AWS Signature Version 4 ([`sigv4`]).
//!
//! What the bucket answers is mapped to the server's errors in one place (`Bucket::error`):
//! a bucket that does not answer, or answers 5xx, is [`ServerError::TryAgain`] (devices retry;
//! nothing was stored), and one that refuses the credentials, is missing or is elsewhere is
//! [`ServerError::Config`] (the operator has to act). Messages name the status and S3's error
//! code, never an object's bytes.

pub mod sigv4;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use reqwest::{Method, StatusCode, header};
use sha2::{Digest, Sha256};

use crate::error::ServerError;

/// How long one request may take, its bytes included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause before the one retry of a request that met a dropped connection or a 5xx.
const RETRY_DELAY: Duration = Duration::from_millis(200);
/// How much of an error's body is read for its `<Code>`.
const MAX_ERROR_BODY: usize = 16 << 10;

/// Where and how to reach the bucket.
#[derive(Clone)]
pub struct BucketConfig {
    /// The S3 API's URL, scheme, host and port only: `https://s3.eu-west-1.amazonaws.com`,
    /// `http://127.0.0.1:9000` (`http` only to this machine).
    pub endpoint: String,
    /// The bucket's name.
    pub bucket: String,
    /// The region requests are signed for, `us-east-1` where the service has none.
    pub region: String,
    /// Prepended to every key, `attachments/` say; may be empty.
    pub prefix: String,
    /// Address the bucket as `https://{bucket}.{endpoint host}/{key}` (AWS's default)
    /// rather than `{endpoint}/{bucket}/{key}` (path style: MinIO, Ceph, s3proxy).
    pub virtual_hosted: bool,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key (never printed).
    pub secret_access_key: String,
    /// The session token of temporary credentials (never printed).
    pub session_token: Option<String>,
}

impl fmt::Debug for BucketConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BucketConfig")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("virtual_hosted", &self.virtual_hosted)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A bucket, and the HTTP client that reaches it; cheap to clone.
///
/// ```no_run
/// # async fn example() -> Result<(), fieldsync_server::error::ServerError> {
/// use fieldsync_server::attachments::bucket::{Bucket, BucketConfig};
///
/// let bucket = Bucket::new(BucketConfig {
///     endpoint: "https://s3.eu-west-1.amazonaws.com".into(),
///     bucket: "clinic-attachments".into(),
///     region: "eu-west-1".into(),
///     prefix: "attachments/".into(),
///     virtual_hosted: true,
///     access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
///     secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
///     session_token: None,
/// })?;
/// bucket.check().await?;
/// bucket.put("ab12/0f3e/0", vec![1, 2, 3].into()).await?;
/// assert_eq!(bucket.get("ab12/0f3e/0").await?.as_deref(), Some(&[1, 2, 3][..]));
/// bucket.delete("ab12/0f3e/0").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Bucket {
    http: reqwest::Client,
    config: Arc<BucketConfig>,
    /// `scheme://host[:port]`, the bucket's own host when virtual-hosted.
    origin: String,
    /// The `Host` header: the host, and the port unless it is the scheme's default.
    host: String,
    /// The bucket's path: `/{bucket}` in path style, empty when virtual-hosted.
    bucket_path: String,
}

/// Why a request did not succeed.
enum Failure {
    /// No answer: no connection, cut off, or too slow (`timed_out`).
    Unreachable { detail: String, timed_out: bool },
    /// An answer other than success, and S3's error code if its body named one.
    Refused(StatusCode, Option<String>),
}

impl Bucket {
    /// A client of the bucket `config` names; nothing is sent until [`Bucket::check`].
    /// [`ServerError::Config`] names the setting that is not usable and why.
    pub fn new(mut config: BucketConfig) -> Result<Bucket, ServerError> {
        // An empty token (`AWS_SESSION_TOKEN=` say) is no token: S3 would refuse it.
        config.session_token = config.session_token.filter(|token| !token.is_empty());
        let invalid = |message: String| Err(ServerError::Config(message));
        let endpoint = check_endpoint(&config.endpoint)?;
        if !valid_bucket_name(&config.bucket) {
            return invalid(format!(
                "the attachment bucket's name {:?} is not an S3 bucket name: 3 to 63 lower-case \
                 letters, digits, dots and hyphens, starting and ending with a letter or digit",
                config.bucket
            ));
        }
        if config.virtual_hosted && endpoint.scheme() == "https" && config.bucket.contains('.') {
            return invalid(format!(
                "the attachment bucket's name {:?} has dots, which TLS certificates do not cover \
                 when the bucket is virtual-hosted; address it path style",
                config.bucket
            ));
        }
        if config.region.is_empty()
            || !config
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return invalid("the attachment bucket's region must be a name like us-east-1".into());
        }
        // Checked with a key's first character after it, as it is sent: a leading slash, `//`
        // or a `.` or `..` segment would be an empty segment or one URLs drop.
        let prefixed = format!("{}x", config.prefix);
        if !config
            .prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
            || prefixed
                .split('/')
                .any(|segment| ["", ".", ".."].contains(&segment))
        {
            return invalid(
                "the attachment bucket's prefix may hold only letters, digits and / . _ -, \
                 without a leading slash, empty segments or . and .. segments"
                    .into(),
            );
        }
        if config.access_key_id.is_empty() || config.secret_access_key.is_empty() {
            return invalid("the attachment bucket's access key id or secret is empty".into());
        }
        let port = endpoint
            .port()
            .map(|port| format!(":{port}"))
            .unwrap_or_default();
        let endpoint_host = endpoint.host_str().unwrap_or_default();
        let (host, bucket_path) = if config.virtual_hosted {
            (
                format!("{}.{endpoint_host}{port}", config.bucket),
                String::new(),
            )
        } else {
            (
                format!("{endpoint_host}{port}"),
                format!("/{}", config.bucket),
            )
        };
        Ok(Bucket {
            http: crate::outbound::Outbound {
                what: "the attachment bucket",
                ca_pem: None,
                timeout: REQUEST_TIMEOUT,
                connect_timeout: CONNECT_TIMEOUT,
            }
            .client()?,
            origin: format!("{}://{host}", endpoint.scheme()),
            host,
            bucket_path,
            config: Arc::new(config),
        })
    }

    /// Checks that the bucket exists and takes the credentials (a `HEAD` of the bucket), so
    /// that a server misconfigured fails as it starts: [`ServerError::Config`] saying whether
    /// the credentials were refused, the bucket is missing, or the endpoint did not answer.
    pub async fn check(&self) -> Result<(), ServerError> {
        let path = match self.bucket_path.as_str() {
            "" => "/",
            path => path,
        };
        match self.send(Method::HEAD, path, Bytes::new()).await {
            Ok(_) => Ok(()),
            Err(Failure::Unreachable { detail, .. }) => Err(ServerError::Config(format!(
                "the attachment bucket's endpoint {} did not answer ({detail})",
                self.config.endpoint
            ))),
            // Whatever the status, the bucket is not usable as configured.
            Err(failure) => Err(match self.error(failure, "HEAD of the bucket") {
                ServerError::TryAgain(message) | ServerError::Internal(message) => {
                    ServerError::Config(message)
                }
                other => other,
            }),
        }
    }

    /// Stores `bytes` as the object `key` (under the prefix), replacing any there.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), ServerError> {
        self.send(Method::PUT, &self.object_path(key)?, bytes)
            .await
            .map(drop)
            .map_err(|failure| self.error(failure, "PUT of an object"))
    }

    /// The bytes of the object `key`, or `None` if the bucket does not hold it.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, ServerError> {
        match self
            .send(Method::GET, &self.object_path(key)?, Bytes::new())
            .await
        {
            Ok(response) => response
                .bytes()
                .await
                .map(Some)
                .map_err(|err| self.error(Failure::unreachable(err), "GET of an object")),
            Err(Failure::Refused(StatusCode::NOT_FOUND, code)) if !no_bucket(&code) => Ok(None),
            Err(failure) => Err(self.error(failure, "GET of an object")),
        }
    }

    /// Deletes the object `key`; one the bucket does not hold is deleted already.
    pub async fn delete(&self, key: &str) -> Result<(), ServerError> {
        match self
            .send(Method::DELETE, &self.object_path(key)?, Bytes::new())
            .await
        {
            Ok(_) => Ok(()),
            Err(Failure::Refused(StatusCode::NOT_FOUND, code)) if !no_bucket(&code) => Ok(()),
            Err(failure) => Err(self.error(failure, "DELETE of an object")),
        }
    }

    /// The path of the object `key` (under the prefix), each segment URI-encoded.
    fn object_path(&self, key: &str) -> Result<String, ServerError> {
        if !valid_key(key) {
            return Err(ServerError::Internal(
                "an attachment bucket key is not segments of lower-case letters and digits".into(),
            ));
        }
        let prefixed = format!("{}{key}", self.config.prefix);
        Ok(format!(
            "{}/{}",
            self.bucket_path,
            sigv4::encode_path(&prefixed)
        ))
    }

    /// Sends a signed request to `path` (the bucket's, or an object's); retries once, after a
    /// pause, when the connection dropped or the bucket answered 5xx.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<reqwest::Response, Failure> {
        let payload_sha256 = hex::encode(Sha256::digest(&body));
        let mut retried = false;
        loop {
            let outcome = self.attempt(&method, path, &body, &payload_sha256).await;
            let transient = match &outcome {
                Err(Failure::Unreachable { timed_out, .. }) => !timed_out,
                Err(Failure::Refused(status, _)) => unavailable(*status),
                Ok(_) => false,
            };
            if !transient || retried {
                return outcome;
            }
            retried = true;
            tokio::time::sleep(RETRY_DELAY).await;
        }
    }

    async fn attempt(
        &self,
        method: &Method,
        path: &str,
        body: &Bytes,
        payload_sha256: &str,
    ) -> Result<reqwest::Response, Failure> {
        let signed = sigv4::sign(
            &sigv4::Request {
                method: method.as_str(),
                host: &self.host,
                path,
                query: &[],
                headers: &[],
                payload_sha256,
            },
            &sigv4::Credentials {
                access_key_id: &self.config.access_key_id,
                secret_access_key: &self.config.secret_access_key,
                session_token: self.config.session_token.as_deref(),
            },
            &self.config.region,
            SystemTime::now(),
        );
        // The Host header set as signed, rather than left to the HTTP client to derive.
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.origin))
            .header(header::HOST, &self.host);
        for (name, value) in signed {
            request = request.header(name, value);
        }
        if *method == Method::PUT {
            // The length said even when 0 (the HTTP client leaves it out then): S3 needs it.
            request = request
                .header(header::CONTENT_LENGTH, body.len())
                .body(body.clone());
        }
        let mut response = request.send().await.map_err(Failure::unreachable)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let mut error_body = Vec::new();
        while error_body.len() < MAX_ERROR_BODY
            && let Ok(Some(chunk)) = response.chunk().await
        {
            error_body.extend_from_slice(&chunk);
        }
        Err(Failure::Refused(response.status(), error_code(&error_body)))
    }

    /// The server's error for `failure` of `action` (`PUT of an object`...).
    fn error(&self, failure: Failure, action: &str) -> ServerError {
        let BucketConfig {
            bucket, endpoint, ..
        } = &*self.config;
        let (status, detail) = match failure {
            Failure::Unreachable { detail, .. } => {
                tracing::warn!(
                    %endpoint, %bucket, error = %detail, "the attachment bucket did not answer"
                );
                return ServerError::TryAgain(format!(
                    "the attachment bucket did not answer ({detail})"
                ));
            }
            Failure::Refused(status, Some(code)) => (status, format!("{} {code}", status.as_u16())),
            Failure::Refused(status, None) => (status, status.to_string()),
        };
        if unavailable(status) {
            tracing::warn!(
                %endpoint, %bucket, error = %detail, "the attachment bucket is unavailable"
            );
            return ServerError::TryAgain(format!(
                "the attachment bucket is unavailable ({detail})"
            ));
        }
        ServerError::Config(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => format!(
                "the attachment bucket {bucket:?} refused the credentials ({detail}); check the \
                 access key id, secret access key and session token, and the clock"
            ),
            StatusCode::NOT_FOUND => {
                format!("the attachment bucket {bucket:?} does not exist at {endpoint} ({detail})")
            }
            _ if status.is_redirection() || detail.ends_with("AuthorizationHeaderMalformed") => {
                format!(
                    "the attachment bucket {bucket:?} is in another region or at another \
                     endpoint ({detail}); check its region and endpoint"
                )
            }
            // The request itself was refused: this server's fault, not the operator's.
            _ => {
                return ServerError::Internal(format!(
                    "the attachment bucket refused a {action} ({detail})"
                ));
            }
        })
    }
}

impl Failure {
    fn unreachable(err: reqwest::Error) -> Failure {
        // The URL (which names the key) left out; the causes kept (`connection refused`...).
        let (timed_out, err) = (err.is_timeout(), err.without_url());
        let mut detail = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            detail = format!("{detail}: {cause}");
            source = cause.source();
        }
        Failure::Unreachable { detail, timed_out }
    }
}

/// Whether `status` says the bucket cannot answer now (S3's 500, 503 `SlowDown`...), rather
/// than that it will never do what was asked (501).
fn unavailable(status: StatusCode) -> bool {
    status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED
}

/// Whether S3's error code says the bucket, not the object, is missing.
fn no_bucket(code: &Option<String>) -> bool {
    code.as_deref() == Some("NoSuchBucket")
}

/// S3's error code, the `<Code>` of its XML error body; nothing else of the body is kept.
fn error_code(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let start = text.find("<Code>")? + "<Code>".len();
    let code = &text[start..start + text[start..].find("</Code>")?];
    let plain = code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
    (plain && (1..=64).contains(&code.len())).then(|| code.to_owned())
}

/// A key as callers build them: segments of lower-case letters and digits.
fn valid_key(key: &str) -> bool {
    key.split('/').all(|segment| {
        !segment.is_empty()
            && segment
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// S3's rules for a bucket's name (those every S3-compatible service shares).
fn valid_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(b))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
        && name.parse::<std::net::Ipv4Addr>().is_err()
}

/// The endpoint as a URL: `https`, or `http` to this machine (bytes and signatures sent in
/// the clear elsewhere could be read and replayed), and nothing but a scheme, host and port.
fn check_endpoint(endpoint: &str) -> Result<reqwest::Url, ServerError> {
    let url = reqwest::Url::parse(endpoint)
        .map_err(|_| ServerError::Config("the attachment bucket's endpoint is not a URL".into()))?;
    let host = url.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !(url.scheme() == "https" || url.scheme() == "http" && loopback) || host.is_empty() {
        return Err(ServerError::Config(
            "the attachment bucket's endpoint must be an https URL (http only to this machine)"
                .into(),
        ));
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(ServerError::Config(
            "the attachment bucket's endpoint must be a scheme, host and port only, like \
             https://s3.eu-west-1.amazonaws.com"
                .into(),
        ));
    }
    Ok(url)
}

/// An HTTP client trusting the system's roots (as the identity provider's does), following
/// no redirect (S3 answers one for a bucket in another region: a configuration error).
#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BucketConfig {
        BucketConfig {
            endpoint: "https://s3.eu-west-1.amazonaws.com".into(),
            bucket: "clinic-attachments".into(),
            region: "eu-west-1".into(),
            prefix: "attachments/".into(),
            virtual_hosted: true,
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: Some("a-session-token".into()),
        }
    }

    fn refused(config: BucketConfig) -> String {
        Bucket::new(config).expect_err("refused").to_string()
    }

    #[test]
    fn the_bucket_is_addressed_virtual_hosted_or_path_style() {
        let bucket = Bucket::new(config()).unwrap();
        assert_eq!(
            bucket.origin,
            "https://clinic-attachments.s3.eu-west-1.amazonaws.com"
        );
        assert_eq!(bucket.host, "clinic-attachments.s3.eu-west-1.amazonaws.com");
        assert_eq!(bucket.bucket_path, "");
        let bucket = Bucket::new(BucketConfig {
            endpoint: "http://127.0.0.1:9000/".into(),
            virtual_hosted: false,
            ..config()
        })
        .unwrap();
        assert_eq!(bucket.origin, "http://127.0.0.1:9000");
        assert_eq!(bucket.host, "127.0.0.1:9000");
        assert_eq!(bucket.bucket_path, "/clinic-attachments");
    }

    #[test]
    fn the_secret_is_never_printed() {
        let printed = format!("{:?}", Bucket::new(config()).unwrap());
        assert!(printed.contains("AKIAIOSFODNN7EXAMPLE"), "{printed}");
        assert!(!printed.contains("EXAMPLEKEY"), "{printed}");
        assert!(!printed.contains("a-session-token"), "{printed}");
    }

    #[test]
    fn unusable_settings_are_refused_by_name() {
        for endpoint in ["http://s3.example.org", "ftp://127.0.0.1", "s3.example.org"] {
            let err = refused(BucketConfig {
                endpoint: endpoint.into(),
                ..config()
            });
            assert!(err.contains("endpoint"), "{endpoint}: {err}");
        }
        for endpoint in [
            "https://s3.example.org/s3",
            "https://key:secret@s3.example.org",
            "https://s3.example.org/?a=b",
        ] {
            let err = refused(BucketConfig {
                endpoint: endpoint.into(),
                ..config()
            });
            assert!(
                err.contains("scheme, host and port only"),
                "{endpoint}: {err}"
            );
        }
        for bucket in [
            "ab",
            "Clinic",
            "clinic_files",
            "-clinic",
            "clinic-",
            "a..b",
            "192.168.1.2",
            &"a".repeat(64),
        ] {
            let err = refused(BucketConfig {
                bucket: bucket.into(),
                ..config()
            });
            assert!(err.contains("bucket's name"), "{bucket}: {err}");
        }
        let err = refused(BucketConfig {
            bucket: "clinic.files".into(),
            ..config()
        });
        assert!(err.contains("path style"), "{err}");
        for prefix in ["/attachments", "a//b/", "a/./", "../", "a b/", "a%2f"] {
            let err = refused(BucketConfig {
                prefix: prefix.into(),
                ..config()
            });
            assert!(err.contains("prefix"), "{prefix}: {err}");
        }
        for prefix in ["", "attachments/", "a.b/c_d-e/", "attachments-"] {
            assert!(
                Bucket::new(BucketConfig {
                    prefix: prefix.into(),
                    ..config()
                })
                .is_ok(),
                "{prefix}"
            );
        }
        let err = refused(BucketConfig {
            region: "eu west".into(),
            ..config()
        });
        assert!(err.contains("region"), "{err}");
        let err = refused(BucketConfig {
            secret_access_key: String::new(),
            ..config()
        });
        assert!(err.contains("secret"), "{err}");
    }

    #[test]
    fn only_the_error_code_is_kept_of_an_error_body() {
        let body = b"<?xml version='1.0'?><Error><Code>NoSuchKey</Code><Message>The key \
            a/b does not exist</Message><Key>a/b</Key></Error>";
        assert_eq!(error_code(body).as_deref(), Some("NoSuchKey"));
        assert_eq!(error_code(b"<Error><Code><b>x</b></Code></Error>"), None);
        assert_eq!(error_code(b"not XML at all"), None);
        assert_eq!(error_code(b""), None);
    }

    #[test]
    fn keys_are_segments_of_lower_case_letters_and_digits() {
        assert!(valid_key("6162/0f3e/12"));
        for key in ["", "/a", "a/", "a//b", "a/../b", "A/b", "a b"] {
            assert!(!valid_key(key), "{key}");
        }
    }
}
