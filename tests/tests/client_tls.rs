//! The Rust client over `wss://` and with a token provider, against real gateway processes
//! behind TLS-terminating proxies (`switchboard_harness::tls::TlsProxy`, a CA made by the test):
//!
//! - a `Session` over `wss://` subscribes, publishes and calls; a certificate from an unknown
//!   CA is refused with a clear TLS error (custom CA given or not), the right custom CA works;
//!   4009 over `wss://` is final;
//! - two proxies in front of two gateways: kill -9 of the node in use while a backend publishes
//!   history events: every event once, in order, and a call answered across the resume;
//! - a token provider whose first token is expired: the gateway refuses it (1008), the provider
//!   is asked again, the session goes on; a provider that only gives bad tokens ends the
//!   session (1008 twice is final);
//! - an 8-second token is refreshed (`refresh`) before its `exp`: the socket outlives `exp` plus
//!   the gateway's 5 s leeway with no disconnect; a refreshed token that no longer grants a
//!   topic is reported as revoked;
//! - `switchboard mcp-stdio` over `wss://` with `--ca-file`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use serde_json::json;
use switchboard_client::{
    ClientError, Roots, Session, SessionEvent, SessionEvents, SessionOptions, TlsOptions,
    TokenProvider,
};
use switchboard_core::auth::{self, Claims};
use switchboard_harness::tls::{TestCa, TlsProxy};
use switchboard_harness::{DEADLINE, GatewayProcess, RedisServer, WorkerProcess, WsClient};

const SECRET: &str = "tls-test-secret-of-at-least-32-bytes";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `alice` expiring at `exp` (Unix seconds).
fn token(exp: u64) -> String {
    auth::mint_claims(
        SECRET.as_bytes(),
        &Claims {
            exp: Some(exp),
            ..Claims::subject("alice")
        },
    )
    .unwrap()
}

/// Gateway flags: tokens signed with [`SECRET`], `hist:*` with history, every tool.
const SECURED: &[&str] = &[
    "--jwt-secret",
    SECRET,
    "--allow",
    "hist:*=sub,pub",
    "--allow-tools",
    "*",
    "--history",
    "hist:*=10000",
    "--registry-interval",
    "100ms",
];

/// Session options trusting only `ca`, with a short backoff.
fn options(urls: &[String], ca: &TestCa) -> SessionOptions {
    let mut o = SessionOptions::new(urls.iter().cloned());
    o.connect.tls = TlsOptions {
        roots: Roots::None,
        ..Default::default()
    }
    .with_ca_pem(ca.ca_pem());
    o.backoff_max = Duration::from_millis(300);
    o
}

async fn next(events: &mut SessionEvents) -> SessionEvent {
    tokio::time::timeout(DEADLINE, events.recv())
        .await
        .expect("no session event in time")
        .expect("the session's events ended")
}

/// A provider giving the tokens `make` mints, counting how often it was asked.
fn provider(
    asked: Arc<AtomicU32>,
    make: impl Fn(u32) -> String + Send + Sync + 'static,
) -> TokenProvider {
    let make = Arc::new(make);
    TokenProvider::from_fn(move || {
        let n = asked.fetch_add(1, Ordering::SeqCst);
        let make = make.clone();
        async move { Ok(make(n)) }
    })
}

/// Waits until some client of `url` sees `tool` (the registry is refreshed every 100 ms).
async fn wait_for_tool(url: &str, tool: &str) {
    let mut c = WsClient::connect(url).await;
    c.call("hello", json!({"token": token(now_secs() + 60)}))
        .await;
    c.wait_for_tool(tool).await;
}

