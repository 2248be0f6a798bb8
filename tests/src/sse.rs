//! A raw HTTP/1.1 client for `/mcp` that reads a response as it arrives: its status and
//! headers, then (for `text/event-stream`) one SSE event at a time, de-chunked by hand, so a
//! test can stop reading mid-stream and drop the connection as a broken network would.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a read waits before the test fails.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// One SSE event (`data` joined over its lines; comments skipped).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub retry: Option<u64>,
    pub data: String,
}

impl SseEvent {
    /// The event's data as JSON (`Null` for the empty data of a priming event).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// A response being read.
pub struct HttpStream {
    stream: TcpStream,
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    chunked: bool,
    /// Raw bytes read and not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked body bytes not yet parsed.
    body: Vec<u8>,
    ended: bool,
}

impl HttpStream {
    /// Sends `method /mcp` with `headers` (and `body`) and reads the status line and headers.
    pub async fn open(
        addr: SocketAddr,
        method: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> HttpStream {
        let body = body.map(Value::to_string).unwrap_or_default();
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let req = format!(
            "{method} /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
            body.len()
        );
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(req.as_bytes()).await.expect("send");
        let mut s = HttpStream {
            stream,
            status: 0,
            headers: Vec::new(),
            chunked: false,
            raw: Vec::new(),
            body: Vec::new(),
            ended: false,
        };
        let head_end = loop {
            if let Some(i) = find(&s.raw, b"\r\n\r\n") {
                break i;
            }
            assert!(s.fill().await, "the response ended before its headers");
        };
        let head = String::from_utf8_lossy(&s.raw[..head_end]).into_owned();
        s.raw.drain(..head_end + 4);
        let mut lines = head.lines();
        s.status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .expect("a status line");
        s.headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        s.chunked = s
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"));
        s
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads more from the socket; false at its end.
    async fn fill(&mut self) -> bool {
        let mut buf = [0u8; 8192];
        let n = tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut buf))
            .await
            .expect("the response stalled")
            .unwrap_or(0);
        self.raw.extend_from_slice(&buf[..n]);
        n > 0
    }

    /// Moves what was read into the body (de-chunked); false once the body has ended.
    async fn more_body(&mut self) -> bool {
        if self.ended {
            return false;
        }
        loop {
            if !self.chunked {
                if !self.raw.is_empty() {
                    self.body.append(&mut self.raw);
                    return true;
                }
                if !self.fill().await {
                    self.ended = true;
                    return false;
                }
                continue;
            }
            if let Some(line_end) = find(&self.raw, b"\r\n") {
                let size_text = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                    .expect("a chunk size");
                if size == 0 {
                    self.ended = true;
                    return false;
                }
                if self.raw.len() >= line_end + 2 + size + 2 {
                    let start = line_end + 2;
                    self.body.extend_from_slice(&self.raw[start..start + size]);
                    self.raw.drain(..start + size + 2);
                    return true;
                }
            }
            if !self.fill().await {
                self.ended = true;
                return false;
            }
        }
    }

    /// The next SSE event; `None` when the stream ended.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(end) = find(&self.body, b"\n\n") {
                let block = String::from_utf8_lossy(&self.body[..end]).into_owned();
                self.body.drain(..end + 2);
                let mut event = SseEvent::default();
                let mut data = Vec::new();
                let mut any = false;
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => event.id = Some(value.to_owned()),
                        "retry" => event.retry = value.parse().ok(),
                        "data" => data.push(value.to_owned()),
                        _ => continue,
                    }
                    any = true;
                }
                if any {
                    event.data = data.join("\n");
                    return Some(event);
                }
            }
            if !self.more_body().await {
                return None;
            }
        }
    }

    /// The whole body (what is left of it), as JSON (`Null` if it is not).
    pub async fn json(mut self) -> Value {
        while self.more_body().await {}
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
