//! Authorization against real gateway processes on a real Redis: default deny, rules with
//! `{sub}`, token grants, subscription tokens, publisher identity (`from`), tools by grant,
//! `refresh`, browser origins, the admin port, and the MCP face. Every check also shows that a
//! well-behaved client on the same node is unaffected.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_core::auth::{Claims, mint_claims};
use switchboard_core::clock::now_secs;
use switchboard_harness::{
    GatewayProcess, Read, RedisServer, WorkerProcess, WsClient, eventually, http_get, metric,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "authz-secret";

/// The rules most tests run under: everyone their own `user:<sub>:*` topics (read only: the
/// app's backend writes there), `chat:*` open to all, `h:*` with history.
const RULES: &[&str] = &[
    "--jwt-secret",
    SECRET,
    "--history",
    "user:*=100",
    "--allow",
    "user:{sub}:*=sub",
    "--allow",
    "chat:*=sub,pub",
    "--allow",
    "h:*=sub,pub",
    "--history",
    "h:*=100",
];

fn token_with(claims: Claims) -> String {
    mint_claims(SECRET.as_bytes(), &claims).unwrap()
}

fn token(sub: &str) -> String {
    token_with(Claims::subject(sub))
}

/// Claims for `sub` granting `topics` (pattern, ops) and `tools`.
fn granting(sub: &str, topics: &[(&str, &[&str])], tools: &[&str]) -> Claims {
    Claims {
        topics: Some(
            topics
                .iter()
                .map(|(p, ops)| (p.to_string(), ops.iter().map(|o| o.to_string()).collect()))
                .collect(),
        ),
        tools: Some(tools.iter().map(|t| t.to_string()).collect()),
        ..Claims::subject(sub)
    }
}

/// A client that said `hello` with `token`.
async fn connect(gw: &GatewayProcess, token: &str) -> WsClient {
    let mut c = WsClient::connect(&gw.ws_url()).await;
    let r = c.call("hello", json!({ "token": token })).await;
    assert!(r["result"]["session"].is_string(), "hello failed: {r}");
    c
}

/// Asserts a -32002 refusal naming `op` and `name`.
#[track_caller]
fn assert_forbidden(reply: &Value, op: &str, name: &str) {
    assert_eq!(reply["error"]["code"], -32002, "{reply}");
    assert_eq!(
        reply["error"]["message"],
        format!("forbidden: {op} {name}"),
        "{reply}"
    );
}

#[track_caller]
fn assert_ok(reply: &Value) {
    assert!(reply.get("result").is_some(), "expected a result: {reply}");
}

/// A well-behaved client subscribed to `topic`, to show refusals elsewhere do not touch it.
async fn bystander(gw: &GatewayProcess, topic: &str) -> WsClient {
    let mut c = connect(gw, &token("carol")).await;
    assert_ok(&c.call("subscribe", json!({ "topic": topic })).await);
    c
}

/// Publishes through `c` and checks that `watcher` receives it.
async fn still_delivers(publisher: &mut WsClient, watcher: &mut WsClient, topic: &str, n: u64) {
    assert_ok(
        &publisher
            .call("publish", json!({"topic": topic, "data": {"n": n}}))
            .await,
    );
    assert_eq!(watcher.next_event().await["data"]["n"], n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bob_cannot_read_write_or_replay_alices_topics() {
    let redis = RedisServer::start().await;
    let a = GatewayProcess::start_secured(&redis.url(), "gw-a", RULES).await;
    let b = GatewayProcess::start_secured(&redis.url(), "gw-b", RULES).await;
    let mut alice = connect(&a, &token("alice")).await;
    let mut bob = connect(&b, &token("bob")).await;
    let mut carol = bystander(&b, "chat:room").await;

    assert_ok(
        &alice
            .call("subscribe", json!({"topic": "user:alice:inbox"}))
            .await,
    );
    // Alice's inbox has history: what a replay would read is there.
    redis
        .history_publish("user:alice:inbox", r#"{"secret":1}"#)
        .await;
    assert_eq!(alice.next_event().await["data"]["secret"], 1);
    let r = bob
        .call("subscribe", json!({"topic": "user:alice:inbox"}))
        .await;
    assert_forbidden(&r, "sub", "user:alice:inbox");
    let r = bob
        .call(
            "subscribe",
            json!({"topic": "user:alice:inbox", "since": "0-0"}),
        )
        .await;
    assert_forbidden(&r, "sub", "user:alice:inbox");
    let r = bob
        .call(
            "publish",
            json!({"topic": "user:alice:inbox", "data": "spoof"}),
        )
        .await;
    assert_forbidden(&r, "pub", "user:alice:inbox");
    assert!(
        bob.take_notification("event").is_none(),
        "nothing of the history reached bob"
    );
    // A topic nobody ever used is refused in the same words: no existence leak.
    let r = bob
        .call("subscribe", json!({"topic": "user:alice:never"}))
        .await;
    assert_forbidden(&r, "sub", "user:alice:never");
    // Nobody may publish into a user topic (the rule says sub only), Alice included.
    let r = alice
        .call("publish", json!({"topic": "user:alice:inbox", "data": 1}))
        .await;
    assert_forbidden(&r, "pub", "user:alice:inbox");
    // No rule covers news:*: default deny, for everyone.
    assert_forbidden(
        &bob.call("subscribe", json!({"topic": "news:1"})).await,
        "sub",
        "news:1",
    );
    // Bob's own topics are his.
    assert_ok(
        &bob.call("subscribe", json!({"topic": "user:bob:inbox"}))
            .await,
    );

    // The app's backend writes into Alice's inbox through Redis: only Alice gets it.
    redis
        .publish("user:alice:inbox", r#"{"msg":"for alice"}"#)
        .await;
    redis
        .publish("user:bob:inbox", r#"{"msg":"for bob"}"#)
        .await;
    let ev = alice.next_event().await;
    assert_eq!(ev["data"]["msg"], "for alice");
    assert!(
        ev.get("from").is_none(),
        "a backend's event has no from: {ev}"
    );
    assert_eq!(bob.next_event().await["data"]["msg"], "for bob");

    // Carol, on Bob's node, was never disturbed.
    let mut carol_pub = connect(&b, &token("carol")).await;
    still_delivers(&mut carol_pub, &mut carol, "chat:room", 1).await;
    let refused = metric(b.admin_addr, "switchboard_forbidden_total").await;
    assert!(refused >= 4.0, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_and_subscription_tokens_open_exactly_what_they_name() {
    let redis = RedisServer::start().await;
    let gw = GatewayProcess::start_secured(&redis.url(), "gw", &["--jwt-secret", SECRET]).await;
    let claims = granting(
        "alice",
        &[("room:42", &["sub", "pub"]), ("team:7:*", &["sub"])],
        &[],
    );
    let mut alice = connect(&gw, &token_with(claims)).await;
    let mut carol_pub = connect(
        &gw,
        &token_with(granting("carol", &[("room:*", &["pub"])], &[])),
    )
    .await;

    assert_ok(&alice.call("subscribe", json!({"topic": "room:42"})).await);
    assert_ok(
        &alice
            .call("subscribe", json!({"topic": "team:7:general"}))
            .await,
    );
    for (op, topic) in [
        ("sub", "room:43"),
        ("sub", "room:420"),
        ("sub", "room:4"),
        ("sub", "team:71"),
        ("sub", "team:7"),
        ("pub", "team:7:general"),
        ("pub", "room:43"),
    ] {
        let r = if op == "sub" {
            alice.call("subscribe", json!({ "topic": topic })).await
        } else {
            alice
                .call("publish", json!({"topic": topic, "data": 1}))
                .await
        };
        assert_forbidden(&r, op, topic);
    }
    // Carol may publish into room:* (her grant), and Alice receives it there.
    still_delivers(&mut carol_pub, &mut alice, "room:42", 7).await;

    // A subscription token opens one topic to its subject, without a reconnect.
    let sub_token = |sub: &str, topic: &str, exp: Option<u64>| {
        token_with(Claims {
            topic: Some(topic.into()),
            exp,
            ..Claims::subject(sub)
        })
    };
    assert_forbidden(
        &alice
            .call("subscribe", json!({"topic": "private:alice"}))
            .await,
        "sub",
        "private:alice",
    );
    let t = sub_token("alice", "private:alice", None);
    assert_ok(
        &alice
            .call("subscribe", json!({"topic": "private:alice", "token": t}))
            .await,
    );
    // Not for another topic (prefix or not), not for another subject's connection.
    let r = alice
        .call("subscribe", json!({"topic": "private:alice2", "token": t}))
        .await;
    assert_forbidden(&r, "sub", "private:alice2");
    let mut bob = connect(&gw, &token("bob")).await;
    let r = bob
        .call("subscribe", json!({"topic": "private:alice", "token": t}))
        .await;
    assert_forbidden(&r, "sub", "private:alice");
    // It grants subscribing, not publishing.
    assert_forbidden(
        &alice
            .call("publish", json!({"topic": "private:alice", "data": 1}))
            .await,
        "pub",
        "private:alice",
    );
    // A bad or expired subscription token is -32001, and the connection stays.
    let expired = sub_token("alice", "private:other", Some(now_secs() - 3600));
    let r = alice
        .call(
            "subscribe",
            json!({"topic": "private:other", "token": expired}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    let forged = mint_claims(
        b"not-the-secret",
        &Claims {
            topic: Some("private:other".into()),
            ..Claims::subject("alice")
        },
    )
    .unwrap();
    let r = alice
        .call(
            "subscribe",
            json!({"topic": "private:other", "token": forged}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    // A connection token's `topics` grant also works as a subscription token.
    let grant = token_with(granting("bob", &[("private:bob:*", &["sub"])], &[]));
    assert_ok(
        &bob.call(
            "subscribe",
            json!({"topic": "private:bob:x", "token": grant}),
        )
        .await,
    );
    // Once unsubscribed, the topic needs its token again.
    assert_ok(
        &alice
            .call("unsubscribe", json!({"topic": "private:alice"}))
            .await,
    );
    assert_forbidden(
        &alice
            .call("subscribe", json!({"topic": "private:alice"}))
            .await,
        "sub",
        "private:alice",
    );
    // Everything still works for Alice where she is allowed.
    still_delivers(&mut carol_pub, &mut alice, "room:42", 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_cannot_escape_their_patterns() {
    let redis = RedisServer::start().await;
    let gw = GatewayProcess::start_secured(&redis.url(), "gw", RULES).await;
    let mut alice = connect(&gw, &token("alice")).await;
    assert_ok(
        &alice
            .call("subscribe", json!({"topic": "user:alice:x:inbox"}))
            .await,
    );
    for sneaky in [
        "alice:x",
        "*",
        "al",
        "alice:*",
        "user:alice",
        "ali ce",
        "alice|x",
    ] {
        let mut c = connect(&gw, &token(sneaky)).await;
        for topic in ["user:alice:inbox", "user:alice:x:inbox", "user:al:inbox"] {
            let r = c.call("subscribe", json!({"topic": topic})).await;
            if sneaky == "al" && topic == "user:al:inbox" {
                assert_ok(&r);
                continue;
            }
            assert_forbidden(&r, "sub", topic);
        }
    }
    // A grant whose pattern is malformed refuses the token at hello (-32001, close 1008).
    let bad = token_with(granting("eve", &[("user:alice:inbox", &["admin"])], &[]));
    let mut eve = WsClient::connect(&gw.ws_url()).await;
    let r = eve.call("hello", json!({ "token": bad })).await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    assert_eq!(eve.read_close().await, 1008);
    // Alice still receives her events.
    redis.publish("user:alice:x:inbox", "1").await;
    assert_eq!(alice.next_event().await["data"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_is_set_by_the_gateway_across_nodes_and_on_replay() {
    let redis = RedisServer::start().await;
    let a = GatewayProcess::start_secured(&redis.url(), "gw-a", RULES).await;
    let b = GatewayProcess::start_secured(&redis.url(), "gw-b", RULES).await;
    let mut alice = connect(&a, &token("alice")).await;
    let mut bob = connect(&b, &token("bob")).await;
    for c in [&mut alice, &mut bob] {
        assert_ok(&c.call("subscribe", json!({"topic": "h:room"})).await);
        assert_ok(&c.call("subscribe", json!({"topic": "chat:room"})).await);
    }
    // A `from` in the data stays in the data; the event's `from` is the publisher's subject.
    let odd = "o'dd \"quoted\" \\ subject \u{e9}";
    let mut odd_client = connect(&a, &token(odd)).await;
    let data = json!({"from": "mallory", "text": "hi"});
    for topic in ["h:room", "chat:room"] {
        assert_ok(
            &alice
                .call("publish", json!({"topic": topic, "data": data}))
                .await,
        );
    }
    assert_ok(
        &odd_client
            .call("publish", json!({"topic": "h:room", "data": data}))
            .await,
    );
    // A backend's events (PUBLISH, and FCALL sb_publish) carry no from.
    redis.publish("chat:room", r#"{"text":"backend"}"#).await;
    redis
        .history_publish("h:room", r#"{"text":"backend"}"#)
        .await;
    let mut conn = redis.connection().await;

    // Client events carry the publisher and keep the data's own `from`; backend events have
    // neither.
    let check = |events: &[Value]| -> Vec<(String, Value)> {
        events
            .iter()
            .map(|e| {
                let from = e.get("from").cloned().unwrap_or(Value::Null);
                let data_from = e["data"].get("from").cloned().unwrap_or(Value::Null);
                let expected = if from.is_null() {
                    Value::Null
                } else {
                    json!("mallory")
                };
                assert_eq!(data_from, expected, "{e}");
                (e["topic"].as_str().unwrap().to_owned(), from)
            })
            .collect()
    };
    let mut on_b = Vec::new();
    for _ in 0..5 {
        on_b.push(bob.next_event().await);
    }
    let mut got = check(&on_b);
    got.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.to_string().cmp(&y.1.to_string())));
    let mut want = vec![
        ("chat:room".to_owned(), json!("alice")),
        ("chat:room".to_owned(), Value::Null),
        ("h:room".to_owned(), json!("alice")),
        ("h:room".to_owned(), json!(odd)),
        ("h:room".to_owned(), Value::Null),
    ];
    want.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.to_string().cmp(&y.1.to_string())));
    assert_eq!(got, want, "{on_b:?}");

    // Replayed from history on another node: the same publishers, in order.
    let mut late = connect(&b, &token("dave")).await;
    let r = late
        .call("subscribe", json!({"topic": "h:room", "since": "0-0"}))
        .await;
    assert_eq!(r["result"]["recovered"], true, "{r}");
    let mut replayed = Vec::new();
    while replayed.len() < 3 {
        replayed.push(late.next_event().await);
    }
    let froms: Vec<Value> = replayed
        .iter()
        .map(|e| e.get("from").cloned().unwrap_or(Value::Null))
        .collect();
    assert_eq!(
        froms,
        vec![json!("alice"), json!(odd), Value::Null],
        "{replayed:?}"
    );
    // How it sits in Redis, for backends that read the stream.
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("sb:h:{h:room}")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        entries[0].1[0],
        (
            "d".to_owned(),
            r#"@"alice" {"from":"mallory","text":"hi"}"#.to_owned()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_outside_the_grants_are_neither_listed_nor_called() {
    let redis = RedisServer::start().await;
    let _w = WorkerProcess::start(&redis, "w1", &["--builtin"]).await;
    let gw = GatewayProcess::start_secured(
        &redis.url(),
        "gw",
        &[
            "--jwt-secret",
            SECRET,
            "--allow-tools",
            "echo",
            "--registry-interval",
            "100ms",
        ],
    )
    .await;
    let mut alice = connect(&gw, &token_with(granting("alice", &[], &["sl*"]))).await;
    let mut bob = connect(&gw, &token("bob")).await;
    alice.wait_for_tool("echo").await;
    alice.wait_for_tool("sleep").await;
    let names = |r: &Value| -> Vec<String> {
        let mut n: Vec<String> = r["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        n.sort();
        n
    };
    assert_eq!(
        names(&alice.call("tools/list", json!({})).await),
        ["echo", "sleep"]
    );
    assert_eq!(names(&bob.call("tools/list", json!({})).await), ["echo"]);
    let r = bob
        .call(
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": 1}}),
        )
        .await;
    assert_forbidden(&r, "call", "sleep");
    let r = alice
        .call("tools/call", json!({"name": "fail", "arguments": {}}))
        .await;
    assert_forbidden(&r, "call", "fail");
    // A tool that does not exist is refused in the same words.
    let r = alice
        .call("tools/call", json!({"name": "nope", "arguments": {}}))
        .await;
    assert_forbidden(&r, "call", "nope");
    let r = alice
        .call(
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": 1}}),
        )
        .await;
    assert_eq!(r["result"]["isError"], false, "{r}");
    let r = bob
        .call("tools/call", json!({"name": "echo", "arguments": {"x": 1}}))
        .await;
    assert_eq!(r["result"]["isError"], false, "{r}");

    // The MCP face: the upgrade's token, the same grants and refusals.
    let mut mcp = WsClient::connect_with(
        &gw.ws_url(),
        &[
            ("Sec-WebSocket-Protocol", "mcp"),
            ("Authorization", &format!("Bearer {}", token("bob"))),
        ],
    )
    .await;
    let r = mcp
        .call("initialize", json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}))
        .await;
    assert_ok(&r);
    assert_eq!(names(&mcp.call("tools/list", json!({})).await), ["echo"]);
    let r = mcp
        .call(
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": 1}}),
        )
        .await;
    assert_forbidden(&r, "call", "sleep");
    // An anonymous MCP client on a node that requires tokens is refused.
    let mut anon = WsClient::connect_with(&gw.ws_url(), &[("Sec-WebSocket-Protocol", "mcp")]).await;
    let r = anon
        .call("initialize", json!({"protocolVersion": "2025-11-25"}))
        .await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_replaces_grants_and_expiry_in_band() {
    let redis = RedisServer::start().await;
    let gw = GatewayProcess::start_secured(&redis.url(), "gw", &["--jwt-secret", SECRET]).await;
    let mut carol = connect(
        &gw,
        &token_with(granting("carol", &[("room:*", &["sub", "pub"])], &[])),
    )
    .await;
    assert_ok(&carol.call("subscribe", json!({"topic": "room:1"})).await);
    // Tokens that expire now are good for the 5 s leeway: each socket closes 5 s from `t0`
    // unless it refreshes. The subscription token expired a second ago: good for 4 s more.
    let t0 = now_secs();
    let short = |sub: &str| {
        token_with(Claims {
            exp: Some(t0),
            ..granting(sub, &[("room:*", &["sub", "pub"])], &[])
        })
    };
    let mut kept = connect(&gw, &short("alice")).await;
    let mut lapsed = connect(&gw, &short("alice")).await;
    assert_ok(&kept.call("subscribe", json!({"topic": "room:1"})).await);
    assert_ok(&kept.call("subscribe", json!({"topic": "room:2"})).await);
    let sub_token = token_with(Claims {
        topic: Some("private:alice".into()),
        exp: Some(t0 - 1),
        ..Claims::subject("alice")
    });
    assert_ok(
        &kept
            .call(
                "subscribe",
                json!({"topic": "private:alice", "token": sub_token}),
            )
            .await,
    );

    // A bad token: -32001, the connection keeps its old token.
    let r = kept.call("refresh", json!({"token": "not.a.token"})).await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    // The new token grants room:1 only, for an hour: room:2 is left; the subscription token's
    // topic stays while that token is good; the client is told to list its tools again.
    let exp = now_secs() + 3600;
    let fresh = token_with(Claims {
        exp: Some(exp),
        ..granting("alice", &[("room:1", &["sub", "pub"])], &[])
    });
    let r = kept.call("refresh", json!({ "token": fresh })).await;
    assert_eq!(r["result"]["expiresAt"], exp, "{r}");
    assert_eq!(r["result"]["revoked"], json!(["room:2"]), "{r}");
    assert!(
        kept.take_notification("notifications/tools/list_changed")
            .is_some()
    );
    assert_forbidden(
        &kept
            .call("publish", json!({"topic": "room:2", "data": 1}))
            .await,
        "pub",
        "room:2",
    );

    // The socket without a refresh closes with 1008 at its token's expiry...
    assert_eq!(lapsed.read_close().await, 1008);
    assert!(now_secs() >= t0 + 5);
    // ...and the refreshed one outlives it, and still receives, as does everyone else.
    still_delivers(&mut carol, &mut kept, "room:1", 1).await;
    assert_eq!(carol.next_event().await["data"]["n"], 1);
    // By now the subscription token has expired: the next refresh leaves its topic.
    let r = kept.call("refresh", json!({ "token": fresh })).await;
    assert_eq!(r["result"]["revoked"], json!(["private:alice"]), "{r}");

    // A refresh that names another subject: -32001, then close 1008.
    let r = kept
        .call("refresh", json!({ "token": token("mallory") }))
        .await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    assert_eq!(kept.read_close().await, 1008);
    let mut dave = connect(
        &gw,
        &token_with(granting("dave", &[("room:*", &["pub"])], &[])),
    )
    .await;
    still_delivers(&mut dave, &mut carol, "room:1", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_rechecks_what_the_new_token_allows() {
    let redis = RedisServer::start().await;
    let gw = GatewayProcess::start_secured(
        &redis.url(),
        "gw",
        &[
            "--jwt-secret",
            SECRET,
            "--allow",
            "open:*=sub,pub",
            "--history",
            "*=100",
        ],
    )
    .await;
    let granted = token_with(granting("alice", &[("room:*", &["sub"])], &[]));
    let mut first = WsClient::connect(&gw.ws_url()).await;
    let hello = first.call("hello", json!({ "token": granted })).await;
    let id = hello["result"]["session"].as_str().unwrap().to_owned();
    assert_ok(&first.call("subscribe", json!({"topic": "room:1"})).await);
    assert_ok(&first.call("subscribe", json!({"topic": "open:1"})).await);
    first.close(1000).await;

    // Back with a token that no longer grants room:*: open:1 is restored, room:1 is not, and
    // the session stops naming it.
    let mut back = WsClient::connect(&gw.ws_url()).await;
    let r = back
        .call("hello", json!({"token": token("alice"), "session": id}))
        .await;
    assert_eq!(r["result"]["resumed"], true, "{r}");
    let subs = r["result"]["subscriptions"].as_array().unwrap().clone();
    let of = |t: &str| subs.iter().find(|s| s["topic"] == t).cloned().unwrap();
    assert_eq!(of("room:1")["recovered"], false, "{r}");
    assert!(of("room:1").get("position").is_none(), "{r}");
    assert!(of("open:1")["position"].is_string(), "{r}");
    eventually("the session to forget room:1", || {
        let redis = &redis;
        let id = id.clone();
        async move { (!redis.session_fields(&id).await.contains_key("t:room:1")).then_some(()) }
    })
    .await;
    redis.publish("room:1", r#""not for alice""#).await;
    redis.publish("open:1", r#""marker""#).await;
    assert_eq!(back.next_event().await["data"], "marker");
}

/// Sends a WebSocket upgrade request by hand and returns the HTTP status.
async fn upgrade_status(addr: SocketAddr, version: &str, origin: Option<&str>) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    let req = format!(
        "GET /ws {version}\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{origin}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_admin_port_and_http_versions() {
    let redis = RedisServer::start().await;
    // Default: the gateway's own origin only.
    let strict = GatewayProcess::start(&redis.url(), "gw-strict", &[]).await;
    let own = format!("http://{}", strict.addr);
    assert_eq!(upgrade_status(strict.addr, "HTTP/1.1", None).await, 101);
    assert_eq!(
        upgrade_status(strict.addr, "HTTP/1.1", Some(&own)).await,
        101
    );
    assert_eq!(
        upgrade_status(strict.addr, "HTTP/1.1", Some("https://evil.example")).await,
        403
    );
    assert_eq!(
        upgrade_status(strict.addr, "HTTP/1.1", Some("null")).await,
        403
    );
    // Listed origins, exactly or by pattern.
    let listed = GatewayProcess::start(
        &redis.url(),
        "gw-listed",
        &[
            "--allowed-origin",
            "https://app.example.com",
            "--allowed-origin",
            "https://*.example.org",
        ],
    )
    .await;
    for (origin, status) in [
        ("https://app.example.com", 101),
        ("https://a.example.org", 101),
        ("https://app.example.com.evil.example", 403),
        ("http://app.example.com", 403),
        ("https://evil.example", 403),
    ] {
        assert_eq!(
            upgrade_status(listed.addr, "HTTP/1.1", Some(origin)).await,
            status,
            "{origin}"
        );
    }
    // An HTTP/1.0 upgrade is refused.
    assert_eq!(upgrade_status(listed.addr, "HTTP/1.0", None).await, 400);
    // A refused page does not disturb a connected client.
    let mut c = WsClient::connect(&strict.ws_url()).await;
    c.hello().await;
    assert_eq!(
        upgrade_status(strict.addr, "HTTP/1.1", Some("https://evil.example")).await,
        403
    );
    assert_eq!(c.call("ping", json!({})).await["result"], json!({}));

    // /metrics on the admin port only; health on both.
    assert_eq!(http_get(strict.addr, "/metrics").await.unwrap().0, 404);
    assert_eq!(
        http_get(strict.admin_addr, "/metrics").await.unwrap().0,
        200
    );
    for addr in [strict.addr, strict.admin_addr] {
        assert_eq!(http_get(addr, "/healthz").await.unwrap().0, 200);
        assert_eq!(http_get(addr, "/readyz").await.unwrap().0, 200);
    }
    assert_eq!(http_get(strict.admin_addr, "/ws").await.unwrap().0, 404);
    let refused = metric(strict.admin_addr, "switchboard_origins_refused_total").await;
    assert!(refused >= 3.0, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_deny_and_open_mode() {
    let redis = RedisServer::start().await;
    // Tokens and no rule: nothing is allowed.
    let closed =
        GatewayProcess::start_secured(&redis.url(), "gw-closed", &["--jwt-secret", SECRET]).await;
    let mut alice = connect(&closed, &token("alice")).await;
    assert_forbidden(
        &alice.call("subscribe", json!({"topic": "chat:1"})).await,
        "sub",
        "chat:1",
    );
    assert_forbidden(
        &alice
            .call("publish", json!({"topic": "chat:1", "data": 1}))
            .await,
        "pub",
        "chat:1",
    );
    assert_eq!(
        alice.call("tools/list", json!({})).await["result"]["tools"],
        json!([])
    );
    // Anonymous clients are not let in without --allow-anonymous.
    let mut anon = WsClient::connect(&closed.ws_url()).await;
    let r = anon.call("hello", json!({})).await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    assert!(matches!(anon.read().await, Read::Close(1008, _)));

    // --allow-anonymous and no rule: open, as before.
    let open = GatewayProcess::start(&redis.url(), "gw-open", &[]).await;
    let mut a = WsClient::connect(&open.ws_url()).await;
    a.hello().await;
    assert_ok(&a.call("subscribe", json!({"topic": "anything:1"})).await);
    assert_ok(
        &a.call("publish", json!({"topic": "anything:1", "data": 1}))
            .await,
    );
    let ev = a.next_event().await;
    assert_eq!(ev["from"], "anonymous", "{ev}");
    // A subscription token opens no connection.
    let sub_token = token_with(Claims {
        topic: Some("chat:1".into()),
        ..Claims::subject("alice")
    });
    let mut c = WsClient::connect(&closed.ws_url()).await;
    let r = c.call("hello", json!({ "token": sub_token })).await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    assert_eq!(c.read_close().await, 1008);

    // --allow-anonymous with a rule: anonymous clients get the rules, nothing more.
    let ruled = GatewayProcess::start(&redis.url(), "gw-ruled", &["--allow", "chat:*=sub"]).await;
    let mut a = WsClient::connect(&ruled.ws_url()).await;
    a.hello().await;
    assert_ok(&a.call("subscribe", json!({"topic": "chat:1"})).await);
    assert_forbidden(
        &a.call("publish", json!({"topic": "chat:1", "data": 1}))
            .await,
        "pub",
        "chat:1",
    );
    assert_eq!(
        metric(ruled.admin_addr, "switchboard_forbidden_total").await,
        1.0
    );
    // A refused notification gets no answer, and is counted too.
    a.send_text(
        json!({"jsonrpc": "2.0", "method": "publish", "params": {"topic": "chat:1", "data": 2}})
            .to_string(),
    )
    .await;
    assert_eq!(a.call("ping", json!({})).await["result"], json!({}));
    assert_eq!(
        metric(ruled.admin_addr, "switchboard_forbidden_total").await,
        2.0
    );
    // A token may not pass for the anonymous clients there.
    let ruled_keys = GatewayProcess::start(
        &redis.url(),
        "gw-ruled-keys",
        &["--jwt-secret", SECRET, "--allow", "chat:*=sub"],
    )
    .await;
    let mut c = WsClient::connect(&ruled_keys.ws_url()).await;
    let r = c
        .call("hello", json!({ "token": token("anonymous") }))
        .await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    let mut c = WsClient::connect(&ruled_keys.ws_url()).await;
    c.hello().await;
}
