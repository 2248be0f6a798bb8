//! Token keys end to end: a real `switchboard gateway` against a real `redis-server`, verifying
//! tokens with the keys of a JWKS the test serves over HTTP (standing in for an identity
//! provider), over real WebSockets: RS256 and ES256 tokens at `hello` and in the upgrade's
//! `Authorization: Bearer`; a key added under a new kid is used without a restart; an outage of
//! the JWKS keeps the last good keys; `--jwt-audience`, `--jwt-issuer`, `nbf` and `exp` are
//! enforced. Every refusal is -32001 at `hello` (1008 at the upgrade), closes the socket with
//! 1008, and disturbs no other client of the same gateway.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use switchboard_core::auth::{self, Algorithm, Audience, Claims, SigningKey};
use switchboard_core::clock::now_secs;
use switchboard_harness::{GatewayProcess, RedisServer, WsClient, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A test key pair's private half (core/tests/fixtures/keys).
fn private_key(file: &str, kid: &str) -> SigningKey {
    let path = format!(
        "{}/../core/tests/fixtures/keys/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let pem = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    SigningKey::from_pem(&pem, None)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .with_kid(kid)
}

fn jwk(key: &SigningKey) -> Value {
    key.public_jwk().expect("a public JWK")
}

/// What the JWKS server answers.
#[derive(Clone)]
enum Answer {
    Keys(Vec<Value>),
    Status(u16),
}

/// A tiny identity provider: answers every request with the current answer, counting them.
struct JwksServer {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(Answer::Keys(keys)));
        let hits = Arc::new(AtomicUsize::new(0));
        let (a, h) = (answer.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (a, h) = (a.clone(), h.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let answer = a.lock().unwrap().clone();
                    let (status, body) = match answer {
                        Answer::Keys(keys) => (200, json!({ "keys": keys }).to_string()),
                        Answer::Status(code) => (code, "oops".to_owned()),
                    };
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        JwksServer {
            addr,
            answer,
            hits,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    fn serve(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Claims for `sub`, valid for a minute.
fn claims(sub: &str) -> Claims {
    let now = now_secs();
    Claims {
        exp: Some(now + 60),
        iat: Some(now),
        ..Claims::subject(sub)
    }
}

fn token(key: &SigningKey, claims: &Claims) -> String {
    auth::mint_with(key, claims).expect("mint")
}

/// Opens a socket and says `hello` with `token`: the reply.
async fn hello_with(gw: &GatewayProcess, token: &str) -> (WsClient, Value) {
    let mut c = WsClient::connect(&gw.ws_url()).await;
    let r = c.call("hello", json!({ "token": token })).await;
    (c, r)
}

async fn accepted_at_hello(gw: &GatewayProcess, token: &str) -> WsClient {
    let (c, r) = hello_with(gw, token).await;
    assert!(r["result"]["session"].is_string(), "refused: {r}");
    c
}

async fn refused_at_hello(gw: &GatewayProcess, token: &str, what: &str) {
    let (mut c, r) = hello_with(gw, token).await;
    assert_eq!(r["error"]["code"], -32001, "{what}: {r}");
    assert_eq!(c.read_close().await, 1008, "{what}");
}

async fn connect_bearer(gw: &GatewayProcess, token: &str) -> WsClient {
    WsClient::connect_with(
        &gw.ws_url(),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

async fn accepted_at_upgrade(gw: &GatewayProcess, token: &str) -> WsClient {
    let mut c = connect_bearer(gw, token).await;
    let r = c.call("hello", json!({})).await;
    assert!(r["result"]["session"].is_string(), "refused: {r}");
    c
}

async fn refused_at_upgrade(gw: &GatewayProcess, token: &str, what: &str) {
    let mut c = connect_bearer(gw, token).await;
    assert_eq!(c.read_close().await, 1008, "{what}");
}

/// `publisher` (who said hello as `sub`) publishes to the watched topic, and `watcher` gets it
/// from `sub`: the token stood for who it says, and the watcher is still served.
async fn publishes_as(publisher: &mut WsClient, watcher: &mut WsClient, sub: &str, n: u64) {
    let r = publisher
        .call("publish", json!({"topic": "chat:room", "data": {"n": n}}))
        .await;
    assert!(r.get("result").is_some(), "publish refused: {r}");
    let event = watcher.next_event().await;
    assert_eq!(event["data"]["n"], n, "{event}");
    assert_eq!(event["from"], sub, "{event}");
}

/// A gateway verifying with the JWKS only (no anonymous client), every topic open to whoever
/// has a good token, plus `extra` flags.
async fn gateway(redis: &RedisServer, jwks: &JwksServer, extra: &[&str]) -> GatewayProcess {
    let url = jwks.url();
    let mut flags = vec![
        "--jwt-jwks-url",
        &url,
        "--jwt-jwks-min-refresh",
        "200ms",
        "--allow",
        "*=sub,pub",
    ];
    flags.extend_from_slice(extra);
    GatewayProcess::start_secured(&redis.url(), "gw-keys", &flags).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_rotate_without_a_restart_and_survive_an_outage() {
    let rsa = private_key("rsa1.key", "rsa-1");
    let ec = private_key("ec256.key", "ec-1");
    assert_eq!((rsa.alg(), ec.alg()), (Algorithm::RS256, Algorithm::ES256));
    let server = JwksServer::start(vec![jwk(&rsa), jwk(&ec)]).await;
    let redis = RedisServer::start().await;
    let gw = gateway(&redis, &server, &["--jwt-jwks-refresh", "300ms"]).await;
    assert!(server.hits() >= 1, "the JWKS is fetched at start");

    // A client that behaves, watching a topic all along.
    let mut watcher = accepted_at_hello(&gw, &token(&rsa, &claims("watcher"))).await;
    let r = watcher
        .call("subscribe", json!({"topic": "chat:room"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");

    // RS256 and ES256, at hello and at the upgrade.
    let mut n = 0;
    for (key, sub) in [(&rsa, "rita"), (&ec, "eve")] {
        let mut c = accepted_at_hello(&gw, &token(key, &claims(sub))).await;
        n += 1;
        publishes_as(&mut c, &mut watcher, sub, n).await;
        let mut c = accepted_at_upgrade(&gw, &token(key, &claims(sub))).await;
        n += 1;
        publishes_as(&mut c, &mut watcher, sub, n).await;
    }

    // Not a key of the set: refused, at hello and at the upgrade.
    let rsa2 = private_key("rsa2.key", "rsa-2");
    let newcomer = token(&rsa2, &claims("nina"));
    refused_at_hello(&gw, &newcomer, "a kid the JWKS does not have").await;
    refused_at_upgrade(&gw, &newcomer, "a kid the JWKS does not have").await;
    // An RSA key's token under the EC key's kid: the kid picks the key, which does not fit.
    let mislabeled = token(&private_key("rsa1.key", "ec-1"), &claims("mallory"));
    refused_at_hello(&gw, &mislabeled, "RS256 under an EC kid").await;
    // The classic confusion: HS256 "signed" with the RSA public key as the secret.
    let public_pem = {
        let path = format!(
            "{}/../core/tests/fixtures/keys/rsa1.pub",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(path).unwrap()
    };
    let confused = SigningKey::secret(Algorithm::HS256, &public_pem)
        .unwrap()
        .with_kid("rsa-1");
    refused_at_hello(&gw, &token(&confused, &claims("mallory")), "alg confusion").await;

    // The provider rotates: the new key under a new kid is used without a restart.
    server.serve(Answer::Keys(vec![jwk(&rsa), jwk(&ec), jwk(&rsa2)]));
    let url = gw.ws_url();
    eventually("the new kid's token to be accepted", async || {
        let mut c = WsClient::connect(&url).await;
        let r = c.call("hello", json!({ "token": newcomer })).await;
        r["result"]["session"].is_string().then_some(())
    })
    .await;
    let mut c = accepted_at_upgrade(&gw, &newcomer).await;
    n += 1;
    publishes_as(&mut c, &mut watcher, "nina", n).await;

    // The provider fails: the gateway keeps fetching (every 300 ms), and keeps the last keys.
    server.serve(Answer::Status(500));
    let before = server.hits();
    eventually("the gateway to fetch the failing JWKS twice", async || {
        (server.hits() >= before + 2).then_some(())
    })
    .await;
    for (key, sub) in [(&rsa, "rita"), (&ec, "eve"), (&rsa2, "nina")] {
        let mut c = accepted_at_hello(&gw, &token(key, &claims(sub))).await;
        n += 1;
        publishes_as(&mut c, &mut watcher, sub, n).await;
        accepted_at_upgrade(&gw, &token(key, &claims(sub))).await;
    }
    // A kid the provider never served is still refused during the outage.
    let stranger = token(&private_key("ed25519.key", "ed-9"), &claims("sam"));
    refused_at_hello(&gw, &stranger, "an unknown kid during the outage").await;

    // Through all of it, the first client was served.
    let mut c = accepted_at_hello(&gw, &token(&ec, &claims("eve"))).await;
    publishes_as(&mut c, &mut watcher, "eve", n + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_issuer_nbf_and_exp_are_enforced() {
    let rsa = private_key("rsa1.key", "rsa-1");
    let ec = private_key("ec256.key", "ec-1");
    let server = JwksServer::start(vec![jwk(&rsa), jwk(&ec)]).await;
    let redis = RedisServer::start().await;
    let gw = gateway(
        &redis,
        &server,
        &[
            "--jwt-audience",
            "switchboard",
            "--jwt-audience",
            "switchboard-staging",
            "--jwt-issuer",
            "https://idp.test/",
        ],
    )
    .await;
    let good = |sub: &str| Claims {
        aud: Some(Audience::One("switchboard".into())),
        iss: Some("https://idp.test/".into()),
        ..claims(sub)
    };

    let mut watcher = accepted_at_hello(&gw, &token(&rsa, &good("watcher"))).await;
    let r = watcher
        .call("subscribe", json!({"topic": "chat:room"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");

    // The right audience (alone, or among others) and issuer: accepted.
    let mut c = accepted_at_hello(&gw, &token(&ec, &good("eve"))).await;
    publishes_as(&mut c, &mut watcher, "eve", 1).await;
    let among = Claims {
        aud: Some(Audience::Many(vec![
            "other-api".into(),
            "switchboard-staging".into(),
        ])),
        ..good("rita")
    };
    let mut c = accepted_at_upgrade(&gw, &token(&rsa, &among)).await;
    publishes_as(&mut c, &mut watcher, "rita", 2).await;

    let now = now_secs();
    let refused = [
        (
            "another audience",
            Claims {
                aud: Some(Audience::One("other-api".into())),
                ..good("mallory")
            },
        ),
        (
            "no audience",
            Claims {
                aud: None,
                ..good("mallory")
            },
        ),
        (
            "another issuer",
            Claims {
                iss: Some("https://evil.test/".into()),
                ..good("mallory")
            },
        ),
        (
            "no issuer",
            Claims {
                iss: None,
                ..good("mallory")
            },
        ),
        (
            "nbf an hour ahead",
            Claims {
                nbf: Some(now + 3600),
                ..good("mallory")
            },
        ),
        (
            "expired an hour ago",
            Claims {
                exp: Some(now - 3600),
                ..good("mallory")
            },
        ),
    ];
    for (what, claims) in &refused {
        for key in [&rsa, &ec] {
            refused_at_hello(&gw, &token(key, claims), what).await;
            refused_at_upgrade(&gw, &token(key, claims), what).await;
        }
    }
    // A token that was good a moment ago still is: nbf just past, within the leeway.
    let fresh = Claims {
        nbf: Some(now_secs()),
        ..good("nora")
    };
    let mut c = accepted_at_hello(&gw, &token(&rsa, &fresh)).await;
    publishes_as(&mut c, &mut watcher, "nora", 3).await;

    // The watcher was served through every refusal.
    let mut c = accepted_at_hello(&gw, &token(&ec, &good("eve"))).await;
    publishes_as(&mut c, &mut watcher, "eve", 4).await;
}
