//! AWS Signature Version 4 for S3, header-based, with a signed payload hash: a pure function
//! of the request, the credentials and the time, so that it is checked against AWS's published
//! examples without any I/O.
//!
//! The steps are AWS's: a canonical request (method, URI-encoded path, sorted query, sorted
//! lower-case headers, the payload's SHA-256), a string to sign naming the day's scope, and an
//! HMAC-SHA256 with a key derived from the secret for that day, region and service.

use std::fmt::Write as _;
use std::time::SystemTime;

use ring::hmac;
use sha2::{Digest, Sha256};

/// The SHA-256 of no bytes, the payload hash of a request without a body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Who signs.
pub struct Credentials<'a> {
    /// The access key id, which the signature names.
    pub access_key_id: &'a str,
    /// The secret access key, which never leaves this machine.
    pub secret_access_key: &'a str,
    /// The session token of temporary credentials, sent (and signed) as
    /// `x-amz-security-token`.
    pub session_token: Option<&'a str>,
}

/// One request, as far as its signature goes.
pub struct Request<'a> {
    /// `GET`, `PUT`, `HEAD`, `DELETE`...
    pub method: &'a str,
    /// The `Host` header sent: the host, and the port unless it is the scheme's default.
    pub host: &'a str,
    /// The path, URI-encoded already (see [`encode_path`]), exactly as sent.
    pub path: &'a str,
    /// The query's names and values, not encoded.
    pub query: &'a [(&'a str, &'a str)],
    /// Headers to sign besides those [`sign`] adds (`host`, `x-amz-*`): names in any case.
    pub headers: &'a [(&'a str, &'a str)],
    /// The hex SHA-256 of the body ([`EMPTY_SHA256`] without one).
    pub payload_sha256: &'a str,
}

/// The headers to add to `request` for S3 in `region` to accept it at `time`:
/// `x-amz-date`, `x-amz-content-sha256`, `x-amz-security-token` when there is a session
/// token, and `authorization`, in that order. The request must also send `host` and
/// `request.headers` as given.
pub fn sign(
    request: &Request,
    credentials: &Credentials,
    region: &str,
    time: SystemTime,
) -> Vec<(&'static str, String)> {
    let amz_date = amz_date(time);
    let mut added = vec![
        ("x-amz-date", amz_date.clone()),
        ("x-amz-content-sha256", request.payload_sha256.to_owned()),
    ];
    if let Some(token) = credentials.session_token {
        added.push(("x-amz-security-token", token.to_owned()));
    }
    let mut headers: Vec<(String, String)> = [("host", request.host)]
        .into_iter()
        .chain(request.headers.iter().copied())
        .chain(added.iter().map(|(name, value)| (*name, value.as_str())))
        .map(|(name, value)| (name.to_ascii_lowercase(), normalize_spaces(value)))
        .collect();
    headers.sort();
    let signed_headers = headers
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let mut canonical = format!(
        "{}\n{}\n{}\n",
        request.method,
        request.path,
        canonical_query(request.query)
    );
    for (name, value) in &headers {
        let _ = writeln!(canonical, "{name}:{value}");
    }
    let _ = write!(canonical, "\n{signed_headers}\n{}", request.payload_sha256);

    let day = &amz_date[..8];
    let scope = format!("{day}/{region}/s3/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let key = [day, region, "s3", "aws4_request"].iter().fold(
        hmac::Key::new(
            hmac::HMAC_SHA256,
            format!("AWS4{}", credentials.secret_access_key).as_bytes(),
        ),
        |key, part| {
            hmac::Key::new(
                hmac::HMAC_SHA256,
                hmac::sign(&key, part.as_bytes()).as_ref(),
            )
        },
    );
    let signature = hex::encode(hmac::sign(&key, string_to_sign.as_bytes()));
    added.push((
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope},SignedHeaders={signed_headers},\
             Signature={signature}",
            credentials.access_key_id
        ),
    ));
    added
}

/// `time` in UTC as `YYYYMMDDTHHMMSSZ`.
pub fn amz_date(time: SystemTime) -> String {
    // RFC 3339 with whole seconds, `2013-05-24T00:00:00Z`, without its separators.
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .replace(['-', ':'], "")
}

/// `path` with each segment URI-encoded the way S3 signs it, the slashes kept.
pub fn encode_path(path: &str) -> String {
    path.split('/')
        .map(uri_encode)
        .collect::<Vec<_>>()
        .join("/")
}

/// Every byte but the unreserved `A-Z a-z 0-9 - . _ ~` as `%XX` (upper-case hex).
fn uri_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(byte as char);
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

