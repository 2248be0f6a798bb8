//! The JavaScript client in a real browser: headless Chromium (`/usr/bin/chromium`, or
//! `CHROMIUM`), driven by `clients/js/test/browser.mjs` (puppeteer-core, under Node 22), loads a
//! page that imports the BUILT bundle (`dist/switchboard.min.js`) with `<script type="module">`
//! and connects with the browser's own WebSocket to two gateway processes. A backend publishes
//! history events; the test kills the page's gateway with `-9` mid-stream; the page must have
//! every event exactly once, in order, after resuming its session on the other node.
//!
//! Needs Node 22 (`npm ci --prefix tests/conformance`), the built client with its dev
//! dependencies (`npm ci --prefix clients/js && npm run build --prefix clients/js`) and
//! Debian's `chromium`: without them the test fails saying so.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use switchboard_core::auth::{Claims, mint_claims};
use switchboard_harness::script::{Script, node22, repo_root};
use switchboard_harness::{GatewayProcess, RedisServer};

const SECRET: &str = "js-browser-secret-long-enough-for-hs256";
const N: usize = 200;

#[tokio::test]
async fn a_page_using_the_bundle_resumes_on_the_other_node_with_every_event_once() {
    let node = node22();
    let dir = repo_root().join("clients/js");
    assert!(
        dir.join("dist/switchboard.min.js").exists(),
        "the JS bundle is not built: run `npm ci --prefix clients/js && npm run build --prefix clients/js`"
    );
    assert!(
        dir.join("node_modules/puppeteer-core").exists(),
        "puppeteer-core is missing: run `npm ci --prefix clients/js`"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium (`apt-get install chromium`) or set CHROMIUM"
    );

    // The page's origin must be known before the gateways start (they check `Origin`).
    let mut s = Script::spawn(
        &node,
        &["test/browser.mjs"],
        &dir,
        &[("CHROMIUM", chromium)],
    )
    .expect("spawn the browser driver");
    let port = s.step("serving").await["port"].as_u64().expect("a port");
    let origin = format!("http://127.0.0.1:{port}");
    let flags = [
        "--jwt-secret",
        SECRET,
        "--allow",
        "hist:*=sub,pub",
        "--history",
        "hist:*=10000",
        "--session-refresh",
        "200ms",
        "--allowed-origin",
        origin.as_str(),
    ];
    let redis = RedisServer::start().await;
    let a = GatewayProcess::start_secured(&redis.url(), "gw-a", &flags).await;
    let b = GatewayProcess::start_secured(&redis.url(), "gw-b", &flags).await;
    let token = mint_claims(SECRET.as_bytes(), &Claims::subject("page")).unwrap();
    s.send(&json!({
        "cmd": "open",
        "urls": [a.ws_url(), b.ws_url()],
        "token": token,
        "topic": "hist:b",
    }))
    .await;
    let ready = s.step_within("ready", Duration::from_secs(30)).await;
    assert_eq!(ready["ws"], "function", "the browser's own WebSocket");
    let first_node = ready["node"].as_str().expect("node").to_owned();
    let session = ready["session"].as_str().expect("session").to_owned();

    let mut publisher = redis.publish_history_paced("hist:b", N, Duration::from_millis(5));
    publisher.published(N / 4).await;
    let victim = if first_node == "gw-a" { &a } else { &b };
    victim.signal(Signal::SIGKILL);
    let ids = publisher.finish().await;

    s.send(&json!({"cmd": "collect", "count": N})).await;
    let r = s.step_within("result", Duration::from_secs(40)).await;
    let got: Vec<String> = r["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("an id").to_owned())
        .collect();
    assert_eq!(got, ids, "every event exactly once, in order: {r}");
    let data: Vec<serde_json::Value> = (0..N).map(|i| json!({"n": i})).collect();
    assert_eq!(r["data"], json!(data));
    let states: Vec<&str> = r["states"]
        .as_array()
        .expect("states")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let d = states
        .iter()
        .position(|s| s.starts_with("disconnected"))
        .unwrap_or_else(|| panic!("no disconnect seen: {states:?}"));
    assert!(
        states[d..].contains(&"resumed"),
        "resumed after the kill: {states:?}"
    );
    assert_ne!(r["node"], json!(first_node), "on the other node: {r}");
    assert_eq!(r["session"], json!(session), "the same session: {r}");
    assert!(
        r["userAgent"].as_str().unwrap_or("").contains("Chrome"),
        "{r}"
    );
    s.finish().await;
}
