//! `switchboard dev`: the whole thing in one process with an in-memory backend, for trying
//! Switchboard out. Open mode (anonymous clients may do anything); nothing is shared beyond
//! this process. A worker with the built-in tools (echo, sleep, fail) runs in the same process.

use std::net::SocketAddr;

use anyhow::Context;
use switchboard_gateway::config::{GatewayConfig, Tuning};
use switchboard_memory::MemoryBackend;
use switchboard_telemetry::LogArgs;

use crate::Failure;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Address to listen on.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Serve /metrics (and /healthz, /readyz) on this address too.
    #[arg(long, env = "SWITCHBOARD_ADMIN_LISTEN", value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    #[command(flatten)]
    tuning: Tuning,
    #[command(flatten)]
    log: LogArgs,
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    let Args {
        listen,
        admin_listen,
        tuning,
        log,
    } = args;
    // One process, one service: its spans are the gateway's and the in-process worker's.
    let (rt, telemetry) = super::start(&log, "switchboard-dev")?;
    // Open mode: anyone may connect, anonymously, from any page, and subscribe, publish and
    // call anything: there is nothing to protect in one process on a laptop.
    let config = GatewayConfig {
        admin_listen,
        tuning,
        ..GatewayConfig::dev("dev")
    };
    config
        .validate()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let ran = rt.block_on(async move {
        let listener = switchboard_gateway::listen(listen, config.tuning.listen_backlog)
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        println!("Switchboard dev: in-memory backend, open mode: anonymous clients from any origin");
        println!("  may subscribe, publish and call anything (a `gateway` denies by default).");
        println!("  WebSocket:  ws://{addr}/ws   (subprotocol switchboard.v1)");
        println!("  MCP:        http://{addr}/mcp  (Streamable HTTP; docs/mcp.md)");
        println!("  Health:     http://{addr}/healthz  http://{addr}/readyz");
        match admin_listen {
            Some(admin) => println!("  Metrics:    http://{admin}/metrics"),
            None => println!("  Metrics:    add --admin-listen 127.0.0.1:9090 for /metrics"),
        }
        println!("Try it (e.g. with websocat ws://{addr}/ws), one JSON-RPC message per line:");
        println!(r#"  {{"jsonrpc":"2.0","id":1,"method":"hello","params":{{}}}}"#);
        println!(r#"  {{"jsonrpc":"2.0","id":2,"method":"subscribe","params":{{"topic":"chat:42"}}}}"#);
        println!(r#"  {{"jsonrpc":"2.0","id":3,"method":"publish","params":{{"topic":"chat:42","data":{{"text":"hi"}}}}}}"#);
        println!("Stop with ctrl-c.");
        println!("Tools (in-process worker): echo, sleep, fail, e.g.");
        println!(r#"  {{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{{"name":"echo","arguments":{{"hi":1}}}}}}"#);
        let memory = MemoryBackend::new();
        let mut toolbox = switchboard_worker::Toolbox::new();
        switchboard_worker::tools::builtin::add_builtins(&mut toolbox)
            .map_err(|e| anyhow::anyhow!(e))?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(switchboard_worker::run(
            switchboard_worker::WorkerConfig::new("dev-worker"),
            memory.clone(),
            toolbox,
            async {
                let _ = stop_rx.await;
            },
        ));
        let served = switchboard_gateway::run(
            config,
            listener,
            memory.backend(),
            super::shutdown_signal(),
        )
        .await
        .context("gateway failed");
        let _ = stop_tx.send(());
        let _ = worker.await;
        served
    });
    telemetry.shutdown();
    ran.map_err(Failure::from)
}