/// The query's names and values encoded, sorted by name then value.
fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(name, value)| (uri_encode(name), uri_encode(value)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A header value trimmed, its runs of spaces made one.
fn normalize_spaces(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    //! AWS's worked examples for S3 ("Signature Calculations for the Authorization Header:
    //! Transferring Payload in a Single Chunk"), all signed by the same example credentials
    //! on 24 May 2013 for examplebucket in us-east-1.

    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    const HOST: &str = "examplebucket.s3.amazonaws.com";
    const EXAMPLE: Credentials = Credentials {
        access_key_id: "AKIAIOSFODNN7EXAMPLE",
        secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        session_token: None,
    };

    /// 2013-05-24T00:00:00Z.
    fn may_24() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_369_353_600)
    }

    fn authorization(request: &Request, credentials: &Credentials) -> String {
        let headers = sign(request, credentials, "us-east-1", may_24());
        let (name, value) = headers.last().expect("headers are added");
        assert_eq!(*name, "authorization");
        value.clone()
    }

    fn signature(authorization: &str) -> &str {
        authorization
            .rsplit_once("Signature=")
            .expect("the header ends with the signature")
            .1
    }

    #[test]
    fn the_date_is_formatted_as_aws_wants() {
        assert_eq!(amz_date(may_24()), "20130524T000000Z");
        assert_eq!(
            amz_date(may_24() + Duration::from_secs(86_399)),
            "20130524T235959Z"
        );
    }

    #[test]
    fn the_get_object_example() {
        let request = Request {
            method: "GET",
            host: HOST,
            path: "/test.txt",
            query: &[],
            headers: &[("Range", "bytes=0-9")],
            payload_sha256: EMPTY_SHA256,
        };
        let headers = sign(&request, &EXAMPLE, "us-east-1", may_24());
        let names: Vec<&str> = headers.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            ["x-amz-date", "x-amz-content-sha256", "authorization"]
        );
        assert_eq!(headers[0].1, "20130524T000000Z");
        assert_eq!(headers[1].1, EMPTY_SHA256);
        assert_eq!(
            headers[2].1,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn the_put_object_example() {
        let body = "Welcome to Amazon S3.";
        let payload = hex::encode(Sha256::digest(body.as_bytes()));
        assert_eq!(
            payload,
            "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
        );
        let path = encode_path("/test$file.text");
        assert_eq!(path, "/test%24file.text");
        let request = Request {
            method: "PUT",
            host: HOST,
            path: &path,
            query: &[],
            headers: &[
                ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ],
            payload_sha256: &payload,
        };
        let authorization = authorization(&request, &EXAMPLE);
        assert!(
            authorization.contains(
                "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,"
            ),
            "{authorization}"
        );
        assert_eq!(
            signature(&authorization),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        );
    }

    #[test]
    fn the_list_objects_and_lifecycle_examples() {
        // The query unsorted and with a value-less parameter: both are canonicalized.
        for (query, expected) in [
            (
                &[("prefix", "J"), ("max-keys", "2")][..],
                "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
            ),
            (
                &[("lifecycle", "")][..],
                "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
            ),
        ] {
            let request = Request {
                method: "GET",
                host: HOST,
                path: "/",
                query,
                headers: &[],
                payload_sha256: EMPTY_SHA256,
            };
            assert_eq!(signature(&authorization(&request, &EXAMPLE)), expected);
        }
    }

    #[test]
    fn a_session_token_is_sent_and_signed() {
        let request = Request {
            method: "GET",
            host: HOST,
            path: "/test.txt",
            query: &[],
            headers: &[],
            payload_sha256: EMPTY_SHA256,
        };
        let with_token = Credentials {
            session_token: Some("a-session-token"),
            ..EXAMPLE
        };
        let headers = sign(&request, &with_token, "us-east-1", may_24());
        assert!(headers.contains(&("x-amz-security-token", "a-session-token".into())));
        let with = authorization(&request, &with_token);
        assert!(
            with.contains(
                "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,"
            ),
            "{with}"
        );
        assert_ne!(
            signature(&with),
            signature(&authorization(&request, &EXAMPLE)),
            "the token changes the signature"
        );
    }

    #[test]
    fn paths_are_encoded_segment_by_segment_once() {
        assert_eq!(encode_path("/b/ab/0f/3"), "/b/ab/0f/3");
        assert_eq!(encode_path("/b/a b+c%/~x_y.z-"), "/b/a%20b%2Bc%25/~x_y.z-");
        assert_eq!(encode_path("/b/é"), "/b/%C3%A9");
    }
}
