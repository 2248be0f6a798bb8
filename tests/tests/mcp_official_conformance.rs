//! The official MCP conformance suite (npm `@modelcontextprotocol/conformance`, pinned in
//! `tests/conformance/package.json` with the Node 22 it needs; `scripts/test` installs both)
//! against a real gateway process, Redis and a worker process hosting the tools its server
//! scenarios call (`tests/conformance/tools.toml`, command tools). Each scenario runs as the
//! suite's own CLI (`conformance server --url ... --scenario NAME -o DIR`); its checks are read
//! from the `checks.json` it writes, and the test fails with the suite's output when one failed.
//!
//! In scope: what the gateway serves, tools. Not run: the resources, prompts, logging,
//! completion, sampling and elicitation scenarios (nothing of those is served over `/mcp`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use switchboard_harness::{GatewayProcess, RedisServer, WorkerProcess, WsClient};

/// How long one scenario may take (the suite's own timeouts are 10 s at most per stream).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);

/// The server scenarios run in CI, by the suite's names (`conformance list`), each with the
/// checks it records as passed against this gateway (the suite's verdict counts only failures,
/// so a scenario whose checks stopped applying would pass unseen). `server-sse-polling` records
/// its priming event, `retry` field and resumption with `Last-Event-ID` (the gateway closes
/// call streams after `--mcp-sse-poll-after`, 100 ms here); `server-sse-multiple-streams`
/// records that three concurrent requests on one session are all answered (the gateway
/// answers `tools/list` as JSON, which the revisions allow, and streams tool calls).
const SCENARIOS: [(&str, usize); 14] = [
    ("server-initialize", 1),
    ("ping", 1),
    ("tools-list", 1),
    ("tools-call-simple-text", 1),
    ("tools-call-image", 1),
    ("tools-call-audio", 1),
    ("tools-call-embedded-resource", 1),
    ("tools-call-mixed-content", 1),
    ("tools-call-error", 1),
    ("tools-call-with-progress", 1),
    ("json-schema-2020-12", 4),
    ("server-sse-polling", 3),
    ("server-sse-multiple-streams", 1),
    ("dns-rebinding-protection", 2),
];

fn conformance_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance")
}

/// The suite's CLI and the Node 22 that runs it.
fn suite() -> (PathBuf, PathBuf) {
    let dir = conformance_dir().join("node_modules");
    let node = dir.join("node/bin/node");
    let cli = dir.join("@modelcontextprotocol/conformance/dist/index.js");
    assert!(
        node.is_file() && cli.is_file(),
        "the conformance suite is not installed: run scripts/test (npm ci --prefix tests/conformance)"
    );
    (node, cli)
}

/// A gateway with anonymous clients (the suite sends no token), a worker hosting the suite's
/// tools, and the Redis they share.
struct Backend {
    gateway: GatewayProcess,
    _worker: WorkerProcess,
    _redis: RedisServer,
}

impl Backend {
    async fn start() -> Backend {
        let redis = RedisServer::start().await;
        let worker = WorkerProcess::start_in(
            &redis,
            "conformance-tools",
            &conformance_dir(),
            &["--tools", "tools.toml"],
        )
        .await;
        let gateway = GatewayProcess::start(
            &redis.url(),
            "gw",
            &[
                "--registry-interval",
                "100ms",
                "--mcp-sse-poll-after",
                "100ms",
                "--mcp-sse-retry",
                "100ms",
            ],
        )
        .await;
        let mut c = WsClient::connect(&gateway.ws_url()).await;
        c.hello().await;
        c.wait_for_tool("json_schema_2020_12_tool").await;
        Backend {
            gateway,
            _worker: worker,
            _redis: redis,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.gateway.addr)
    }
}

/// One scenario's run: the suite's exit status, its output, and the checks it recorded.
struct Run {
    success: bool,
    output: String,
    checks: Vec<Value>,
}

impl Run {
    /// The checks of `status` (`SUCCESS`, `FAILURE`, `WARNING`, `INFO`).
    fn with_status(&self, status: &str) -> Vec<&Value> {
        self.checks
            .iter()
            .filter(|c| c["status"] == status)
            .collect()
    }

    /// The status of the (last) check `id`.
    fn status_of(&self, id: &str) -> Option<&str> {
        self.checks
            .iter()
            .rev()
            .find(|c| c["id"] == id)
            .and_then(|c| c["status"].as_str())
    }
}

/// Runs `scenario` against `url` with the suite's CLI.
async fn run(url: &str, scenario: &str) -> Run {
    let (node, cli) = suite();
    let out_dir = std::env::temp_dir().join(format!(
        "switchboard-conformance-{}-{scenario}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&out_dir);
    let child = tokio::process::Command::new(node)
        .arg(cli)
        .args(["server", "--url", url, "--scenario", scenario, "-o"])
        .arg(&out_dir)
        .current_dir(conformance_dir())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(SCENARIO_TIMEOUT, child)
        .await
        .unwrap_or_else(|_| panic!("{scenario} did not finish within {SCENARIO_TIMEOUT:?}"))
        .expect("the conformance suite runs");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let checks = read_checks(&out_dir)
        .unwrap_or_else(|| panic!("{scenario} wrote no checks.json:\n{output}"));
    let _ = std::fs::remove_dir_all(&out_dir);
    Run {
        success: out.status.success(),
        output,
        checks,
    }
}

/// The checks of the one result folder the suite wrote under `dir`.
fn read_checks(dir: &Path) -> Option<Vec<Value>> {
    let entry = std::fs::read_dir(dir).ok()?.flatten().next()?;
    let text = std::fs::read_to_string(entry.path().join("checks.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Checks a scenario must record as passed, by name, beyond its count.
const REQUIRED: [(&str, &[&str]); 1] = [(
    "server-sse-polling",
    &[
        "server-sse-priming-event",
        "server-sse-retry-field",
        "server-sse-disconnect-resume",
    ],
)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_suite_passes_its_server_scenarios_for_tools() {
    let backend = Backend::start().await;
    let url = backend.url();
    let mut failed = Vec::new();
    for (scenario, checks) in SCENARIOS {
        let r = run(&url, scenario).await;
        let failures = r.with_status("FAILURE");
        let passed = r.with_status("SUCCESS").len();
        let missing: Vec<&str> = REQUIRED
            .iter()
            .filter(|(name, _)| *name == scenario)
            .flat_map(|(_, ids)| ids.iter().copied())
            .filter(|id| r.status_of(id) != Some("SUCCESS"))
            .collect();
        if !r.success || !failures.is_empty() || passed < checks || !missing.is_empty() {
            failed.push(format!(
                "{scenario}: exit ok {}, {passed} of {checks} checks passed, not passed: \
                 {missing:?}, failed: {failures:#?}\n{}",
                r.success, r.output
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "conformance scenarios failed:\n{}",
        failed.join("\n")
    );
}
