//! `switchboard mcp-stdio`: a stdio MCP server that relays to a gateway, for MCP clients that
//! can only launch a local process. It opens one WebSocket to the gateway with the `mcp`
//! subprotocol (and the token as `Authorization: Bearer`) and relays line for message: each
//! line read on stdin (one JSON-RPC message, as the stdio transport frames them) goes to the
//! gateway as a text message, and each message from the gateway (replies, progress,
//! `list_changed`) is written to stdout as one line. Logs go to stderr only. It exits when
//! stdin ends (the client is done) or the gateway closes the socket.
//!
//! `wss://` URLs go through the Rust client's TLS (rustls; the Mozilla roots and the system's
//! store, plus the CA certificates of `--ca-file`), and the WebSocket through tokio-tungstenite
//! over that stream.

use anyhow::{Context, anyhow};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::Failure;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The gateway's WebSocket URL (ws://host:port/ws or wss://host/ws).
    #[arg(long, env = "SWITCHBOARD_URL", value_name = "URL")]
    url: String,
    /// For wss://: a PEM file of CA certificates to trust besides the system's and the
    /// Mozilla roots (a private CA).
    #[arg(long, env = "SWITCHBOARD_CA_FILE", value_name = "PEM")]
    ca_file: Option<std::path::PathBuf>,
    /// The token to connect with (sent as `Authorization: Bearer`); none: anonymous.
    #[arg(long, env = "SWITCHBOARD_TOKEN", value_name = "JWT")]
    token: Option<String>,
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    if !(args.url.starts_with("ws://") || args.url.starts_with("wss://")) {
        return Err(Failure::Usage(format!(
            "url: {:?} is not a ws:// or wss:// URL",
            args.url
        )));
    }
    let mut connect = switchboard_client::ConnectOptions::default();
    if let Some(path) = &args.ca_file {
        connect.tls = switchboard_client::TlsOptions::default()
            .with_ca_file(path)
            .map_err(|e| Failure::Usage(format!("ca-file: {e}")))?;
        // A file that holds no certificate is a usage error, found before connecting.
        connect
            .tls
            .client_config()
            .map_err(|e| Failure::Usage(format!("ca-file: {e}")))?;
    }
    let mut request = args
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| Failure::Usage(format!("url: {e}")))?;
    let headers = request.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(switchboard_protocol::MCP_SUBPROTOCOL),
    );
    if let Some(token) = &args.token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| Failure::Usage("token: not a valid header value".into()))?;
        headers.insert("authorization", value);
    }
    let rt = super::runtime()?;
    rt.block_on(relay(&args.url, &connect, request))
        .map_err(Failure::Runtime)
}

async fn relay(
    url: &str,
    connect: &switchboard_client::ConnectOptions,
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> anyhow::Result<()> {
    let stream = tokio::time::timeout(
        connect.connect_timeout,
        switchboard_client::open_stream(url, connect),
    )
    .await
    .map_err(|_| anyhow!("cannot reach the gateway: timed out"))?
    .context("cannot reach the gateway")?;
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .context("cannot reach the gateway")?;
    let (mut to_gateway, mut from_gateway) = ws.split();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    loop {
        tokio::select! {
            line = stdin.next_line() => match line.context("reading stdin")? {
                Some(line) if line.trim().is_empty() => {}
                Some(line) => to_gateway.send(Message::text(line)).await.context("sending to the gateway")?,
                None => {
                    // The client is done.
                    let _ = to_gateway.send(Message::Close(None)).await;
                    return Ok(());
                }
            },
            message = from_gateway.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    // One message per line: JSON text holds no raw newline.
                    stdout.write_all(text.as_bytes()).await?;
                    stdout.write_all(b"\n").await?;
                    stdout.flush().await?;
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(anyhow!(
                        "the gateway closed the connection{}",
                        frame.map(|f| format!(": {} {}", u16::from(f.code), f.reason)).unwrap_or_default()
                    ));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(anyhow!(e).context("the gateway connection failed")),
                None => return Err(anyhow!("the gateway connection ended")),
            },
        }
    }
}
