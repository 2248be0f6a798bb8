//! WebSocket frames, both ways, written here rather than taken from a WebSocket library
//! (fastwebsockets only does the upgrade handshake): the one opcode table, client frames
//! parsed, server frames built.
//!
//! **Client frames** are parsed so that a connection holds no read buffer while it is idle:
//! bytes are read into a buffer only when the socket is readable, whole frames are split off
//! it, and an empty buffer gives its memory back (a library reader keeps 8 KiB per socket for
//! its lifetime, which is most of an idle connection's cost). RFC 6455 section 5 as a server
//! reads it: every client frame is masked, no extension is negotiated (reserved bits are zero),
//! control frames are at most 125 bytes and never fragmented, and a frame longer than the
//! message limit is refused from its header, before its payload is buffered.
//!
//! **Server frames** are not masked, so one framing serves every subscriber of an event
//! ([`text_frame`]): a socket with one event to send writes shared bytes with one `write`, and
//! the writer adds a [`Header`] in front of other payloads in one vectored write.

use bytes::{Bytes, BytesMut};

/// Opcodes (RFC 6455 section 5.2).
pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// A server frame header (servers never mask): at most 10 bytes.
#[derive(Clone, Copy)]
pub(crate) struct Header {
    bytes: [u8; 10],
    len: u8,
}

impl Header {
    pub(crate) fn new(opcode: u8, payload_len: usize) -> Self {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | opcode; // FIN + opcode
        let len = if payload_len < 126 {
            bytes[1] = payload_len as u8;
            2
        } else if payload_len <= u16::MAX as usize {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        };
        Header { bytes, len }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// A whole server frame: header and payload in one buffer.
pub(crate) fn framed(opcode: u8, payload: &[u8]) -> Bytes {
    let h = Header::new(opcode, payload.len());
    let mut b = BytesMut::with_capacity(h.len as usize + payload.len());
    b.extend_from_slice(h.as_slice());
    b.extend_from_slice(payload);
    b.freeze()
}

/// A whole text frame for a message every subscriber gets alike (an event): framed once, the
/// same bytes written to every socket.
pub(crate) fn text_frame(payload: &[u8]) -> Bytes {
    framed(OP_TEXT, payload)
}

/// One frame, unmasked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) fin: bool,
    pub(crate) opcode: u8,
    pub(crate) payload: Bytes,
}

/// Why a frame cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// A protocol violation (close 1002), with the reason sent in the close frame.
    Protocol(&'static str),
    /// The frame is longer than the message limit (close 1009).
    TooBig,
}

/// Splits the first whole frame off `buf`. `Ok(None)`: more bytes are needed (and `buf` has
/// room reserved for them, up to the frame's size).
pub(crate) fn parse(buf: &mut BytesMut, max_payload: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol("reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    let control = match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => false,
        OP_CLOSE | OP_PING | OP_PONG => true,
        _ => return Err(FrameError::Protocol("unknown opcode")),
    };
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("client frames must be masked"));
    }
    let (len, head) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(n), 10)
        }
        n => (u64::from(n), 2),
    };
    if control && (!fin || len > 125) {
        return Err(FrameError::Protocol(
            "control frames are short and unfragmented",
        ));
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooBig);
    }
    let len = len as usize;
    let total = head + 4 + len;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[head..head + 4]);
    let mut frame = buf.split_to(total);
    let mut payload = frame.split_off(head + 4);
    unmask(&mut payload, mask);
    Ok(Some(Frame {
        fin,
        opcode,
        payload: payload.freeze(),
    }))
}

/// XORs the payload with the mask key, eight bytes at a time.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().expect("8 bytes")) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths() {
        assert_eq!(Header::new(OP_TEXT, 0).as_slice(), &[0x81, 0]);
        assert_eq!(Header::new(OP_TEXT, 125).as_slice(), &[0x81, 125]);
        assert_eq!(Header::new(OP_TEXT, 126).as_slice(), &[0x81, 126, 0, 126]);
        assert_eq!(
            Header::new(OP_TEXT, 65535).as_slice(),
            &[0x81, 126, 0xff, 0xff]
        );
        assert_eq!(
            Header::new(OP_CLOSE, 65536).as_slice(),
            &[0x88, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    /// A masked client frame.
    fn frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut v = vec![b0];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    #[test]
    fn parses_frames_of_every_length_split_anywhere() {
        for len in [0usize, 1, 7, 8, 9, 125, 126, 127, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let bytes = frame(0x81, &payload, [1, 2, 3, 250]);
            // Fed one piece at a time, the frame appears exactly when its last byte does.
            for cut in [1, 2, 3, bytes.len() / 2, bytes.len() - 1] {
                if cut == 0 || cut >= bytes.len() {
                    continue;
                }
                let mut buf = BytesMut::from(&bytes[..cut]);
                assert_eq!(parse(&mut buf, 1 << 20), Ok(None), "len {len} cut {cut}");
                buf.extend_from_slice(&bytes[cut..]);
                let f = parse(&mut buf, 1 << 20).unwrap().unwrap();
                assert!(f.fin);
                assert_eq!(f.opcode, OP_TEXT);
                assert_eq!(&f.payload[..], &payload[..], "len {len}");
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn two_frames_in_one_read() {
        let mut bytes = frame(0x01, b"hel", [9, 9, 9, 9]);
        bytes.extend(frame(0x80, b"lo", [7, 0, 7, 0]));
        let mut buf = BytesMut::from(&bytes[..]);
        let a = parse(&mut buf, 100).unwrap().unwrap();
        assert_eq!(
            (a.fin, a.opcode, &a.payload[..]),
            (false, OP_TEXT, &b"hel"[..])
        );
        let b = parse(&mut buf, 100).unwrap().unwrap();
        assert_eq!(
            (b.fin, b.opcode, &b.payload[..]),
            (true, OP_CONTINUATION, &b"lo"[..])
        );
        assert_eq!(parse(&mut buf, 100), Ok(None));
    }

    #[test]
    fn refuses_what_a_server_must_refuse() {
        let bad = |bytes: Vec<u8>| parse(&mut BytesMut::from(&bytes[..]), 100);
        let mut unmasked = frame(0x81, b"x", [0; 4]);
        unmasked[1] &= 0x7F;
        assert!(matches!(bad(unmasked), Err(FrameError::Protocol(_))));
        assert!(matches!(
            bad(frame(0xC1, b"x", [1; 4])),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            bad(frame(0x83, b"x", [1; 4])),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            bad(frame(0x09, b"x", [1; 4])),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            bad(frame(0x89, &[0u8; 126], [1; 4])),
            Err(FrameError::Protocol(_))
        ));
        assert_eq!(
            bad(frame(0x81, &[0u8; 101], [1; 4])),
            Err(FrameError::TooBig)
        );
        // Refused from the header alone, before the payload arrives.
        let head = &frame(0x81, &[0u8; 5000], [1; 4])[..4];
        assert_eq!(
            parse(&mut BytesMut::from(head), 100),
            Err(FrameError::TooBig)
        );
    }
}
