//! Every scenario of `switchboard-bench`, run once at a tiny size against the real
//! `switchboard` binary built next to it: the benchmarks start gateways and workers with flags
//! of their own, so a setting renamed in the product must not leave a scenario unable to start.
//! These check that each scenario runs and that nothing it measures was lost; they assert no
//! speed (benchmarks measure that, tests never do).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// The bench binary and the `switchboard` binary next to it (`cargo build --workspace` builds
/// both; `scripts/test` does).
fn bins() -> (PathBuf, PathBuf) {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_switchboard-bench"));
    let switchboard = bench.with_file_name(format!("switchboard{}", std::env::consts::EXE_SUFFIX));
    assert!(
        switchboard.exists(),
        "{} is missing: build it first (cargo build -p switchboard; scripts/test does)",
        switchboard.display()
    );
    (bench, switchboard)
}

/// Runs `switchboard-bench <args> --json` and returns its report.
fn run(args: &[&str]) -> Value {
    let (bench, switchboard) = bins();
    let out = Command::new(bench)
        .args(args)
        .arg("--json")
        .arg("--switchboard")
        .arg(switchboard)
        .env("SWITCHBOARD_LOG", "warn")
        .output()
        .expect("run switchboard-bench");
    assert!(
        out.status.success(),
        "switchboard-bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "switchboard-bench {args:?} printed no JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn fanout_delivers_everything_to_switchboard_and_the_floor() {
    let r = run(&[
        "fanout",
        "--compare-floor",
        "--gateways",
        "1",
        "--subscribers",
        "20",
        "--rate",
        "20",
        "--seconds",
        "1",
    ]);
    for side in ["floor", "switchboard"] {
        let s = &r[side];
        assert!(
            s["expected_deliveries"].as_u64().unwrap() > 0,
            "{side}: {s}"
        );
        assert_eq!(
            s["received_deliveries"], s["expected_deliveries"],
            "{side}: {s}"
        );
        assert_eq!(s["out_of_order"], 0, "{side}: {s}");
    }
}

#[test]
fn idle_connections_each_get_their_event() {
    let r = run(&["idle", "--connections", "200", "--topics", "10"]);
    assert_eq!(r["established"], 200, "{r}");
    assert_eq!(r["delivery_received"], 200, "{r}");
    // Upgrade only: the gateway runs with a long hello timeout (a flag of the product's).
    let r = run(&["idle", "--connections", "50", "--stage", "upgrade"]);
    assert_eq!(r["established"], 50, "{r}");
}

#[test]
fn connect_verifies_every_hello() {
    // HMAC tokens, and tokens an identity provider's key signs.
    for alg in ["hs256", "rs256", "es256", "eddsa"] {
        let r = run(&[
            "connect",
            "--seconds",
            "1",
            "--warmup-ms",
            "200",
            "--concurrency",
            "4",
            "--alg",
            alg,
        ]);
        assert!(r["hellos"].as_u64().unwrap() > 0, "{alg}: {r}");
        assert_eq!(r["errors"], 0, "{alg}: {r}");
        assert_eq!(r["alg"], alg, "{r}");
    }
}

#[test]
fn calls_are_answered_in_every_mode() {
    for mode in ["hit", "miss", "coalesce"] {
        let r = run(&[
            "calls",
            "--mode",
            mode,
            "--connections",
            "2",
            "--in-flight",
            "2",
            "--seconds",
            "1",
        ]);
        assert!(r["calls"].as_u64().unwrap() > 0, "{mode}: {r}");
        assert_eq!(r["errors"], 0, "{mode}: {r}");
    }
}

#[test]
fn resume_after_a_kill_loses_nothing() {
    let r = run(&[
        "resume",
        "--clients",
        "20",
        "--topics",
        "5",
        "--replay-events",
        "100",
        "--replay-rounds",
        "1",
    ]);
    assert_eq!(r["resumed"], 20, "{r}");
    assert_eq!(r["not_resumed"], 0, "{r}");
    assert_eq!(r["incomplete"], 0, "{r}");
}
