//! What the public port reads off any request, the WebSocket upgrade and `/mcp` alike: whether
//! a browser page's `Origin` may use the node, and the bearer token of `Authorization`.

use hyper::header::{self, HeaderMap};
use switchboard_core::pattern::glob;

/// Whether a browser page of the request's `Origin` may open a socket: no `Origin` (not a
/// browser), the node's own origin (the `Host` the request names), or one `allowed` lists
/// (exactly, or by a `*` pattern).
pub(super) fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim().to_ascii_lowercase();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    // The page's host and port against the Host the request names, each without the scheme's
    // default port (`https://a.example` is `a.example:443`).
    let own = match (origin.split_once("://"), host.as_deref()) {
        (Some((scheme, page)), Some(host)) => {
            let bare = |h: &str| -> String {
                let default = match scheme {
                    "http" => ":80",
                    "https" => ":443",
                    _ => return h.to_owned(),
                };
                h.strip_suffix(default).unwrap_or(h).to_owned()
            };
            bare(page) == bare(host)
        }
        _ => false,
    };
    own || allowed.iter().any(|a| a == "*" || glob(a, &origin))
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case), if any.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use hyper::Request;

    use super::*;

    #[test]
    fn origins() {
        let h = |origin: Option<&str>, host: &str| {
            let mut b = Request::builder().uri("/ws").header(header::HOST, host);
            if let Some(o) = origin {
                b = b.header(header::ORIGIN, o);
            }
            b.body(()).unwrap().headers().clone()
        };
        let none: Vec<String> = vec![];
        let listed = vec![
            "https://app.example.com".to_owned(),
            "https://*.example.org".to_owned(),
        ];
        // Not a browser, or the node's own page.
        assert!(origin_allowed(&none, &h(None, "gw:8080")));
        assert!(origin_allowed(&none, &h(Some("http://gw:8080"), "gw:8080")));
        assert!(origin_allowed(
            &none,
            &h(Some("HTTPS://GW:8080"), "gw:8080")
        ));
        assert!(!origin_allowed(
            &none,
            &h(Some("https://evil.com"), "gw:8080")
        ));
        assert!(!origin_allowed(
            &none,
            &h(Some("http://gw:8081"), "gw:8080")
        ));
        assert!(!origin_allowed(&none, &h(Some("null"), "gw:8080")));
        // Default ports are the same origin, written or not.
        let own = |origin: &str, host: &str| origin_allowed(&[], &h(Some(origin), host));
        assert!(own("https://gw", "gw:443") && own("https://gw:443", "gw"));
        assert!(own("http://gw", "gw:80") && !own("https://gw:80", "gw"));
        assert!(!own("https://gw.evil", "gw") && !own("https://gw", "gw.evil"));
        assert!(origin_allowed(
            &listed,
            &h(Some("https://app.example.com"), "gw")
        ));
        assert!(origin_allowed(
            &listed,
            &h(Some("https://a.example.org"), "gw")
        ));
        assert!(!origin_allowed(
            &listed,
            &h(Some("https://example.org.evil.com"), "gw")
        ));
        assert!(!origin_allowed(
            &listed,
            &h(Some("https://app.example.com.evil.com"), "gw")
        ));
        assert!(origin_allowed(
            &["*".into()],
            &h(Some("https://evil.com"), "gw")
        ));
    }
}