/// Over `wss://` through the proxy: subscribe, publish (the event comes back), call. An unknown
/// CA is refused with a TLS error, with or without a custom CA; the server name from the URL is
/// checked. 4009 over `wss://` is final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_over_wss_subscribes_publishes_and_calls() {
    let redis = RedisServer::start().await;
    let _worker = WorkerProcess::start(&redis, "w1", &["--builtin"]).await;
    let gw = GatewayProcess::start_secured(&redis.url(), "gw-a", SECURED).await;
    let proxy = TlsProxy::start(gw.addr).await;
    wait_for_tool(&gw.ws_url(), "echo").await;

    // The wrong CA, and the default roots (the test CA is in neither): refused, clearly.
    let other = TestCa::new();
    let mut wrong = options(&[proxy.wss_url()], &other);
    wrong.token = Some(token(now_secs() + 60));
    match Session::connect(wrong.clone()).await {
        Err(ClientError::Tls(why)) => {
            assert!(why.contains("certificate"), "{why}");
        }
        other => panic!("a certificate from an unknown CA: {other:?}"),
    }
    wrong.connect.tls = TlsOptions::default();
    assert!(matches!(
        Session::connect(wrong.clone()).await,
        Err(ClientError::Tls(_))
    ));
    // ws:// to a TLS port: no WebSocket there.
    wrong.urls = vec![format!("ws://{}/ws", proxy.addr())];
    assert!(Session::connect(wrong).await.is_err());

    // The right CA, by IP and by name (SNI and the name checked are the URL's host).
    let mut opts = options(&[proxy.wss_url_by_name()], proxy.ca());
    opts.token = Some(token(now_secs() + 60));
    let (by_name, _e) = Session::connect(opts.clone()).await.unwrap();
    assert_eq!(by_name.node(), "gw-a");
    by_name.close().await;
    opts.urls = vec![proxy.wss_url()];
    let (session, mut events) = Session::connect(opts).await.unwrap();
    session.subscribe("hist:room").await.unwrap();
    let published = session
        .publish("hist:room", &json!({"n": 1}))
        .await
        .unwrap();
    match next(&mut events).await {
        SessionEvent::Event(e) => {
            assert_eq!(e.topic, "hist:room");
            assert_eq!(e.data, json!({"n": 1}));
            assert_eq!(e.id, published.id);
        }
        other => panic!("expected the event, got {other:?}"),
    }
    let r = session.call("echo", json!({"over": "tls"})).await.unwrap();
    assert!(!r.is_error, "{r:?}");
    assert_eq!(
        r.structured_content.as_ref().unwrap()["over"],
        "tls",
        "{r:?}"
    );

    // 4009: another connection of the same identity takes the session over.
    let mut thief = WsClient::connect(&gw.ws_url()).await;
    let r = thief
        .call(
            "hello",
            json!({"token": token(now_secs() + 60), "session": session.session_id()}),
        )
        .await;
    assert_eq!(r["result"]["resumed"], true, "{r}");
    match next(&mut events).await {
        SessionEvent::Closed { code: 4009, .. } => {}
        other => panic!("expected the final 4009, got {other:?}"),
    }
    assert!(events.recv().await.is_none(), "nothing after Closed");
    assert_eq!(session.reconnections(), 0);
}

/// Two proxies in front of two gateways; the node in use is killed with SIGKILL while a
/// backend publishes history events and a call runs: the session resumes through the other
/// proxy, every event arrives once and in order, and the call is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_over_wss_resumes_with_every_event_once() {
    let redis = RedisServer::start().await;
    let _worker = WorkerProcess::start(&redis, "w1", &["--builtin"]).await;
    let a = GatewayProcess::start_secured(&redis.url(), "gw-a", SECURED).await;
    let b = GatewayProcess::start_secured(&redis.url(), "gw-b", SECURED).await;
    let ca = Arc::new(TestCa::new());
    let pa = TlsProxy::start_with(a.addr, ca.clone()).await;
    let pb = TlsProxy::start_with(b.addr, ca.clone()).await;
    wait_for_tool(&a.ws_url(), "sleep").await;
    wait_for_tool(&b.ws_url(), "sleep").await;

    let mut opts = options(&[pa.wss_url(), pb.wss_url()], &ca);
    opts.token = Some(token(now_secs() + 600));
    let (session, mut events) = Session::connect(opts).await.unwrap();
    session.subscribe("hist:k").await.unwrap();
    let (victim, survivor) = match session.node().as_str() {
        "gw-a" => (&a, "gw-b"),
        _ => (&b, "gw-a"),
    };

    const N: usize = 200;
    let mut publisher = redis.publish_history_paced("hist:k", N, PACE);
    let caller = session.clone();
    let call = tokio::spawn(async move { caller.call("sleep", json!({"ms": 1500})).await });
    let killer = async {
        // Mid-stream: a quarter of the events out, and the call submitted.
        redis.wait_for_owed_reply(&session.session_id()).await;
        publisher.published(N / 4).await;
        victim.signal(Signal::SIGKILL);
        publisher.finish().await
    };
    let mut log = Vec::new();
    let mut ids = Vec::new();
    let reader = async {
        while ids.len() < N {
            match next(&mut events).await {
                SessionEvent::Event(e) => {
                    assert_eq!(e.data, json!({ "n": ids.len() }), "in order, once: {log:?}");
                    ids.push(e.id.expect("a history event has an id"));
                }
                other => log.push(format!("{other:?}")),
            }
        }
    };
    let (published, ()) = tokio::join!(killer, reader);
    assert_eq!(ids, published, "every event once, in order");
    assert!(log.iter().any(|l| l.starts_with("Disconnected")), "{log:?}");
    assert!(
        log.iter()
            .any(|l| l == &format!("Reconnected {{ node: \"{survivor}\", resumed: true }}")),
        "{log:?}"
    );
    let reply = tokio::time::timeout(DEADLINE, call)
        .await
        .unwrap()
        .unwrap()
        .expect("the call answered across the resume");
    assert!(!reply.is_error, "{reply:?}");
    let content = reply.structured_content.expect("structured content");
    assert_eq!(content["slept_ms"], 1500, "{content}");
    assert!(content["worker"].is_string(), "{content}");
    assert_eq!(session.node(), survivor);
}

