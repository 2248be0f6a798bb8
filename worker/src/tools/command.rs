//! Command tools, defined in a TOML tools file (`docs/tools.md`): each call runs the command
//! with the arguments as JSON on stdin and reads the result as JSON from stdout.
//!
//! - stdout: a `CallToolResult` object (with `content`) is passed through; any other JSON value
//!   becomes a structured result; anything else (or a non-zero exit) is an `isError` result,
//!   never a crashed worker. stdout is read up to [`MAX_OUTPUT_BYTES`].
//! - stderr: lines that are JSON objects with `progress` are progress reports; the last
//!   [`STDERR_TAIL_BYTES`] of the rest go into error results.
//! - environment: only [`PASSED_ENV`] from the worker, plus the tool's `env` table.
//! - The command runs in its own process group; when the call is cancelled or times out the
//!   whole group is killed (SIGKILL), grandchildren included.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_core::tools::{CachePolicy, ToolSpec};
use switchboard_protocol::methods::tools::CallToolResult;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use super::{CallContext, Tool, Toolbox, ToolboxError};

/// The most of a command's stdout read; more is an error result.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// How much of a command's stderr is kept for error results.
pub const STDERR_TAIL_BYTES: usize = 4096;
/// The longest stderr line read at once; longer ones are read in pieces.
pub const MAX_STDERR_LINE: usize = 64 * 1024;
pub use super::PASSED_ENV;
/// Default timeout of a command tool.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default calls of one command tool running at once on one worker.
pub const DEFAULT_CONCURRENCY: usize = 4;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolsFile {
    #[serde(default, rename = "tool")]
    tools: Vec<CommandToolDef>,
    /// MCP servers whose tools the worker hosts (`super::mcp`).
    #[serde(default, rename = "mcp")]
    mcp: Vec<super::mcp::McpServerDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandToolDef {
    name: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    description: String,
    /// argv: the program and its arguments (no shell).
    command: Vec<String>,
    #[serde(default = "default_schema")]
    input_schema: Value,
    #[serde(default)]
    annotations: Option<Value>,
    #[serde(default)]
    version: String,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    #[serde(default)]
    cache: CachePolicy,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<String>,
}

fn default_schema() -> Value {
    json!({"type": "object"})
}
fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_concurrency() -> usize {
    DEFAULT_CONCURRENCY
}

/// Reads a tools file, adds its command tools to `toolbox` and returns its MCP servers (to host
/// with [`super::mcp::host`]).
pub fn load_tools_file(
    path: &Path,
    toolbox: &mut Toolbox,
) -> Result<Vec<super::mcp::McpServer>, ToolboxError> {
    let file_err = |why: String| ToolboxError::File {
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    let file: ToolsFile = toml::from_str(&text).map_err(|e| file_err(e.to_string()))?;
    for def in file.tools {
        if def.command.is_empty() {
            return Err(ToolboxError::Invalid {
                name: def.name,
                why: "command is empty".into(),
            });
        }
        if !def.input_schema.is_object() {
            return Err(ToolboxError::Invalid {
                name: def.name,
                why: "input_schema must be a table (a JSON Schema object)".into(),
            });
        }
        let spec = ToolSpec {
            name: def.name.clone(),
            title: def.title,
            description: def.description,
            input_schema: def.input_schema,
            annotations: def.annotations,
            version: def.version,
            cache: def.cache,
            timeout_ms: def.timeout_ms,
        };
        let tool = CommandTool {
            argv: def.command,
            env: def.env,
            cwd: def.cwd,
        };
        toolbox.add(spec, Arc::new(tool), def.concurrency)?;
    }
    super::mcp::check_all(file.mcp)
}

struct CommandTool {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<String>,
}

/// Kills the command's whole process group when the call ends early (cancel, timeout).
struct GroupGuard {
    pgid: Option<i32>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[async_trait]
impl Tool for CommandTool {
    async fn call(&self, arguments: Value, ctx: &CallContext) -> CallToolResult {
        let mut cmd = Command::new(&self.argv[0]);
        // A clean environment: the worker's own (its Redis URL, perhaps with credentials) is not
        // the tool's business. A few basics pass through; the tools file adds the rest.
        cmd.env_clear();
        for key in PASSED_ENV {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        cmd.args(&self.argv[1..])
            .envs(&self.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return CallToolResult::error(format!("could not start the tool: {e}")),
        };
        let mut guard = GroupGuard {
            pgid: child.id().map(|p| p as i32),
        };
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");

        let input = arguments.to_string();
        let write = async move {
            // A tool that does not read its input is not an error.
            let _ = stdin.write_all(input.as_bytes()).await;
            let _ = stdin.shutdown().await;
        };
        let read_out = async move {
            let mut buf = Vec::new();
            let mut limited = stdout.take(MAX_OUTPUT_BYTES as u64 + 1);
            let _ = limited.read_to_end(&mut buf).await;
            buf
        };
        let read_err = async {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            let mut tail: Vec<u8> = Vec::new();
            loop {
                line.clear();
                // Lines are read in bounded pieces, and decoded lossily: a tool writing one huge
                // line, or bytes that are not UTF-8, costs neither memory nor its stderr pipe.
                match (&mut reader)
                    .take(MAX_STDERR_LINE as u64)
                    .read_until(b'\n', &mut line)
                    .await
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&line)
                    && let Some(p) = v.get("progress").and_then(Value::as_f64)
                {
                    let total = v.get("total").and_then(Value::as_f64);
                    let message = v.get("message").and_then(Value::as_str).map(str::to_owned);
                    ctx.progress(p, total, message);
                    continue;
                }
                tail.extend_from_slice(&line);
                if tail.len() > STDERR_TAIL_BYTES {
                    tail.drain(..tail.len() - STDERR_TAIL_BYTES);
                }
            }
            String::from_utf8_lossy(&tail).into_owned()
        };
        let ((), out, err_tail) = tokio::join!(write, read_out, read_err);
        let status = child.wait().await;
        // The process ended by itself: nothing left to kill.
        guard.pgid = None;
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                return CallToolResult::error(format!(
                    "the tool exited with {s}: {}",
                    err_tail.trim()
                ));
            }
            Err(e) => return CallToolResult::error(format!("waiting for the tool failed: {e}")),
        }
        if out.len() > MAX_OUTPUT_BYTES {
            return CallToolResult::error(format!(
                "the tool wrote more than {MAX_OUTPUT_BYTES} bytes"
            ));
        }
        match serde_json::from_slice::<Value>(&out) {
            Ok(v) if v.get("content").is_some_and(Value::is_array) => serde_json::from_value(v)
                .unwrap_or_else(|e| {
                    CallToolResult::error(format!("the tool answered a malformed result: {e}"))
                }),
            Ok(v) => CallToolResult::structured(v),
            Err(e) => CallToolResult::error(format!("the tool did not answer JSON: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn toolbox(toml: &str) -> Toolbox {
        let dir = std::env::temp_dir().join(format!("sb-tools-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tools.toml");
        std::fs::write(&path, toml).unwrap();
        let mut tb = Toolbox::new();
        load_tools_file(&path, &mut tb).unwrap();
        tb
    }

    async fn call(tb: &Toolbox, name: &str, args: Value) -> CallToolResult {
        let (tx, _rx) = mpsc::channel(8);
        let ctx = CallContext::new("w".into(), "t".into(), tx);
        tb.get(name).unwrap().tool.call(args, &ctx).await
    }

    #[tokio::test]
    async fn json_in_json_out() {
        let tb = toolbox(
            r#"
[[tool]]
name = "cat"
command = ["cat"]
input_schema = { type = "object", properties = { a = { type = "integer" } } }
cache = { ttl_ms = 1000, scope = "per-user" }
"#,
        );
        let spec = &tb.get("cat").unwrap().spec;
        assert_eq!(spec.input_schema["properties"]["a"]["type"], "integer");
        assert_eq!(
            spec.cache.scope,
            switchboard_core::tools::CacheScope::PerUser
        );
        assert_eq!(spec.cache.ttl_ms, 1000, "ttl_ms as docs/tools.md writes it");
        let r = call(&tb, "cat", json!({"a": 1})).await;
        assert!(!r.is_error, "{r:?}");
        assert_eq!(r.structured_content, Some(json!({"a": 1})));
    }

    #[tokio::test]
    async fn bad_output_and_failures_are_error_results() {
        let tb = toolbox(
            r#"
[[tool]]
name = "garbage"
command = ["sh", "-c", "cat >/dev/null; echo not-json"]

[[tool]]
name = "exit3"
command = ["sh", "-c", "echo oops >&2; exit 3"]

[[tool]]
name = "missing"
command = ["/nonexistent/program"]
"#,
        );
        let r = call(&tb, "garbage", json!({})).await;
        assert!(r.is_error && r.content[0]["text"].as_str().unwrap().contains("JSON"));
        let r = call(&tb, "exit3", json!({})).await;
        assert!(r.is_error && r.content[0]["text"].as_str().unwrap().contains("oops"));
        let r = call(&tb, "missing", json!({})).await;
        assert!(r.is_error);
    }

    #[tokio::test]
    async fn progress_lines_are_reported() {
        let tb = toolbox(
            r#"
[[tool]]
name = "p"
command = ["sh", "-c", "cat >/dev/null; echo '{\"progress\": 1, \"total\": 2}' >&2; echo '{\"ok\": true}'"]
"#,
        );
        let (tx, mut rx) = mpsc::channel(8);
        let ctx = CallContext::new("w".into(), "t".into(), tx);
        let r = tb.get("p").unwrap().tool.call(json!({}), &ctx).await;
        assert_eq!(r.structured_content, Some(json!({"ok": true})));
        let p = rx.recv().await.unwrap();
        assert_eq!((p.progress, p.total), (1.0, Some(2.0)));
    }

    #[tokio::test]
    async fn clean_environment_and_hostile_stderr() {
        // cargo sets CARGO_MANIFEST_DIR for test runs: the tool must not see it.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let dir = std::env::temp_dir().join(format!("sb-env-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("tool.sh");
        std::fs::write(
            &script,
            concat!(
                "cat >/dev/null\n",
                "printf '\\377\\376 not utf-8\\n' >&2\n",
                "head -c 200000 /dev/zero | tr '\\0' x >&2\n",
                "printf '{\"dir\": \"%s\", \"mine\": \"%s\"}' \"$CARGO_MANIFEST_DIR\" \"$MINE\"\n",
            ),
        )
        .unwrap();
        let tb = toolbox(&format!(
            "[[tool]]\nname = \"env\"\ncommand = [\"sh\", \"{}\"]\nenv = {{ MINE = \"yes\" }}\n",
            script.display()
        ));
        let r = call(&tb, "env", json!({})).await;
        assert!(!r.is_error, "{r:?}");
        assert_eq!(
            r.structured_content,
            Some(json!({"dir": "", "mine": "yes"}))
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("sb-tools-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[[tool]]\nname = \"x\"\ncommand = []\n").unwrap();
        let err = load_tools_file(&path, &mut Toolbox::new()).unwrap_err();
        assert!(err.to_string().contains("command is empty"), "{err}");
        std::fs::write(
            &path,
            "[[tool]]\nname = \"x\"\ncommand = [\"a\"]\nbogus = 1\n",
        )
        .unwrap();
        let err = load_tools_file(&path, &mut Toolbox::new()).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
