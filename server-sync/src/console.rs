//! The admin console at `/admin`: one page, one script and one style sheet, built into the
//! binary, that an administrator's browser runs against the admin API (`admin_api.rs`).
//!
//! The page holds no data and needs no sign-in to fetch: the script asks for a bearer token
//! (an administrator's device token, or an identity provider's access token), keeps it in the
//! tab's `sessionStorage`, and sends it with every call to `/v1/admin/...`, which decides what
//! the caller may see. There is no build step: the script is a plain ES module, and pages are
//! chosen by the URL's fragment (`/admin#/users`). The answers forbid inline scripts and
//! styles, framing, referrers and caching, so that data shown in the page cannot run as code.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// Scripts, styles and API calls from the server itself only; nothing inline, no plugins, no
/// forms posted anywhere, never inside a frame.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The console's routes (which need no state).
pub fn routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new()
        .route(
            "/admin",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route("/admin/", get(|| async { Redirect::permanent("/admin") }))
        .route(
            "/admin/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/admin/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt as _;

    use super::*;

    async fn get(path: &str) -> Response {
        let request = Request::get(path).body(Body::empty()).unwrap();
        routes::<()>().oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn every_asset_is_served_with_strict_headers() {
        for (path, content_type) in [
            ("/admin", "text/html"),
            ("/admin/console.js", "text/javascript"),
            ("/admin/console.css", "text/css"),
        ] {
            let response = get(path).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let headers = response.headers();
            let header = |name| headers[name].to_str().unwrap();
            assert!(header("content-type").starts_with(content_type), "{path}");
            assert!(header("content-security-policy").contains("script-src 'self';"));
            assert!(!header("content-security-policy").contains("unsafe"));
            assert_eq!(header("x-frame-options"), "DENY");
            assert_eq!(header("referrer-policy"), "no-referrer");
            assert_eq!(header("cache-control"), "no-store");
        }
        assert_eq!(
            get("/admin/").await.status(),
            StatusCode::PERMANENT_REDIRECT
        );
        assert_eq!(get("/admin/nothing").await.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_and_the_script_no_inner_html() {
        assert!(!PAGE.contains("<script>") && !PAGE.contains("style="));
        assert!(PAGE.contains(r#"<script type="module" src="/admin/console.js">"#));
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("insertAdjacentHTML"));
    }
}