/// How fast the backend publishes (200 events in about a second).
const PACE: Duration = Duration::from_millis(5);

/// The provider's first token is expired: the gateway refuses it (-32001, 1008), the session
/// asks the provider again and goes on. A provider that only gives expired tokens: the fresh
/// one is refused too, which is final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_replaced_once_by_the_provider() {
    let redis = RedisServer::start().await;
    let gw = GatewayProcess::start_secured(&redis.url(), "gw-a", SECURED).await;
    let proxy = TlsProxy::start(gw.addr).await;

    let asked = Arc::new(AtomicU32::new(0));
    let mut opts = options(&[proxy.wss_url()], proxy.ca());
    opts.token_provider = Some(provider(asked.clone(), |n| {
        if n == 0 {
            token(now_secs() - 60)
        } else {
            token(now_secs() + 600)
        }
    }));
    let (session, _events) = Session::connect(opts.clone()).await.unwrap();
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "asked again after the refusal"
    );
    session.subscribe("hist:t").await.unwrap();
    session.publish("hist:t", &json!(1)).await.unwrap();
    session.close().await;

    let asked = Arc::new(AtomicU32::new(0));
    opts.token_provider = Some(provider(asked.clone(), |_| token(now_secs() - 60)));
    match Session::connect(opts.clone()).await {
        Err(ClientError::Rpc(e)) => assert_eq!(e.code, -32001, "{e:?}"),
        other => panic!("a provider of bad tokens: {other:?}"),
    }
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "one fresh token, then final"
    );

    // Mid-session: a good token, then only expired ones. The refresh is refused (the gateway
    // keeps the old token), the gateway closes with 1008 at exp, the fresh token is refused
    // too: final.
    let asked = Arc::new(AtomicU32::new(0));
    let exp = now_secs() + 2;
    opts.token_provider = Some(provider(asked.clone(), move |n| {
        if n == 0 {
            token(exp)
        } else {
            token(now_secs() - 60)
        }
    }));
    let (session, mut events) = Session::connect(opts).await.unwrap();
    let mut log = Vec::new();
    let closed = loop {
        match next(&mut events).await {
            SessionEvent::Closed { code, .. } => break code,
            other => log.push(format!("{other:?}")),
        }
    };
    assert_eq!(closed, 1008, "{log:?}");
    assert!(
        log.iter()
            .any(|l| l.starts_with("Disconnected { code: Some(1008)")),
        "{log:?}"
    );
    assert_eq!(session.reconnections(), 0, "{log:?}");
    // The first token, two refresh tries, and the fresh token after the 1008.
    assert!(asked.load(Ordering::SeqCst) >= 3, "{log:?}");
}

/// An 8-second token is refreshed before its `exp` (about 2.7 s before): the socket is still
/// the same after `exp` plus the gateway's 5 s leeway, with no disconnect, and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_token_is_refreshed_before_exp() {
    let redis = RedisServer::start().await;
    let gw = GatewayProcess::start_secured(&redis.url(), "gw-a", SECURED).await;
    let proxy = TlsProxy::start(gw.addr).await;
    let asked = Arc::new(AtomicU32::new(0));
    let mut opts = options(&[proxy.wss_url()], proxy.ca());
    opts.token_provider = Some(provider(asked.clone(), |_| token(now_secs() + 8)));
    let first_exp = now_secs() + 8;
    let (session, mut events) = Session::connect(opts).await.unwrap();
    session.subscribe("hist:r").await.unwrap();
    // Watch the session until well past the first token's exp plus the leeway: no
    // Disconnected, Closed or Reconnected may come. A refresh is followed by
    // `notifications/tools/list_changed` (the grants may have changed).
    let until = first_exp + 5 + 2;
    let mut list_changed = 0;
    while now_secs() < until {
        let quiet = Duration::from_secs(until - now_secs());
        match tokio::time::timeout(quiet, events.recv()).await {
            Err(_) => {}
            Ok(Some(SessionEvent::Notification(n)))
                if n.method == "notifications/tools/list_changed" =>
            {
                list_changed += 1
            }
            Ok(e) => panic!("the session was disturbed: {e:?}"),
        }
    }
    assert!(list_changed >= 1, "a refresh was answered");
    assert!(
        asked.load(Ordering::SeqCst) >= 2,
        "the provider was asked to refresh"
    );
    assert_eq!(session.reconnections(), 0);
    session
        .publish("hist:r", &json!("still here"))
        .await
        .unwrap();
    // Each fresh token is refreshed again about 2.7 s before its own `exp`, so a later
    // refresh's `list_changed` may come before the event.
    loop {
        match next(&mut events).await {
            SessionEvent::Event(e) => {
                assert_eq!(e.data, json!("still here"));
                break;
            }
            SessionEvent::Notification(n) if n.method == "notifications/tools/list_changed" => {}
            other => panic!("{other:?}"),
        }
    }
}

