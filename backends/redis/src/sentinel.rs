//! Redis Sentinel: `redis+sentinel://[user:password@]host1:26379,host2:26379/PRIMARY[/db]`
//! names Sentinels and the primary they watch; [`SentinelTarget::resolve`] asks them, one after
//! the other, `SENTINEL GET-MASTER-ADDR-BY-NAME` and [`SentinelTarget::client_for`] builds a
//! client for the answer. The user and password of the URL are those of the primary (the data
//! nodes); the Sentinels' own are `--redis-sentinel-username` / `--redis-sentinel-password`.
//! Who asks again when (every poll period and at once after a failed command) lives in
//! `links.rs`.

use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, Value};

/// What a `redis+sentinel://` URL says, after its scheme.
#[derive(Debug, PartialEq)]
pub(crate) struct SentinelUrl {
    pub(crate) sentinels: Vec<(String, u16)>,
    pub(crate) master: String,
    pub(crate) db: i64,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<crate::Secret>,
}

/// Sentinels listen on 26379 unless the URL says otherwise.
const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// Parses `[user:password@]host[:port],host[:port]/PRIMARY[/db]`; percent escapes in the user
/// and password are decoded. Errors never quote the password.
pub(crate) fn parse_url(rest: &str) -> Result<SentinelUrl, String> {
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    // The user part first (up to the last `@`): a password with a `/` left unescaped must not
    // be taken for a host or a path, which errors would quote.
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => {
            let (name, pw) = u.split_once(':').unwrap_or(("", u));
            let name = decode(name).ok_or("the user name has a bad % escape")?;
            let pw = decode(pw).ok_or("the password has a bad % escape")?;
            (
                Some(name).filter(|n| !n.is_empty()),
                Some(crate::Secret::new(pw)).filter(|p| !p.expose().is_empty()),
            )
        }
    };
    let mut sentinels = Vec::new();
    for h in hosts.split(',').filter(|h| !h.is_empty()) {
        let (host, port) = match h.rsplit_once(':') {
            // `[::1]:26379`, `host:26379`
            Some((host, port)) if !host.ends_with(':') => (
                host,
                port.parse()
                    .map_err(|_| format!("bad port in Sentinel address {h:?}"))?,
            ),
            _ => (h, DEFAULT_SENTINEL_PORT),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("empty host in Sentinel address {h:?}"));
        }
        sentinels.push((host.to_owned(), port));
    }
    if sentinels.is_empty() {
        return Err("no Sentinel address (redis+sentinel://host:26379,.../PRIMARY)".into());
    }
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let master = parts
        .next()
        .ok_or("no primary name (redis+sentinel://host:26379/PRIMARY)")?;
    let master = decode(master).ok_or("the primary name has a bad % escape")?;
    let db = match parts.next() {
        Some(db) => db
            .parse()
            .map_err(|_| format!("bad database number {db:?}"))?,
        None => 0,
    };
    if parts.next().is_some() {
        return Err("too many path parts: /PRIMARY[/db]".into());
    }
    Ok(SentinelUrl {
        sentinels,
        master,
        db,
        username,
        password,
    })
}

/// Percent-decoding of a URL part; `None` on a bad escape or bytes that are not UTF-8.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Sentinels and how to talk to them and to the primary they name.
#[derive(Clone)]
pub struct SentinelTarget {
    pub(crate) sentinels: Vec<(String, u16)>,
    pub(crate) master: String,
    /// TLS to the Sentinels and to the primary (`rediss+sentinel://`).
    pub(crate) tls: bool,
    pub(crate) certs: Option<redis::TlsCertificates>,
    /// User, password, database and protocol on the primary.
    pub(crate) node: RedisConnectionInfo,
    /// User and password on the Sentinels.
    pub(crate) sentinel: RedisConnectionInfo,
    pub(crate) connect_timeout: Duration,
    pub(crate) op_timeout: Duration,
    pub(crate) poll: Duration,
}

