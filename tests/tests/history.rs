//! Topic history and recovery, on both backends: ids, `sb_publish` from any backend, replay from
//! `since` meeting live events with no gap and no duplicate, and `recovered: false` when the
//! history no longer reaches back.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_core::history::HistoryRule;
use switchboard_gateway::GatewayConfig;
use switchboard_harness::{InProcessGateway, Kind, Store, TestBackend, WsClient, every_backend};
use switchboard_protocol::EventId;

struct Setup {
    gw: InProcessGateway,
    store: Store,
}

async fn setup(kind: Kind) -> Setup {
    let mut config = GatewayConfig::dev("history-node");
    config.tuning.readiness_interval = Duration::from_millis(100);
    config.tuning.history = vec![
        HistoryRule::parse("short:*=5").unwrap(),
        HistoryRule::parse("h:*=1000").unwrap(),
    ];
    let b = TestBackend::start(kind).await;
    let gw = InProcessGateway::start_ready(config, b.backend).await;
    Setup { gw, store: b.store }
}

async fn client(s: &Setup) -> WsClient {
    let mut c = WsClient::connect(&s.gw.ws_url()).await;
    c.hello().await;
    c
}

fn id_of(v: &Value) -> EventId {
    EventId::parse(v.as_str().unwrap_or_else(|| panic!("no id in {v}"))).unwrap()
}

every_backend!(
    history_events_carry_increasing_ids,
    replay_meets_live_without_gap_or_duplicate,
    trimmed_history_is_not_recovered,
);

