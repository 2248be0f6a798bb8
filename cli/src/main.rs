//! The `switchboard` command: a thin edge over the libraries. Each subcommand lives in its own
//! file under `commands/`; this file parses the command line (flags, or `SWITCHBOARD_*`
//! variables) and maps failures to exit codes: 64 for an invalid setting (named in the
//! message), 1 for a runtime failure.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for an invalid command line or configuration (EX_USAGE).
const EXIT_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "A horizontally scalable real-time gateway backed by Redis"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process with an in-memory backend (no Redis needed).
    Dev(Box<commands::dev::Args>),
    /// Run a gateway node against Redis.
    ///
    /// Required: --redis URL (SWITCHBOARD_REDIS), and a way to authenticate clients:
    /// --jwt-secret, --jwt-public-key or --jwt-jwks-url, or else --allow-anonymous.
    Gateway(Box<commands::gateway::Args>),
    /// Run a worker node that hosts tools and executes routed calls.
    ///
    /// Required: --redis URL (SWITCHBOARD_REDIS), and tools to host: --builtin and/or
    /// --tools FILE.
    Worker(commands::worker::Args),
    /// Publish one event to a topic through Redis, as any backend would.
    Publish(commands::publish::Args),
    /// Mint a token for a subject, with grants (HMAC secret or PEM private key).
    Token(commands::token::Args),
    /// A stdio MCP server that relays to a gateway (for clients that launch a local process).
    McpStdio(commands::mcp_stdio::Args),
}

/// A failure with the exit code it deserves.
pub(crate) enum Failure {
    /// A bad setting: the message names it. Exit 64.
    Usage(String),
    /// Anything else. Exit 1.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // The long-running subcommands set up logging (their --log-format) and traces themselves,
    // once their runtime exists.
    if matches!(
        cli.command,
        Command::Publish(_) | Command::Token(_) | Command::McpStdio(_)
    ) {
        commands::init_logging();
    }
    let result = match cli.command {
        Command::Dev(a) => {
            commands::refuse_renamed_variables().and_then(|()| commands::dev::run(*a))
        }
        Command::Gateway(a) => {
            commands::refuse_renamed_variables().and_then(|()| commands::gateway::run(*a))
        }
        Command::Worker(a) => {
            commands::refuse_renamed_variables().and_then(|()| commands::worker::run(a))
        }
        Command::Publish(a) => {
            commands::refuse_renamed_variables().and_then(|()| commands::publish::run(a))
        }
        Command::Token(a) => commands::token::run(a),
        Command::McpStdio(a) => commands::mcp_stdio::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("switchboard: invalid configuration: {msg}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("switchboard: {e:#}");
            ExitCode::FAILURE
        }
    }
}