impl std::fmt::Debug for SentinelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelTarget")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl SentinelTarget {
    fn client(
        &self,
        host: &str,
        port: u16,
        redis: RedisConnectionInfo,
    ) -> redis::RedisResult<redis::Client> {
        let addr = if self.tls {
            ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_owned(), port)
        };
        let info: ConnectionInfo = "redis://127.0.0.1"
            .into_connection_info()?
            .set_addr(addr)
            .set_redis_settings(redis)
            .set_tcp_settings(crate::tcp_settings());
        match &self.certs {
            Some(certs) if self.tls => redis::Client::build_with_tls(info, certs.clone()),
            _ => redis::Client::open(info),
        }
    }

    /// A client for the data node at `host:port`.
    pub(crate) fn client_for(&self, host: &str, port: u16) -> redis::RedisResult<redis::Client> {
        self.client(host, port, self.node.clone())
    }

    /// Asks the Sentinels in turn for the primary's address; the first answer wins.
    pub(crate) async fn resolve(&self) -> Result<(String, u16), String> {
        self.resolve_with(&mut SentinelConns::default()).await
    }

    /// [`resolve`](Self::resolve) on connections kept from one question to the next (the
    /// watch task asks every poll period), the Sentinel that answered last asked first.
    pub(crate) async fn resolve_with(
        &self,
        conns: &mut SentinelConns,
    ) -> Result<(String, u16), String> {
        let mut errors = Vec::new();
        let n = self.sentinels.len();
        for k in 0..n {
            let i = (conns.preferred + k) % n;
            let (host, port) = &self.sentinels[i];
            match self.ask(i, host, *port, conns).await {
                Ok(addr) => {
                    conns.preferred = i;
                    return Ok(addr);
                }
                Err(e) => {
                    conns.open.remove(&i);
                    errors.push(format!("{host}:{port}: {e}"));
                }
            }
        }
        Err(format!(
            "no Sentinel named the primary {:?}: {}",
            self.master,
            errors.join("; ")
        ))
    }

    async fn ask(
        &self,
        i: usize,
        host: &str,
        port: u16,
        conns: &mut SentinelConns,
    ) -> Result<(String, u16), String> {
        let bound = self.connect_timeout + self.op_timeout;
        let mut conn = match conns.open.get(&i) {
            Some(c) => c.clone(),
            None => {
                let client = self
                    .client(host, port, self.sentinel.clone())
                    .map_err(|e| e.to_string())?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.op_timeout));
                let c = tokio::time::timeout(
                    bound,
                    client.get_multiplexed_async_connection_with_config(&config),
                )
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| e.to_string())?;
                conns.open.insert(i, c.clone());
                c
            }
        };
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("GET-MASTER-ADDR-BY-NAME").arg(&self.master);
        let fut = cmd.query_async::<Value>(&mut conn);
        let reply = tokio::time::timeout(bound, fut)
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        match reply {
            Value::Array(parts) if parts.len() == 2 => {
                let host = crate::text(&parts[0]).ok_or("bad reply")?;
                let port = crate::text(&parts[1])
                    .and_then(|p| p.parse().ok())
                    .ok_or("bad reply")?;
                Ok((host, port))
            }
            Value::Nil => Err("does not know this primary".into()),
            _ => Err("bad reply".into()),
        }
    }
}

/// Connections to the Sentinels, kept by the watch task between questions.
#[derive(Default)]
pub(crate) struct SentinelConns {
    open: std::collections::HashMap<usize, redis::aio::MultiplexedConnection>,
    /// The Sentinel that answered last.
    preferred: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = parse_url("u:p%40w@a:1,b,[::1]:3/mymaster/2").unwrap();
        assert_eq!(
            u.sentinels,
            vec![
                ("a".into(), 1),
                ("b".into(), DEFAULT_SENTINEL_PORT),
                ("::1".into(), 3)
            ]
        );
        assert_eq!(u.master, "mymaster");
        assert_eq!(u.db, 2);
        assert_eq!(u.username.as_deref(), Some("u"));
        assert_eq!(u.password.as_ref().map(|p| p.expose()), Some("p@w"));
        let u = parse_url("a:1/m").unwrap();
        assert_eq!((u.db, u.username, u.password), (0, None, None));
        assert!(parse_url("a:1").is_err());
        assert!(parse_url("/m").is_err());
        assert!(parse_url("a:x/m").is_err());
        let err = parse_url("u:secret%zz@a:1/m").unwrap_err();
        assert!(!err.contains("secret"));
        // An unescaped `/` in the password is still the password's, never quoted as a host.
        let u = parse_url("u:se/cret@a:1/m").unwrap();
        assert_eq!(u.password.as_ref().map(|p| p.expose()), Some("se/cret"));
        assert_eq!(u.sentinels, vec![("a".into(), 1)]);
    }
}