async fn history_events_carry_increasing_ids(kind: Kind) {
    let s = setup(kind).await;
    let mut sub = client(&s).await;
    let r = sub.call("subscribe", json!({"topic": "h:a"})).await;
    assert!(r["result"].get("position").is_none(), "no history yet: {r}");
    let mut publisher = client(&s).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let r = publisher
            .call("publish", json!({"topic": "h:a", "data": {"n": n}}))
            .await;
        ids.push(id_of(&r["result"]["id"]));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for (n, id) in ids.iter().enumerate() {
        let ev = sub.next_event().await;
        assert_eq!(ev["data"]["n"], n);
        assert_eq!(id_of(&ev["id"]), *id);
    }
    // A topic without a history rule: no id.
    sub.call("subscribe", json!({"topic": "plain"})).await;
    let r = publisher
        .call("publish", json!({"topic": "plain", "data": 1}))
        .await;
    assert!(r["result"].get("id").is_none(), "{r}");
    assert!(sub.next_event().await.get("id").is_none());

    // A later subscriber learns where the topic is.
    let mut late = client(&s).await;
    let r = late.call("subscribe", json!({"topic": "h:a"})).await;
    assert_eq!(id_of(&r["result"]["position"]), ids[2]);

    // Any backend publishes with history through the Redis Function.
    if let Some(redis) = s.store.target() {
        let mut conn = redis.connection().await;
        let id: String = redis::cmd("FCALL")
            .arg("sb_publish")
            .arg(1)
            .arg("sb:h:{h:a}")
            .arg(r#"{"from":"backend"}"#)
            .query_async(&mut conn)
            .await
            .unwrap();
        let ev = sub.next_event().await;
        assert_eq!(ev["data"]["from"], "backend");
        assert_eq!(ev["id"], id.as_str());
        assert!(EventId::parse(&id).unwrap() > ids[2]);
        // Bad arguments are refused before anything is written: MAXLEN or TTL_MS that is not
        // a plain whole number, a key that is not a history key, an event that is not JSON
        // (or a publisher that is not a JSON string).
        for (key, event, maxlen, ttl) in [
            ("sb:h:{h:a}", "{}", "0", "0"),
            ("sb:h:{h:a}", "{}", "1e3", "0"),
            ("sb:h:{h:a}", "{}", "-5", "0"),
            ("sb:h:{h:a}", "{}", "10", "1.5"),
            ("sb:h:{h:a}", "{}", "10", " 5"),
            ("sb:h:{h:a}", "not json", "10", "0"),
            ("sb:h:{h:a}", "{} {}", "10", "0"),
            ("sb:h:{h:a}", "@alice {}", "10", "0"),
            ("sb:h:{h:a}", r#"@"alice"{}"#, "10", "0"),
            ("sb:h:{h:a}", r#"@"alice" nope"#, "10", "0"),
            ("sb:t:{h:a}", "{}", "10", "0"),
            ("sb:h:h:a", "{}", "10", "0"),
            ("sb:h:{h a}", "{}", "10", "0"),
            ("sb:s:{x}", "{}", "10", "0"),
        ] {
            let bad: redis::RedisResult<String> = redis::cmd("FCALL")
                .arg("sb_publish")
                .arg(1)
                .arg(key)
                .arg(event)
                .arg(maxlen)
                .arg(ttl)
                .query_async(&mut conn)
                .await;
            assert!(bad.is_err(), "{key} {event} {maxlen} {ttl}: {bad:?}");
        }
        let len: i64 = redis::cmd("XLEN")
            .arg("sb:h:{h:a}")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(len, 4, "nothing written by the refused calls");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("sb:h:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(keys.iter().all(|k| k.starts_with("sb:h:{h:")), "{keys:?}");
        // A client's event with its publisher, escapes and all, is taken as the gateways write it.
        let ok: String = redis::cmd("FCALL")
            .arg("sb_publish")
            .arg(1)
            .arg("sb:h:{h:a}")
            .arg(r#"@"al\"ice \\" {"x":1}"#)
            .query_async(&mut conn)
            .await
            .unwrap();
        let ev = sub.next_event().await;
        assert_eq!(ev["id"], ok.as_str());
        assert_eq!(ev["from"], "al\"ice \\", "{ev}");
    }
}

async fn replay_meets_live_without_gap_or_duplicate(kind: Kind) {
    let s = setup(kind).await;
    let mut publisher = client(&s).await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let r = publisher
            .call("publish", json!({"topic": "h:seam", "data": {"n": n}}))
            .await;
        ids.push(r["result"]["id"].as_str().unwrap().to_owned());
    }
    // While the client subscribes from event 5, events 20..60 keep arriving live.
    let url = s.gw.ws_url();
    let live = tokio::spawn(async move {
        let mut p = WsClient::connect(&url).await;
        p.hello().await;
        for n in 20..60 {
            p.call("publish", json!({"topic": "h:seam", "data": {"n": n}}))
                .await;
        }
    });
    let mut c = client(&s).await;
    let r = c
        .call("subscribe", json!({"topic": "h:seam", "since": ids[5]}))
        .await;
    assert_eq!(r["result"]["recovered"], true, "{r}");
    let mut seen = Vec::new();
    while seen.last() != Some(&59) {
        let ev = c.next_event().await;
        seen.push(ev["data"]["n"].as_u64().unwrap());
    }
    live.await.unwrap();
    let expected: Vec<u64> = (6..60).collect();
    assert_eq!(seen, expected, "a gap or a duplicate at the seam");
}

async fn trimmed_history_is_not_recovered(kind: Kind) {
    let s = setup(kind).await;
    let mut publisher = client(&s).await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let r = publisher
            .call("publish", json!({"topic": "short:x", "data": {"n": n}}))
            .await;
        ids.push(r["result"]["id"].as_str().unwrap().to_owned());
    }
    // Only the last 5 are kept: from event 2 the history has a hole.
    let mut c = client(&s).await;
    let r = c
        .call("subscribe", json!({"topic": "short:x", "since": ids[2]}))
        .await;
    assert_eq!(r["result"]["recovered"], false, "{r}");
    // From event 16 it is whole: 17, 18, 19 are replayed.
    let mut c = client(&s).await;
    let r = c
        .call("subscribe", json!({"topic": "short:x", "since": ids[16]}))
        .await;
    assert_eq!(r["result"]["recovered"], true, "{r}");
    assert_eq!(r["result"]["position"], ids[19].as_str());
    for n in 17..20 {
        assert_eq!(c.next_event().await["data"]["n"], n);
    }
    // An id this history never gave out vouches for nothing.
    let mut c = client(&s).await;
    let r = c
        .call(
            "subscribe",
            json!({"topic": "short:x", "since": "99999999999999-0"}),
        )
        .await;
    assert_eq!(r["result"]["recovered"], false, "{r}");
    // A bad id is refused; a topic without history cannot recover.
    let r = c
        .call("subscribe", json!({"topic": "short:y", "since": "nope"}))
        .await;
    assert_eq!(r["error"]["code"], -32602);
    let r = c
        .call("subscribe", json!({"topic": "plain", "since": "1-0"}))
        .await;
    assert_eq!(r["result"]["recovered"], false);
}
