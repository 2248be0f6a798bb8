//! [`Script`]: a client program in another language (a Node, browser or Python scenario of the
//! SDK tests) run as a child process and driven step by step.
//!
//! The program reports on stdout, one JSON object per line, each with a `step` naming what
//! happened (`{"step":"ready","node":"gw-a"}`); lines that are not JSON objects are echoed to
//! the test's stderr and skipped. The test answers or commands on its stdin, also one JSON
//! object per line. A report `{"step":"error","message":...}` fails the test at once, and so
//! does the program's exit while a step is awaited (its stderr goes to the test's).
//!
//! So a Rust test owns the real parts (Redis, gateway processes it kills with `-9`, a worker,
//! a backend publishing) and the scenario owns the client under test.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::DEADLINE;

/// A scenario program, killed on drop.
pub struct Script {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Script {
    /// Starts `program args...` in `dir` with `env` added to the environment.
    pub fn spawn(
        program: &Path,
        args: &[&str],
        dir: &Path,
        env: &[(&str, String)],
    ) -> std::io::Result<Script> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        Ok(Script {
            name: format!("{} {}", program.display(), args.join(" ")),
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// The next report (any step), within [`DEADLINE`].
    pub async fn next(&mut self) -> Value {
        self.next_within(DEADLINE).await
    }

    /// The next report (any step), within `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> Value {
        let name = self.name.clone();
        let read = async {
            loop {
                let line = match self.lines.next_line().await {
                    Ok(Some(line)) => line,
                    Ok(None) => {
                        let status = self.child.wait().await;
                        panic!("{name} exited ({status:?}) while a report was awaited");
                    }
                    Err(e) => panic!("{name}: reading its stdout: {e}"),
                };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) if v.is_object() => {
                        if v["step"] == "error" {
                            panic!("{name} reported an error: {v}");
                        }
                        return v;
                    }
                    _ => eprintln!("[{name}] {line}"),
                }
            }
        };
        tokio::time::timeout(limit, read)
            .await
            .unwrap_or_else(|_| panic!("{name}: no report within {limit:?}"))
    }

    /// Skips reports until one whose `step` is `step`, within [`DEADLINE`]; returns it.
    pub async fn step(&mut self, step: &str) -> Value {
        self.step_within(step, DEADLINE).await
    }

    /// [`step`](Self::step) within `limit`.
    pub async fn step_within(&mut self, step: &str, limit: Duration) -> Value {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let v = self.next_within(left.max(Duration::from_millis(1))).await;
            if v["step"] == step {
                return v;
            }
        }
    }

    /// Sends one command line to the program's stdin.
    pub async fn send(&mut self, command: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        let mut line = command.to_string();
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to script");
        stdin.flush().await.expect("flush script stdin");
    }

    /// Closes stdin and waits for the program to exit, within [`DEADLINE`]; asserts success.
    pub async fn finish(mut self) {
        drop(self.stdin.take());
        // Reports still unread are echoed, so a failing assertion in the program shows.
        let name = self.name.clone();
        let drain = async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                eprintln!("[{name}] {line}");
            }
            self.child.wait().await
        };
        let status = tokio::time::timeout(DEADLINE, drain)
            .await
            .unwrap_or_else(|_| panic!("{name} did not exit"))
            .expect("wait for script");
        assert!(status.success(), "{name} exited with {status}");
    }
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// Node 22 (its built-in `WebSocket`), from the npm package `node` that
/// `tests/conformance` pins and `scripts/test` installs; panics saying so when it is missing.
pub fn node22() -> PathBuf {
    let node = repo_root().join("tests/conformance/node_modules/node/bin/node");
    assert!(
        node.exists(),
        "Node 22 is missing at {}: run `npm ci --prefix tests/conformance`",
        node.display()
    );
    node
}
