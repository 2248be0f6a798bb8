//! The few pieces of WebSocket (RFC 6455) that the floor server and the `connect` scenario need,
//! by hand: the upgrade's accept key, header lookup, frame encoding and a frame parser. Nothing
//! here allocates per frame beyond the frame itself.

use base64::Engine;
use sha1::{Digest, Sha1};

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Opcodes this module names.
pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The index just past the `\r\n\r\n` that ends an HTTP head, if `buf` holds one.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// A header's value in an HTTP head (case-insensitive name).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn frame_head(out: &mut Vec<u8>, opcode: u8, len: usize, masked: bool) {
    out.push(0x80 | opcode);
    let m = if masked { 0x80 } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xffff {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// One unmasked (server-to-client) frame, FIN set.
pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    frame_head(&mut out, opcode, payload.len(), false);
    out.extend_from_slice(payload);
    out
}

/// One masked (client-to-server) frame, FIN set.
pub fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    frame_head(&mut out, opcode, payload.len(), true);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A frame parsed from the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub opcode: u8,
    /// Where the (unmasked) payload is in the buffer.
    pub payload: std::ops::Range<usize>,
    /// Bytes the whole frame takes.
    pub len: usize,
}

/// Parses the frame at the front of `buf`: `None` until it is complete. Masked frames are
/// reported with their payload still masked (this module only reads server frames).
pub fn parse_frame(buf: &[u8]) -> Option<Parsed> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at): (u64, usize) = match buf[1] & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    if masked {
        at += 4;
    }
    let end = at.checked_add(usize::try_from(len).ok()?)?;
    (buf.len() >= end).then_some(Parsed {
        opcode,
        payload: at..end,
        len: end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_round_trip() {
        for n in [0usize, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            let payload = vec![b'x'; n];
            let f = server_frame(OP_TEXT, &payload);
            let p = parse_frame(&f).unwrap();
            assert_eq!(
                (p.opcode, p.len, &f[p.payload.clone()]),
                (OP_TEXT, f.len(), &payload[..])
            );
            assert_eq!(parse_frame(&f[..f.len() - 1]), None);
            let c = client_frame(OP_TEXT, &payload, [1, 2, 3, 4]);
            let p = parse_frame(&c).unwrap();
            assert_eq!(p.len, c.len());
            let unmasked: Vec<u8> = c[p.payload]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4])
                .collect();
            assert_eq!(unmasked, payload);
        }
    }

    #[test]
    fn heads_and_headers() {
        let h = "GET /ws HTTP/1.1\r\nHost: x\r\nsec-websocket-key:  abc \r\n\r\n";
        assert_eq!(head_end(h.as_bytes()), Some(h.len()));
        assert_eq!(header(h, "Sec-WebSocket-Key"), Some("abc"));
        assert_eq!(header(h, "Upgrade"), None);
    }
}
