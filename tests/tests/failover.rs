//! Nothing lost when a node dies, through the client library, with real gateway processes on a
//! real Redis: a backend publishes history events at a steady rate while the node a client is on
//! is killed with SIGKILL, or while both nodes are restarted one after the other with SIGTERM
//! (drain, 1012); every client ends up with every event exactly once, in order.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use switchboard_client::{Session, SessionEvent, SessionEvents, SessionOptions};
use switchboard_harness::{GatewayProcess, RedisServer, eventually};

const TOPIC: &str = "h:feed";
/// How long a client may take to collect everything once the publisher is done.
const COLLECT: Duration = Duration::from_secs(30);

/// Gateway flags: history on `h:*`, quick session saves, a short drain.
const FLAGS: &[&str] = &[
    "--history",
    "h:*=100000",
    "--session-refresh",
    "200ms",
    "--drain-spread",
    "300ms",
    "--shutdown-grace",
    "3000ms",
];

/// How long the publisher waits before trying a refused publish again: a backend's retry
/// policy, not a wait for any state (Redis stays up in these tests; a refusal is an accident).
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Publishes `n` events (`0..n`) on `TOPIC` with `FCALL sb_publish`, one every `every`,
/// retrying each until Redis takes it (as a backend with a retry policy would).
fn publisher(redis: &RedisServer, n: u64, every: Duration) -> tokio::task::JoinHandle<()> {
    let client = redis::Client::open(redis.url()).unwrap();
    tokio::spawn(async move {
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut tick = tokio::time::interval(every);
        for i in 0..n {
            tick.tick().await;
            loop {
                let r: redis::RedisResult<String> = redis::cmd("FCALL")
                    .arg("sb_publish")
                    .arg(1)
                    .arg(format!("sb:h:{{{TOPIC}}}"))
                    .arg(json!(i).to_string())
                    .query_async(&mut conn)
                    .await;
                if r.is_ok() {
                    break;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    })
}

async fn session(urls: &[String]) -> (Session, SessionEvents) {
    let (s, e) = Session::connect(SessionOptions::new(urls.iter().cloned()))
        .await
        .expect("session connects");
    s.subscribe(TOPIC).await.expect("subscribe");
    (s, e)
}

/// Collects event data until `n` events arrived, expecting `from`, `from + 1`, ...; fails on
/// anything out of order or doubled.
async fn collect(events: &mut SessionEvents, from: u64, n: u64) -> Vec<u64> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + COLLECT;
    while (got.len() as u64) < n {
        let e = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events arrived: {got:?}", got.len()));
        match e {
            Some(SessionEvent::Event(ev)) => {
                let i = ev.data.as_u64().expect("numbered events");
                assert_eq!(
                    i,
                    from + got.len() as u64,
                    "out of order or doubled after {got:?}"
                );
                got.push(i);
            }
            Some(SessionEvent::NotRecovered { topic }) => panic!("{topic} not recovered"),
            Some(SessionEvent::Closed { code, reason }) => {
                panic!("session closed for good: {code} {reason}")
            }
            Some(_) => {}
            None => panic!("session ended"),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_clients_node_loses_nothing() {
    let redis = RedisServer::start_persistent().await;
    let a = GatewayProcess::start(&redis.url(), "node-a", FLAGS).await;
    let b = GatewayProcess::start(&redis.url(), "node-b", FLAGS).await;
    let (s, mut events) = session(&[a.ws_url(), b.ws_url()]).await;
    assert_eq!(s.node(), "node-a");

    let publishing = publisher(&redis, 1000, Duration::from_millis(3));
    // Part of the way through, the client's node dies without a word.
    let first = collect(&mut events, 0, 300).await;
    a.signal(Signal::SIGKILL);
    publishing.await.unwrap();
    let rest = collect(&mut events, 300, 700).await;

    assert_eq!(first.len() + rest.len(), 1000);
    assert_eq!(s.node(), "node-b", "resumed on the other node");
    assert!(s.reconnections() >= 1);
    // Nothing more: no late duplicate behind the thousandth.
    let extra = tokio::time::timeout(Duration::from_millis(500), events.recv()).await;
    assert!(
        !matches!(extra, Ok(Some(SessionEvent::Event(_)))),
        "an event after the last one: {extra:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_both_nodes_with_200_clients_loses_nothing() {
    const CLIENTS: usize = 200;
    const EVENTS: u64 = 1000;
    let redis = RedisServer::start_persistent().await;
    let mut a = GatewayProcess::start(&redis.url(), "node-a", FLAGS).await;
    let mut b = GatewayProcess::start(&redis.url(), "node-b", FLAGS).await;
    let (ua, ub) = (a.ws_url(), b.ws_url());

    // Half start on each node; each rotates to the other when its node goes.
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let urls = if i % 2 == 0 {
            [ua.clone(), ub.clone()]
        } else {
            [ub.clone(), ua.clone()]
        };
        clients.push(session(&urls).await);
    }
    let collectors: Vec<_> = clients
        .into_iter()
        .map(|(s, mut e)| {
            tokio::spawn(async move {
                let got = collect(&mut e, 0, EVENTS).await;
                (s.reconnections(), got.len())
            })
        })
        .collect();

    let publishing = publisher(&redis, EVENTS, Duration::from_millis(5));
    // Part of the way through (the restarts fall inside the publishing), node A goes.
    eventually("the first events to be published", || async {
        (redis.history_len(TOPIC).await >= EVENTS / 10).then_some(())
    })
    .await;
    // Node A: SIGTERM, drain (1012, spread), exit; then back on the same address.
    a.signal(Signal::SIGTERM);
    assert!(a.wait().await.success(), "node A drains and exits cleanly");
    a.restart().await;
    // Then node B, whose clients are now all of them.
    b.signal(Signal::SIGTERM);
    assert!(b.wait().await.success(), "node B drains and exits cleanly");
    b.restart().await;
    publishing.await.unwrap();

    let mut moved = 0;
    for c in collectors {
        let (reconnections, n) = c.await.expect("a client failed");
        assert_eq!(n as u64, EVENTS);
        if reconnections > 0 {
            moved += 1;
        }
    }
    // Every client was on a node that restarted at some point.
    assert_eq!(moved, CLIENTS, "every client reconnected at least once");
}
