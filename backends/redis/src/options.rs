//! How to reach Redis, shared by `gateway`, `worker` and `publish`: the [`RedisOptions`] flags,
//! and what they are turned into before any connection opens: a [`Target`], either one address
//! (`redis://`, `rediss://`), a set of Sentinels asked for the current primary
//! (`redis+sentinel://`, `rediss+sentinel://`), or the seed nodes of a Redis Cluster
//! (`--redis-cluster`). Secrets (the URL's password, `--redis-password`,
//! key files) never reach `Debug`, `--help` or a log line: they are held in [`Secret`] and
//! [`RedisUrl`], whose `Debug` redacts them.
//!
//! TLS goes through rustls with the ring provider. Without `--redis-ca-file` the system's roots
//! (`/etc/ssl/certs`, via rustls-native-certs) are trusted; with it, only the CAs in that file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::{
    ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, ProtocolVersion, RedisConnectionInfo,
    TlsCertificates,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use switchboard_core::settings;

use crate::keys;
use crate::sentinel::SentinelTarget;

/// How often the Sentinels are asked for the primary while all is well (`--redis-sentinel-poll`).
pub(crate) const DEFAULT_SENTINEL_POLL: &str = "1s";

/// A secret string: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// A Redis URL that may hold a password: `Debug` and [`RedisUrl::redacted`] show it as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn new(s: impl Into<String>) -> Self {
        RedisUrl(s.into())
    }

    /// The URL itself, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with the password of its user part (`user:password@`) replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({:?})", self.redacted())
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::str::FromStr for RedisUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(RedisUrl(s.to_owned()))
    }
}

/// `scheme://user:pw@rest` -> `scheme://user:***@rest`, and a `pass=` / `password=` query
/// parameter's value -> `***`; anything else unchanged.
fn redact_url(url: &str) -> String {
    let url = redact_userinfo(url);
    let Some((base, query)) = url.split_once('?') else {
        return url;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((key, _))
                if key.eq_ignore_ascii_case("pass") || key.eq_ignore_ascii_case("password") =>
            {
                format!("{key}=***")
            }
            _ => param.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// The user part of [`redact_url`].
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let user = &rest[..at];
    match user.split_once(':') {
        Some((name, _)) => format!("{scheme}://{name}:***{}", &rest[at..]),
        // `redis://password@host` is read by some clients as a password alone.
        None => format!("{scheme}://***{}", &rest[at..]),
    }
}

/// How to reach Redis: settings shared by `gateway`, `worker` and `publish`.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Redis")]
pub struct RedisOptions {
    /// Redis URL: redis://[user:password@]host:port[/db], rediss://... for TLS, or
    /// redis+sentinel://[user:password@]sentinel1:26379,sentinel2:26379/PRIMARY-NAME[/db]
    /// (rediss+sentinel:// for TLS to the Sentinels and the primary). This or --redis-cluster.
    #[arg(
        long = "redis",
        env = "SWITCHBOARD_REDIS",
        value_name = "URL",
        hide_env_values = true,
        required_unless_present = "cluster",
        conflicts_with = "cluster"
    )]
    pub url: Option<RedisUrl>,
    /// Redis Cluster seed nodes, comma-separated: redis://[user:password@]host:port (rediss://
    /// for TLS). The rest of the cluster is found from them. Needs Redis 7+ (sharded pub/sub).
    #[arg(
        long = "redis-cluster",
        env = "SWITCHBOARD_REDIS_CLUSTER",
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub cluster: Vec<RedisUrl>,
    /// Prefix of every Redis key and channel.
    #[arg(long = "redis-prefix", env = "SWITCHBOARD_REDIS_PREFIX", default_value = keys::DEFAULT_PREFIX)]
    pub prefix: String,
    /// Bound on one Redis command.
    #[arg(long = "redis-timeout", env = "SWITCHBOARD_REDIS_TIMEOUT", default_value = "2s", value_name = "DURATION", value_parser = settings::duration)]
    pub op_timeout: Duration,
    /// Bound on opening one Redis connection.
    #[arg(long = "redis-connect-timeout", env = "SWITCHBOARD_REDIS_CONNECT_TIMEOUT", default_value = "2s", value_name = "DURATION", value_parser = settings::duration)]
    pub connect_timeout: Duration,
    /// ACL user name; overrides the URL's.
    #[arg(
        long = "redis-username",
        env = "SWITCHBOARD_REDIS_USERNAME",
        value_name = "NAME"
    )]
    pub username: Option<String>,
    /// ACL password; overrides the URL's. Prefer --redis-password-file.
    #[arg(
        long = "redis-password",
        env = "SWITCHBOARD_REDIS_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true,
        conflicts_with = "password_file"
    )]
    pub password: Option<Secret>,
    /// A file holding the ACL password (a mounted Secret); a trailing newline is ignored.
    #[arg(
        long = "redis-password-file",
        env = "SWITCHBOARD_REDIS_PASSWORD_FILE",
        value_name = "PATH"
    )]
    pub password_file: Option<PathBuf>,
    /// PEM file of the CAs to trust for rediss:// INSTEAD of the system's roots (a private CA).
    #[arg(
        long = "redis-ca-file",
        env = "SWITCHBOARD_REDIS_CA_FILE",
        value_name = "PATH"
    )]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS; needs --redis-client-key.
    #[arg(
        long = "redis-client-cert",
        env = "SWITCHBOARD_REDIS_CLIENT_CERT",
        value_name = "PATH",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --redis-client-cert.
    #[arg(
        long = "redis-client-key",
        env = "SWITCHBOARD_REDIS_CLIENT_KEY",
        value_name = "PATH",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// ACL user name on the Sentinels (redis+sentinel:// only; default: none).
    #[arg(
        long = "redis-sentinel-username",
        env = "SWITCHBOARD_REDIS_SENTINEL_USERNAME",
        value_name = "NAME"
    )]
    pub sentinel_username: Option<String>,
    /// Password on the Sentinels (redis+sentinel:// only; default: none).
    #[arg(
        long = "redis-sentinel-password",
        env = "SWITCHBOARD_REDIS_SENTINEL_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub sentinel_password: Option<Secret>,
    /// How often the Sentinels are asked which node is the primary (redis+sentinel:// only);
    /// a failing command asks at once.
    #[arg(long = "redis-sentinel-poll", env = "SWITCHBOARD_REDIS_SENTINEL_POLL", default_value = DEFAULT_SENTINEL_POLL, value_name = "DURATION", value_parser = settings::duration)]
    pub sentinel_poll: Duration,
    /// Dedicated connections for blocking reads on Redis Cluster (--redis-cluster only), at
    /// most: a worker holds one per slot its tools' queues sit on, a gateway whose clients
    /// offer tools one per such slot. Reads beyond it wait up to --redis-timeout for one.
    #[arg(long = "redis-cluster-blocking-connections", env = "SWITCHBOARD_REDIS_CLUSTER_BLOCKING_CONNECTIONS", default_value_t = DEFAULT_CLUSTER_BLOCKING_CONNECTIONS, value_name = "N")]
    pub cluster_blocking_connections: usize,
}