/// `switchboard mcp-stdio` relays to a gateway over `wss://`, trusting the CA of `--ca-file`;
/// without it the certificate is refused and the command fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_stdio_relays_over_wss_with_a_ca_file() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let redis = RedisServer::start().await;
    let gw = GatewayProcess::start_secured(&redis.url(), "gw-a", SECURED).await;
    let proxy = TlsProxy::start(gw.addr).await;
    let ca_file = proxy.ca().ca_file();
    let run = |ca: Option<&std::path::Path>| {
        let mut cmd = tokio::process::Command::new(switchboard_harness::switchboard_bin());
        cmd.args(["mcp-stdio", "--url", &proxy.wss_url()])
            .args(["--token", &token(now_secs() + 60)])
            .env_remove("SWITCHBOARD_CA_FILE")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(ca) = ca {
            cmd.arg("--ca-file").arg(ca);
        }
        cmd.spawn().expect("spawn mcp-stdio")
    };
    let mut relay = run(Some(&ca_file));
    let mut stdin = relay.stdin.take().unwrap();
    let mut lines = BufReader::new(relay.stdout.take().unwrap()).lines();
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "tls-test", "version": "0"}}});
    stdin
        .write_all(format!("{initialize}\n").as_bytes())
        .await
        .unwrap();
    let Some(line) = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("an answer in time")
        .unwrap()
    else {
        let mut err = String::new();
        use tokio::io::AsyncReadExt;
        relay
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        panic!("mcp-stdio ended without answering: {err}");
    };
    let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["id"], 1, "{reply}");
    assert!(reply["result"]["serverInfo"].is_object(), "{reply}");
    drop(stdin);
    let status = tokio::time::timeout(DEADLINE, relay.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");

    let refused = tokio::time::timeout(DEADLINE, run(None).wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");
    std::fs::remove_file(ca_file).ok();
}

/// A refreshed token that no longer grants a topic: the gateway drops the subscription
/// (`revoked`), the session reports it and stops keeping the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_revokes_a_topic_is_reported() {
    let redis = RedisServer::start().await;
    let gw = GatewayProcess::start_secured(&redis.url(), "gw-a", SECURED).await;
    let proxy = TlsProxy::start(gw.addr).await;
    let asked = Arc::new(AtomicU32::new(0));
    let mut opts = options(&[proxy.wss_url()], proxy.ca());
    opts.token_provider = Some(provider(asked.clone(), |n| {
        let mut claims = Claims {
            // The first token: 3 s, refreshed about 1 s before its exp.
            exp: Some(now_secs() + if n == 0 { 3 } else { 600 }),
            ..Claims::subject("alice")
        };
        if n == 0 {
            claims.topics = Some([("g:*".to_owned(), vec!["sub".to_owned()])].into());
        }
        auth::mint_claims(SECRET.as_bytes(), &claims).unwrap()
    }));
    let (session, mut events) = Session::connect(opts).await.unwrap();
    session.subscribe("g:x").await.unwrap();
    session.subscribe("hist:y").await.unwrap();
    let mut log = Vec::new();
    loop {
        match next(&mut events).await {
            SessionEvent::Revoked { topic } => {
                assert_eq!(topic, "g:x", "{log:?}");
                break;
            }
            other => log.push(format!("{other:?}")),
        }
    }
    assert_eq!(session.topics(), vec!["hist:y"]);
    assert_eq!(session.reconnections(), 0);
    assert!(
        !log.iter().any(|l| l.starts_with("Disconnected")),
        "{log:?}"
    );
}
