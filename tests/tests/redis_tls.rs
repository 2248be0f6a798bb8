//! Redis as managed services run it, with real processes: a `redis-server` that speaks only
//! TLS (certificates made by the test), one that requires client certificates, and one with
//! an ACL user. Gateways and workers on `rediss://` subscribe, publish and call tools; a wrong
//! CA or a missing client certificate leaves a node not ready with the reason in its log; a bad
//! file exits 64 naming its flag; a password never shows in stderr or `--help`.

use std::net::SocketAddr;

use serde_json::json;
use switchboard_harness::redis_extra::{
    LoggedProcess, RedisNode, TempDir, TlsRedis, wait_announced,
};
use switchboard_harness::tls::TestCa;
use switchboard_harness::{
    GatewayProcess, WorkerProcess, WsClient, eventually, free_port, http_get,
};

const PASSWORD: &str = "s3cret-Pa55word";

async fn client(g: &GatewayProcess) -> WsClient {
    let mut c = WsClient::connect(&g.ws_url()).await;
    c.hello().await;
    c
}

fn gateway_flags() -> Vec<&'static str> {
    vec!["--registry-interval", "200ms", "--call-poll", "200ms"]
}

/// A gateway started by hand (stderr read by the test): its arguments and address.
fn gateway_args(url: &str, extra: &[&str]) -> (Vec<String>, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut args: Vec<String> = [
        "gateway",
        "--listen",
        &addr.to_string(),
        "--admin-listen",
        &admin,
        "--redis",
        url,
        "--allow-anonymous",
        "--readiness-interval",
        "200ms",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    (args, addr)
}

async fn ready(addr: SocketAddr) -> bool {
    matches!(http_get(addr, "/readyz").await, Ok((200, _)))
}

/// Subscribes `sub` to `topic`, publishes with `pubr`, and checks `sub` gets it.
async fn publish_across(sub: &mut WsClient, pubr: &mut WsClient, topic: &str) {
    sub.call("subscribe", json!({"topic": topic})).await;
    let r = pubr
        .call("publish", json!({"topic": topic, "data": {"over": "tls"}}))
        .await;
    assert!(r["result"].is_object(), "{r}");
    assert_eq!(sub.next_event().await["data"], json!({"over": "tls"}));
}

async fn echo(c: &mut WsClient, x: i64) {
    c.wait_for_tool("echo").await;
    let r = c
        .call("tools/call", json!({"name": "echo", "arguments": {"x": x}}))
        .await;
    assert_eq!(r["result"]["structuredContent"], json!({"x": x}), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_worker_and_publish_over_tls() {
    let redis = TlsRedis::start(false).await;
    let ca = redis.dir.file("ca.pem");
    let mut flags = gateway_flags();
    flags.extend(["--redis-ca-file", &ca]);
    let a = GatewayProcess::start(&redis.url(), "gw-a", &flags).await;
    let b = GatewayProcess::start(&redis.url(), "gw-b", &flags).await;
    let _w = WorkerProcess::spawn_url(&redis.url(), "w1", &["--builtin", "--redis-ca-file", &ca]);
    wait_announced(&mut redis.connection().await, "w1").await;

    let mut on_a = client(&a).await;
    let mut on_b = client(&b).await;
    publish_across(&mut on_a, &mut on_b, "room:tls").await;
    echo(&mut on_b, 7).await;

    // `switchboard publish` takes the same flags and connects the same way.
    let out = switchboard_harness::publish_cli(&[
        "--redis",
        &redis.url(),
        "--redis-ca-file",
        &ca,
        "room:tls",
        r#"{"from":"cli"}"#,
    ])
    .await;
    assert!(out.contains("1 gateway node(s)"), "{out}");
    assert_eq!(on_a.next_event().await["data"], json!({"from": "cli"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_refused() {
    let redis = TlsRedis::start(false).await;
    let other = TempDir::new("other-ca");
    TestCa::new().write_files(other.path());
    let other_ca = other.file("ca.pem");
    let (args, addr) = gateway_args(&redis.url(), &["--redis-ca-file", &other_ca]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let g = LoggedProcess::spawn(&args, &[], "warn");
    let log = g.wait_log("backend unreachable").await;
    assert!(
        log.to_lowercase().contains("certificate") || log.contains("UnknownIssuer"),
        "the log names no TLS reason:\n{log}"
    );
    assert!(
        !ready(addr).await,
        "ready with a CA that did not sign the server"
    );

    // Without --redis-ca-file, the system's roots do not know the test CA either.
    let (args, addr) = gateway_args(&redis.url(), &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let g2 = LoggedProcess::spawn(&args, &[], "warn");
    g2.wait_log("backend unreachable").await;
    assert!(!ready(addr).await);

    // A CA file that is not PEM, a missing one, #insecure: exit 64 naming the flag.
    for (extra, url, needle) in [
        (
            vec!["--redis-ca-file", "/etc/hostname"],
            redis.url(),
            "--redis-ca-file",
        ),
        (
            vec!["--redis-ca-file", "/nonexistent.pem"],
            redis.url(),
            "--redis-ca-file",
        ),
        (
            vec![
                "--redis-client-cert",
                "/nonexistent.pem",
                "--redis-client-key",
                "/nonexistent.key",
            ],
            redis.url(),
            "--redis-client-cert",
        ),
        (vec![], format!("{}/#insecure", redis.url()), "insecure"),
    ] {
        let (args, _) = gateway_args(&url, &extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut p = LoggedProcess::spawn(&args, &[], "warn");
        let status = p.wait().await;
        assert_eq!(status.code(), Some(64), "{extra:?}: {}", p.stderr());
        assert!(p.stderr().contains(needle), "{extra:?}: {}", p.stderr());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_when_the_server_requires_them() {
    let redis = TlsRedis::start(true).await;
    let (ca, cert, key) = (
        redis.dir.file("ca.pem"),
        redis.dir.file("client.pem"),
        redis.dir.file("client.key"),
    );
    // Without a client certificate: refused by the server, not ready.
    let (args, addr) = gateway_args(&redis.url(), &["--redis-ca-file", &ca]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let g = LoggedProcess::spawn(&args, &[], "warn");
    g.wait_log("backend unreachable").await;
    assert!(!ready(addr).await);

    // With one: a gateway and a worker, a tool call across.
    let tls = [
        "--redis-ca-file",
        &ca,
        "--redis-client-cert",
        &cert,
        "--redis-client-key",
        &key,
    ];
    let mut flags = gateway_flags();
    flags.extend(tls);
    let a = GatewayProcess::start(&redis.url(), "gw-a", &flags).await;
    let mut wflags = vec!["--builtin"];
    wflags.extend(tls);
    let _w = WorkerProcess::spawn_url(&redis.url(), "w1", &wflags);
    wait_announced(&mut redis.connection().await, "w1").await;
    let mut c = client(&a).await;
    echo(&mut c, 3).await;
}

/// An ACL user as docs/redis.md recommends it, on the `sb` prefix.
async fn acl_redis() -> RedisNode {
    RedisNode::start(|port| {
        let pw = format!(">{PASSWORD}");
        [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--user",
            "switchboard",
            "on",
            &pw,
            "~sb:*",
            "&sb:*",
            "+@all",
            "-@dangerous",
        ]
        .map(String::from)
        .to_vec()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_works_and_its_password_stays_secret() {
    let redis = acl_redis().await;
    let url = redis.url();
    let dir = TempDir::new("acl");
    std::fs::write(dir.path().join("pw"), format!("{PASSWORD}\n")).unwrap();
    let pw_file = dir.file("pw");

    // Flags (the password from a file, as a mounted Secret), with debug logs.
    let (args, addr) = gateway_args(
        &url,
        &[
            "--redis-username",
            "switchboard",
            "--redis-password-file",
            &pw_file,
            "--registry-interval",
            "200ms",
            "--call-poll",
            "200ms",
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let g = LoggedProcess::spawn(&args, &[], "debug");
    eventually("the ACL gateway to be ready", || async {
        ready(addr).await.then_some(())
    })
    .await;

    // The worker with the user and password in the URL (and in the environment: a variable).
    let worker_url = format!("redis://switchboard:{PASSWORD}@127.0.0.1:{}", redis.port);
    let w = LoggedProcess::spawn(
        &[
            "worker",
            "--worker-id",
            "w1",
            "--builtin",
            "--heartbeat",
            "200ms",
        ],
        &[("SWITCHBOARD_REDIS", &worker_url)],
        "debug",
    );
    wait_announced(&mut redis.connection().await, "w1").await;
    let mut c = WsClient::connect(&format!("ws://{addr}/ws")).await;
    c.hello().await;
    echo(&mut c, 11).await;
    let mut d = WsClient::connect(&format!("ws://{addr}/ws")).await;
    d.hello().await;
    publish_across(&mut c, &mut d, "room:acl").await;
    // The keys it wrote are all under the prefix the user may touch.
    let mut conn = redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k.starts_with("sb:")),
        "{keys:?}"
    );

    // The password from the environment overrides a URL's, and shows nowhere.
    let (args, addr2) = gateway_args(
        &format!("redis://switchboard:wrong@127.0.0.1:{}", redis.port),
        &[],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let g2 = LoggedProcess::spawn(&args, &[("SWITCHBOARD_REDIS_PASSWORD", PASSWORD)], "debug");
    eventually("the env-password gateway to be ready", || async {
        ready(addr2).await.then_some(())
    })
    .await;

    // A wrong password: not ready, said in the log, and the password is not.
    let wrong = "Wr0ng-pa55-xyz";
    let (args, addr3) = gateway_args(
        &url,
        &["--redis-username", "switchboard", "--redis-password", wrong],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let g3 = LoggedProcess::spawn(&args, &[], "debug");
    let log = g3.wait_log("backend unreachable").await;
    assert!(
        log.contains("WRONGPASS") || log.to_lowercase().contains("auth"),
        "the log does not say why:\n{log}"
    );
    assert!(!ready(addr3).await);

    for (what, p) in [
        ("gateway", &g),
        ("worker", &w),
        ("env gateway", &g2),
        ("wrong-password gateway", &g3),
    ] {
        let log = p.stderr();
        assert!(!log.is_empty() || what != "wrong-password gateway");
        for secret in [PASSWORD, wrong] {
            assert!(!log.contains(secret), "{what} logged a password:\n{log}");
        }
    }

    // `--help` with the secrets in the environment does not show them.
    let out = tokio::process::Command::new(switchboard_harness::switchboard_bin())
        .args(["gateway", "--help"])
        .env("SWITCHBOARD_REDIS", &worker_url)
        .env("SWITCHBOARD_REDIS_PASSWORD", PASSWORD)
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--redis-password"), "{help}");
    assert!(
        !help.contains(PASSWORD),
        "--help shows the password:\n{help}"
    );
}