/// Default of `--redis-cluster-blocking-connections`.
const DEFAULT_CLUSTER_BLOCKING_CONNECTIONS: usize = 64;

impl RedisOptions {
    /// Options for `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        settings::from_args_without_env(&["--redis", &url]).expect("defaults are valid")
    }

    /// Options for a Redis Cluster reached through `seeds` (`redis://host:port`), every other
    /// setting at its default.
    pub fn new_cluster(seeds: Vec<String>) -> Self {
        let seeds = seeds.join(",");
        settings::from_args_without_env(&["--redis-cluster", &seeds]).expect("defaults are valid")
    }

    /// Whether these options name a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        !self.cluster.is_empty()
    }

    /// Checks every setting that needs no file; the error names the flag to fix.
    pub fn validate(&self) -> Result<(), String> {
        // A `{` or `}` in the prefix would break the hash tags.
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err("--redis-prefix must be non-empty and without { }".into());
        }
        if self.op_timeout.is_zero() {
            return Err("--redis-timeout must be greater than zero".into());
        }
        if self.connect_timeout.is_zero() {
            return Err("--redis-connect-timeout must be greater than zero".into());
        }
        if self.sentinel_poll.is_zero() {
            return Err("--redis-sentinel-poll must be greater than zero".into());
        }
        if self.cluster_blocking_connections == 0 {
            return Err("--redis-cluster-blocking-connections must be greater than zero".into());
        }
        Ok(())
    }

    /// Reads the files and parses the URL: what to connect to. Errors name the flag to fix;
    /// callers exit 64 on them.
    pub fn target(&self) -> Result<Target, String> {
        self.validate()?;
        // Installed once per process; a provider already installed (by another part) is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let password = self.password()?;
        let certs = self.certificates()?;
        if self.is_cluster() {
            return self.cluster_target(password, certs).map(Target::Cluster);
        }
        let Some(url) = self.url.as_ref().map(RedisUrl::expose) else {
            return Err("one of --redis or --redis-cluster is required".into());
        };
        if let Some(rest) = url
            .strip_prefix("redis+sentinel://")
            .map(|r| (false, r))
            .or_else(|| url.strip_prefix("rediss+sentinel://").map(|r| (true, r)))
        {
            let (tls, rest) = rest;
            if certs.is_some() && !tls {
                return Err(
                    "--redis-ca-file / --redis-client-cert need a TLS URL (rediss+sentinel://)"
                        .into(),
                );
            }
            let parsed = crate::sentinel::parse_url(rest)
                .map_err(|e| format!("--redis (SWITCHBOARD_REDIS): {e}"))?;
            let mut node = RedisConnectionInfo::default()
                .set_db(parsed.db)
                .set_protocol(ProtocolVersion::RESP3);
            if let Some(u) = self.username.as_ref().or(parsed.username.as_ref()) {
                node = node.set_username(u);
            }
            if let Some(p) = password.as_ref().or(parsed.password.as_ref()) {
                node = node.set_password(p.expose());
            }
            let mut sentinel = RedisConnectionInfo::default();
            if let Some(u) = &self.sentinel_username {
                sentinel = sentinel.set_username(u);
            }
            if let Some(p) = &self.sentinel_password {
                sentinel = sentinel.set_password(p.expose());
            }
            return Ok(Target::Sentinel(SentinelTarget {
                sentinels: parsed.sentinels,
                master: parsed.master,
                tls,
                certs,
                node,
                sentinel,
                connect_timeout: self.connect_timeout,
                op_timeout: self.op_timeout,
                poll: self.sentinel_poll,
            }));
        }

        let info = url
            .into_connection_info()
            .map_err(|e| format!("--redis (SWITCHBOARD_REDIS): bad Redis URL: {e}"))?;
        let mut redis_settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        if let Some(u) = &self.username {
            redis_settings = redis_settings.set_username(u);
        }
        if let Some(p) = &password {
            redis_settings = redis_settings.set_password(p.expose());
        }
        let tls = match info.addr() {
            ConnectionAddr::TcpTls { insecure: true, .. } => {
                return Err(
                    "--redis (SWITCHBOARD_REDIS): rediss://...#insecure (no certificate \
                            check) is refused; trust the server's CA with --redis-ca-file"
                        .into(),
                );
            }
            ConnectionAddr::TcpTls { .. } => true,
            _ => false,
        };
        let info = info
            .set_redis_settings(redis_settings)
            .set_tcp_settings(crate::tcp_settings());
        let client = match certs {
            Some(certs) if tls => redis::Client::build_with_tls(info, certs)
                .map_err(|e| format!("--redis-ca-file / --redis-client-cert: {e}"))?,
            Some(_) => {
                return Err(
                    "--redis-ca-file / --redis-client-cert need a TLS URL (rediss://)".into(),
                );
            }
            None => redis::Client::open(info)
                .map_err(|e| format!("--redis (SWITCHBOARD_REDIS): bad Redis URL: {e}"))?,
        };
        Ok(Target::Direct(client))
    }

    /// The seeds of `--redis-cluster`, each checked, with the ACL user and TLS settings.
    fn cluster_target(
        &self,
        password: Option<Secret>,
        certs: Option<TlsCertificates>,
    ) -> Result<ClusterTarget, String> {
        const FLAG: &str = "--redis-cluster (SWITCHBOARD_REDIS_CLUSTER)";
        let mut seeds = Vec::with_capacity(self.cluster.len());
        let mut tls = None;
        for url in &self.cluster {
            let info = url
                .expose()
                .into_connection_info()
                .map_err(|e| format!("{FLAG}: bad Redis URL {url}: {e}"))?;
            let seed_tls = match info.addr() {
                ConnectionAddr::Tcp(..) => false,
                ConnectionAddr::TcpTls { insecure: true, .. } => {
                    return Err(format!(
                        "{FLAG}: rediss://...#insecure (no certificate check) is refused; \
                         trust the server's CA with --redis-ca-file"
                    ));
                }
                ConnectionAddr::TcpTls { .. } => true,
                _ => return Err(format!("{FLAG}: {url}: a cluster node is a host and port")),
            };
            if tls.is_some_and(|t| t != seed_tls) {
                return Err(format!("{FLAG}: mixes redis:// and rediss:// seeds"));
            }
            tls = Some(seed_tls);
            if info.redis_settings().db() != 0 {
                return Err(format!("{FLAG}: {url}: Redis Cluster has only database 0"));
            }
            let mut settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            if let Some(u) = &self.username {
                settings = settings.set_username(u);
            }
            if let Some(p) = &password {
                settings = settings.set_password(p.expose());
            }
            seeds.push(
                info.set_redis_settings(settings)
                    .set_tcp_settings(crate::tcp_settings()),
            );
        }
        let tls = tls.unwrap_or(false);
        if certs.is_some() && !tls {
            return Err("--redis-ca-file / --redis-client-cert need TLS seeds (rediss://)".into());
        }
        Ok(ClusterTarget {
            seeds,
            certs,
            connect_timeout: self.connect_timeout,
            op_timeout: self.op_timeout,
            blocking_connections: self.cluster_blocking_connections,
        })
    }

    fn password(&self) -> Result<Option<Secret>, String> {
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "--redis-password-file (SWITCHBOARD_REDIS_PASSWORD_FILE): cannot read {}: {e}",
                path.display()
            )
        })?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.is_empty() {
            return Err(format!(
                "--redis-password-file (SWITCHBOARD_REDIS_PASSWORD_FILE): {} is empty",
                path.display()
            ));
        }
        Ok(Some(Secret::new(text)))
    }

    /// The CA and client certificate files, read and checked, if any is set.
    fn certificates(&self) -> Result<Option<TlsCertificates>, String> {
        let root_cert = match &self.ca_file {
            Some(path) => {
                let pem = read("--redis-ca-file (SWITCHBOARD_REDIS_CA_FILE)", path)?;
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        format!(
                            "--redis-ca-file (SWITCHBOARD_REDIS_CA_FILE): {}: {e}",
                            path.display()
                        )
                    })?;
                if certs.is_empty() {
                    return Err(format!(
                        "--redis-ca-file (SWITCHBOARD_REDIS_CA_FILE): {} holds no PEM certificate",
                        path.display()
                    ));
                }
                Some(pem)
            }
            None => None,
        };
        let client_tls = match (&self.client_cert, &self.client_key) {
            (Some(cert_path), Some(key_path)) => {
                let flag = "--redis-client-cert (SWITCHBOARD_REDIS_CLIENT_CERT)";
                let cert = read(flag, cert_path)?;
                let n = CertificateDer::pem_slice_iter(&cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("{flag}: {}: {e}", cert_path.display()))?
                    .len();
                if n == 0 {
                    return Err(format!(
                        "{flag}: {} holds no PEM certificate",
                        cert_path.display()
                    ));
                }
                let flag = "--redis-client-key (SWITCHBOARD_REDIS_CLIENT_KEY)";
                let key = read(flag, key_path)?;
                // The parse error names no byte of the key.
                PrivateKeyDer::from_pem_slice(&key).map_err(|_| {
                    format!("{flag}: {} holds no PEM private key", key_path.display())
                })?;
                Some(ClientTlsConfig {
                    client_cert: cert,
                    client_key: key,
                })
            }
            (None, None) => None,
            _ => {
                return Err("--redis-client-cert and --redis-client-key go together".into());
            }
        };
        if root_cert.is_none() && client_tls.is_none() {
            return Ok(None);
        }
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag}: cannot read {}: {e}", path.display()))
}

