//! The `switchboard` command as users type it: exit codes, env configuration, `token`,
//! `publish` and `dev`.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use switchboard_core::auth::{KeySettings, Verifier};
use switchboard_harness::{
    RedisServer, WsClient, eventually, free_port, http_get, switchboard_bin,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

async fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(switchboard_bin());
    cmd.args(args).env_remove("SWITCHBOARD_JWT_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("command timed out")
        .expect("spawn");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn gateway_without_auth_exits_64_naming_the_settings() {
    let (code, _, err) = run(&["gateway", "--redis", "redis://127.0.0.1:1"], &[]).await;
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("--jwt-secret") && err.contains("--allow-anonymous"),
        "{err}"
    );
}

#[tokio::test]
async fn invalid_settings_exit_64() {
    let (code, _, err) = run(&["gateway", "--allow-anonymous"], &[]).await;
    assert_eq!(code, 64, "missing --redis: {err}");
    assert!(err.contains("--redis"), "{err}");

    let (code, _, err) = run(
        &[
            "gateway",
            "--allow-anonymous",
            "--redis",
            "redis://127.0.0.1:1",
        ],
        &[("SWITCHBOARD_OUTBOUND_QUEUE", "0")],
    )
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("outbound-queue"), "{err}");

    let (code, _, err) = run(
        &["gateway", "--listen", "nowhere", "--allow-anonymous"],
        &[],
    )
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--listen"), "{err}");

    let (code, _, err) = run(
        &["gateway", "--allow-anonymous", "--redis", "not-a-url"],
        &[],
    )
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("SWITCHBOARD_REDIS"), "{err}");

    // Rules that could not be enforced as written are refused, naming the flag.
    for rule in ["user:{sub}.*=sub", "chat:*", "chat:*=write", "chat:*="] {
        let (code, _, err) = run(
            &[
                "gateway",
                "--allow-anonymous",
                "--redis",
                "redis://127.0.0.1:1",
                "--allow",
                rule,
            ],
            &[],
        )
        .await;
        assert_eq!(code, 64, "{rule}: {err}");
        assert!(err.contains("--allow"), "{rule}: {err}");
    }
    let (code, _, err) = run(
        &[
            "gateway",
            "--allow-anonymous",
            "--redis",
            "redis://127.0.0.1:1",
        ],
        &[("SWITCHBOARD_ALLOWED_ORIGINS", "app.example.com")],
    )
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--allowed-origin"), "{err}");
}

#[tokio::test]
async fn durations_take_units_and_renamed_variables_are_refused() {
    let redis = ["--allow-anonymous", "--redis", "redis://127.0.0.1:1"];
    // A bare number hides its unit: refused, naming the flag and how to write it.
    let args = [&["gateway"][..], &redis, &["--heartbeat", "25000"]].concat();
    let (code, _, err) = run(&args, &[]).await;
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("--heartbeat") && err.contains("250ms"),
        "{err}"
    );
    // Zero where a duration must be positive.
    let args = [&["gateway"][..], &redis, &["--session-ttl", "0s"]].concat();
    let (code, _, err) = run(&args, &[]).await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--session-ttl"), "{err}");
    // A variable from before durations took units would be ignored: it is refused instead.
    let args = [&["gateway"][..], &redis].concat();
    let (code, _, err) = run(&args, &[("SWITCHBOARD_HEARTBEAT_MS", "25000")]).await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("SWITCHBOARD_HEARTBEAT "), "{err}");
    // A worker variable from before they all started with SWITCHBOARD_WORKER_ is refused too.
    let (code, _, err) = run(
        &["worker", "--builtin", "--redis", "redis://127.0.0.1:1"],
        &[("SWITCHBOARD_CONCURRENCY", "4")],
    )
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("SWITCHBOARD_WORKER_CONCURRENCY"), "{err}");
    // The worker's durations from variables, with units, are read and checked together:
    // three heartbeats of 20 s do not fit in a 30 s visibility timeout.
    let (code, _, err) = run(
        &["worker", "--builtin", "--redis", "redis://127.0.0.1:1"],
        &[
            ("SWITCHBOARD_WORKER_HEARTBEAT", "20s"),
            ("SWITCHBOARD_WORKER_VISIBILITY_TIMEOUT", "30s"),
        ],
    )
    .await;
    assert_eq!(
        code, 64,
        "three heartbeats exceed the visibility timeout: {err}"
    );
    assert!(err.contains("--visibility-timeout"), "{err}");
}

