//! What the public port reads off any request, the WebSocket upgrade and `/mcp` alike: whether
//! the `Host` it names is one the node may be reached under (DNS rebinding), whether a browser
//! page's `Origin` may use the node, and the bearer token of `Authorization`.

use std::net::IpAddr;

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

/// The names a node on a loopback address is reached under by default (`--allowed-host`).
pub(super) const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// The names the node may be reached under (`--allowed-host`; `None`: any), from the settings
/// and the address it listens on: by default only the loopback names on a loopback address,
/// where a page whose DNS name was rebound to 127.0.0.1 would otherwise reach the node.
pub(super) fn allowed_hosts(listed: &[String], listen: Option<IpAddr>) -> Option<Vec<String>> {
    if listed.iter().any(|h| h == "*") {
        return None;
    }
    if !listed.is_empty() {
        return Some(listed.to_vec());
    }
    listen
        .is_some_and(|ip| ip.is_loopback())
        .then(|| LOOPBACK_HOSTS.iter().map(|h| (*h).to_owned()).collect())
}

/// Whether the request's `Host` (without its port) is one of `allowed` (exactly, or by a `*`
/// pattern): `None` allows any. A request without a readable `Host` is refused when a list
/// applies.
pub(super) fn host_allowed(allowed: Option<&[String]>, headers: &HeaderMap) -> bool {
    let Some(allowed) = allowed else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let host = host.trim().to_ascii_lowercase();
    let name = match host.strip_prefix('[') {
        // `[::1]:8080`: the bracketed address.
        Some(rest) => match rest.split_once(']') {
            Some((ip, _)) => format!("[{ip}]"),
            None => return false,
        },
        None => host.split(':').next().unwrap_or_default().to_owned(),
    };
    allowed.iter().any(|a| glob(a, &name))
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

    #[test]
    fn hosts() {
        let h = |host: Option<&str>| {
            let mut b = Request::builder().uri("/mcp");
            if let Some(host) = host {
                b = b.header(header::HOST, host);
            }
            b.body(()).unwrap().headers().clone()
        };
        let loopback = allowed_hosts(&[], Some(IpAddr::from([127, 0, 0, 1])));
        let loopback = loopback.as_deref();
        for ok in [
            "localhost",
            "127.0.0.1:8080",
            "LOCALHOST:1",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(host_allowed(loopback, &h(Some(ok))), "{ok}");
        }
        for refused in [
            "evil.example.com",
            "evil.example.com:8080",
            "localhost.evil",
            "[::2]",
        ] {
            assert!(!host_allowed(loopback, &h(Some(refused))), "{refused}");
        }
        assert!(!host_allowed(loopback, &h(None)));
        // Another address, and no list: any name.
        assert_eq!(allowed_hosts(&[], Some(IpAddr::from([0, 0, 0, 0]))), None);
        assert!(host_allowed(None, &h(Some("evil.example.com"))));
        assert!(host_allowed(None, &h(None)));
        // A list replaces the default; `*` allows any.
        let listed = allowed_hosts(
            &["rt.example.com".into(), "*.example.org".into()],
            Some(IpAddr::from([127, 0, 0, 1])),
        );
        let listed = listed.as_deref();
        assert!(host_allowed(listed, &h(Some("rt.example.com:443"))));
        assert!(host_allowed(listed, &h(Some("a.example.org"))));
        assert!(!host_allowed(listed, &h(Some("localhost"))));
        assert!(!host_allowed(listed, &h(Some("example.org.evil.com"))));
        assert_eq!(
            allowed_hosts(&["*".into()], Some(IpAddr::from([127, 0, 0, 1]))),
            None
        );
    }
}