/// What to connect to, built by [`RedisOptions::target`].
#[derive(Debug, Clone)]
pub enum Target {
    /// One address (`redis://`, `rediss://`, `redis+unix://`).
    Direct(redis::Client),
    /// The primary named by Sentinels, asked again on failures and every poll period.
    Sentinel(SentinelTarget),
    /// A Redis Cluster, found from its seed nodes.
    Cluster(ClusterTarget),
}

/// A Redis Cluster to connect to: its seed nodes (RESP3, the ACL user, TCP_NODELAY set on
/// each) and TLS files.
#[derive(Clone)]
pub struct ClusterTarget {
    seeds: Vec<redis::ConnectionInfo>,
    certs: Option<TlsCertificates>,
    pub(crate) connect_timeout: Duration,
    pub(crate) op_timeout: Duration,
    pub(crate) blocking_connections: usize,
}

impl std::fmt::Debug for ClusterTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seeds: Vec<String> = self.seeds.iter().map(|s| s.addr().to_string()).collect();
        f.debug_struct("ClusterTarget")
            .field("seeds", &seeds)
            .finish_non_exhaustive()
    }
}

impl ClusterTarget {
    /// A cluster client: connections made from it find every node from the seeds, follow
    /// `MOVED` and `ASK`, and refresh the slot map when a primary fails over.
    pub fn client(&self) -> Result<redis::cluster::ClusterClient, String> {
        let mut b = redis::cluster::ClusterClientBuilder::new(self.seeds.clone())
            .use_protocol(ProtocolVersion::RESP3)
            .tcp_settings(crate::tcp_settings())
            .connection_timeout(self.connect_timeout);
        if let Some(certs) = &self.certs {
            b = b.certs(certs.clone());
        }
        b.build()
            .map_err(|e| format!("--redis-cluster (SWITCHBOARD_REDIS_CLUSTER): {e}"))
    }
}