#[tokio::test]
async fn token_mints_what_the_gateway_verifies() {
    let (code, out, err) = run(
        &["token", "--sub", "alice", "--ttl-secs", "60"],
        &[("SWITCHBOARD_JWT_SECRET", "sekrit")],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let claims = Verifier::hs256(b"sekrit")
        .verify(out.trim())
        .await
        .expect("valid token");
    assert_eq!(claims.sub, "alice");
    assert!(claims.exp.is_some());
    assert!(Verifier::hs256(b"other").verify(out.trim()).await.is_err());
    let (code, _, _) = run(&["token", "--sub", "alice"], &[]).await;
    assert_eq!(code, 64, "no secret");
}

/// A test key (core/tests/fixtures/keys).
fn key_file(name: &str) -> String {
    format!(
        "{}/../core/tests/fixtures/keys/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[tokio::test]
async fn token_carries_grants_audience_issuer_and_kid() {
    // A private key, a kid, and every claim a gateway reads.
    let (code, out, err) = run(
        &[
            "token",
            "--private-key",
            &key_file("ec256.key"),
            "--kid",
            "e1",
            "--sub",
            "alice",
            "--topics",
            "chat:*=sub,pub",
            "--topics",
            "news:*=sub",
            "--tools",
            "echo",
            "--aud",
            "switchboard",
            "--iss",
            "https://idp.example",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let verifier = Verifier::start(&KeySettings {
        public_keys: vec![format!("kid:e1:{}", key_file("ec256.pub")).into()],
        audience: vec!["switchboard".into()],
        issuer: vec!["https://idp.example".into()],
        ..KeySettings::default()
    })
    .await
    .unwrap();
    let claims = verifier.verify(out.trim()).await.expect("valid token");
    let topics = claims.topics.clone().unwrap();
    assert_eq!(topics["chat:*"], ["sub", "pub"]);
    assert_eq!(topics["news:*"], ["sub"]);
    assert_eq!(claims.tools.as_deref(), Some(&["echo".to_owned()][..]));
    // The same token under another kid's key, or for another audience, is refused.
    let other_aud = Verifier::start(&KeySettings {
        public_keys: vec![key_file("ec256.pub").into()],
        audience: vec!["elsewhere".into()],
        ..KeySettings::default()
    })
    .await
    .unwrap();
    assert!(other_aud.verify(out.trim()).await.is_err());

    // From variables: the gateway's own SWITCHBOARD_JWT_SECRET (its first secret, with its
    // kid), and a subscription token.
    let (code, out, err) = run(
        &["token"],
        &[
            ("SWITCHBOARD_JWT_SECRET", "kid:k1:sekrit\nolder"),
            ("SWITCHBOARD_TOKEN_SUB", "carol"),
            ("SWITCHBOARD_TOKEN_ALG", "HS512"),
            ("SWITCHBOARD_TOKEN_TOPICS", "a:*=sub;b:*=pub"),
            ("SWITCHBOARD_TOKEN_TOPIC", "chat:1"),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let verifier = Verifier::start(&KeySettings {
        secrets: vec!["kid:k1:sekrit".into()],
        ..KeySettings::default()
    })
    .await
    .unwrap();
    let claims = verifier.verify(out.trim()).await.expect("valid token");
    assert_eq!(claims.sub, "carol");
    assert_eq!(claims.topics.map(|t| t.len()), Some(2));
    assert_eq!(claims.topic.as_deref(), Some("chat:1"));

    // What a gateway would refuse is refused here, naming the flag.
    for (bad, flag) in [
        (&["--topics", "chat:*"][..], "--topics"),
        (&["--topics", "chat:*=write"], "--topics"),
        (&["--tools", "a b"], "--tools"),
        (&["--topic", "no spaces"], "--topic"),
        (&["--alg", "RS256"], "--alg"),
        (&["--private-key", "/nonexistent.pem"], "--private-key"),
    ] {
        let mut args = vec!["token", "--secret", "s", "--sub", "a"];
        args.extend_from_slice(bad);
        let (code, _, err) = run(&args, &[]).await;
        assert_eq!(code, 64, "{bad:?}: {err}");
        assert!(err.contains(flag), "{bad:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_from_env_and_publish_command() {
    let redis = RedisServer::start().await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut gw = Command::new(switchboard_bin())
        .arg("gateway")
        .env("SWITCHBOARD_LISTEN", &listen)
        .env("SWITCHBOARD_REDIS", redis.url())
        .env("SWITCHBOARD_JWT_SECRET", "sekrit")
        .env("SWITCHBOARD_ALLOW", "news=sub")
        .env("SWITCHBOARD_NODE_ID", "from-env")
        .env("SWITCHBOARD_REDIS_PREFIX", "tenant1")
        .env("SWITCHBOARD_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = listen.parse().unwrap();
    eventually("gateway ready", || async move {
        matches!(http_get(addr, "/readyz").await, Ok((200, _))).then_some(())
    })
    .await;
    let (_, token, _) = run(&["token", "--secret", "sekrit", "--sub", "bob"], &[]).await;
    let mut c = WsClient::connect(&format!("ws://{listen}/ws?token={}", token.trim())).await;
    assert_eq!(c.hello().await["result"]["node"], "from-env");
    c.call("subscribe", json!({"topic": "news"})).await;

    // The default prefix reaches nobody on this node; its own prefix does.
    assert_eq!(redis.publish("news", r#""wrong prefix""#).await, 0);
    let (code, out, err) = run(
        &[
            "publish",
            "--redis",
            &redis.url(),
            "--redis-prefix",
            "tenant1",
            "news",
            r#"{"headline":"hi"}"#,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tenant1:t:{news}: 1 gateway node"), "{out}");
    assert_eq!(
        c.next_event().await,
        json!({"topic": "news", "data": {"headline": "hi"}})
    );

    let (code, _, err) = run(
        &["publish", "--redis", &redis.url(), "bad topic", "{}"],
        &[],
    )
    .await;
    assert_eq!(code, 64, "{err}");
    let (code, _, err) = run(&["publish", "--redis", &redis.url(), "news", "{oops"], &[]).await;
    assert_eq!(code, 64, "{err}");
    let _ = gw.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_without_redis_and_says_how_to_connect() {
    let port = free_port();
    let mut dev = Command::new(switchboard_bin())
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .env("SWITCHBOARD_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let mut printed = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        printed.push_str(&line);
        printed.push('\n');
        if line.contains("ctrl-c") {
            break;
        }
    }
    assert!(printed.contains(&url), "{printed}");
    assert!(
        printed.contains("open mode"),
        "dev says it is open: {printed}"
    );
    let mut a = WsClient::connect(&url).await;
    let mut b = WsClient::connect(&url).await;
    a.hello().await;
    b.hello().await;
    a.call("subscribe", json!({"topic": "chat:42"})).await;
    b.call(
        "publish",
        json!({"topic": "chat:42", "data": {"text": "hi"}}),
    )
    .await;
    assert_eq!(a.next_event().await["data"]["text"], "hi");
    // The built-in tools run in the same process: once their worker has announced them, a call
    // is answered.
    a.wait_for_tool("echo").await;
    let r = a
        .call("tools/call", json!({"name": "echo", "arguments": {"n": 1}}))
        .await;
    assert_eq!(r["result"]["structuredContent"], json!({"n": 1}), "{r}");
    let _ = dev.kill().await;
}

/// A gateway that lets anonymous clients do anything says so at start; one with a rule does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_gateway_says_so_at_start() {
    let redis = RedisServer::start().await;
    let start = |extra: &'static [&'static str]| {
        let mut cmd = Command::new(switchboard_bin());
        cmd.args(["gateway", "--allow-anonymous", "--redis", &redis.url()])
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(extra)
            .env("SWITCHBOARD_LOG", "info")
            .env_remove("SWITCHBOARD_JWT_SECRET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd.spawn().unwrap()
    };
    // Reads the log until the listening line; answers whether "open mode" came before it.
    async fn says_open(child: &mut tokio::process::Child) -> bool {
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut open = false;
        loop {
            let line = tokio::time::timeout(std::time::Duration::from_secs(15), lines.next_line())
                .await
                .expect("the gateway logs in time")
                .unwrap()
                .expect("the gateway logs its start");
            open |= line.contains("open mode");
            if line.contains("gateway listening") {
                return open;
            }
        }
    }
    let mut open = start(&[]);
    assert!(says_open(&mut open).await);
    let mut ruled = start(&["--allow", "chat:*=sub"]);
    assert!(!says_open(&mut ruled).await);
    let _ = open.kill().await;
    let _ = ruled.kill().await;
}