impl Target {
    /// A client for the current primary (for one-shot commands such as `switchboard publish`).
    pub async fn client(&self) -> Result<redis::Client, String> {
        match self {
            Target::Direct(c) => Ok(c.clone()),
            Target::Cluster(_) => Err("a Redis Cluster has no single primary".into()),
            Target::Sentinel(s) => {
                let (host, port) = s.resolve().await?;
                s.client_for(&host, port).map_err(|e| e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://u:p%40ss@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("rediss://:pw@h"), "rediss://:***@h");
        assert_eq!(redact_url("redis://pw@h"), "redis://***@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            redact_url("redis+sentinel://u:pw@a:1,b:2/m"),
            "redis+sentinel://u:***@a:1,b:2/m"
        );
        assert_eq!(
            redact_url("redis+unix:///tmp/r.sock?db=1&pass=hunter2"),
            "redis+unix:///tmp/r.sock?db=1&pass=***"
        );
        let opts = RedisOptions::new("redis://u:hunter2@h:1");
        assert!(!format!("{opts:?}").contains("hunter2"));
    }

    #[test]
    fn insecure_and_bad_files_are_refused() {
        let err = RedisOptions::new("rediss://h:1/#insecure")
            .target()
            .unwrap_err();
        assert!(err.contains("insecure"), "{err}");
        let mut opts = RedisOptions::new("rediss://h:1");
        opts.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(opts.target().unwrap_err().contains("--redis-ca-file"));
        opts.ca_file = Some("Cargo.toml".into());
        assert!(opts.target().unwrap_err().contains("no PEM certificate"));
        let mut opts = RedisOptions::new("redis://h:1");
        opts.password_file = Some("/nonexistent/pw".into());
        assert!(opts.target().unwrap_err().contains("--redis-password-file"));
    }

    #[test]
    fn cluster_seeds_are_checked() {
        let opts =
            RedisOptions::new_cluster(vec!["redis://a:7000".into(), "redis://b:7001".into()]);
        assert!(opts.is_cluster() && opts.url.is_none());
        let Ok(Target::Cluster(t)) = opts.target() else {
            panic!("a cluster target");
        };
        assert_eq!(
            format!("{t:?}"),
            r#"ClusterTarget { seeds: ["a:7000", "b:7001"], .. }"#
        );
        let mixed = RedisOptions::new_cluster(vec!["redis://a:1".into(), "rediss://b:2".into()]);
        assert!(mixed.target().unwrap_err().contains("mixes"));
        let db = RedisOptions::new_cluster(vec!["redis://a:1/2".into()]);
        assert!(db.target().unwrap_err().contains("database 0"));
        let insecure = RedisOptions::new_cluster(vec!["rediss://a:1/#insecure".into()]);
        assert!(insecure.target().unwrap_err().contains("insecure"));
        let mut plain_with_ca = RedisOptions::new_cluster(vec!["redis://a:1".into()]);
        plain_with_ca.ca_file = Some("Cargo.toml".into());
        assert!(plain_with_ca.target().is_err());
        // The password in a seed never reaches Debug.
        let secret = RedisOptions::new_cluster(vec!["redis://u:hunter2@a:1".into()]);
        assert!(!format!("{secret:?}").contains("hunter2"));
        // Exactly one of the two flags.
        let both: Result<RedisOptions, _> = settings::from_args_without_env(&[
            "--redis",
            "redis://a:1",
            "--redis-cluster",
            "redis://b:2",
        ]);
        assert!(both.is_err());
        let neither: Result<RedisOptions, _> = settings::from_args_without_env(&[]);
        assert!(neither.is_err());
    }
}
