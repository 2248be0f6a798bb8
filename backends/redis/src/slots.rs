//! Redis Cluster key slots: which of the 16384 slots a key (or a sharded channel) lives in,
//! by Redis's own rule (CRC16-XMODEM of the hash tag, modulo 16384). Scripts and pipelines may
//! only touch keys of one slot in a cluster, so the call plane and the per-slot pipelines group
//! their keys with [`slot`]; the unit tests pin the function to values Redis computes.

/// How many slots a Redis Cluster has.
pub(crate) const SLOTS: u16 = 16384;

/// The slot of `key`: the CRC16 of its hash tag (the part between the first `{` and the next
/// `}`, when that part is not empty), or of the whole key.
pub(crate) fn slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) % SLOTS
}

/// The part of `key` Redis hashes.
fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// CRC16-XMODEM (polynomial 0x1021, initial value 0), as in Redis's `crc16.c`.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_reference_check_value() {
        // The XMODEM check value (CRC of "123456789"), also the value Redis's crc16.c documents.
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }

    #[test]
    fn slots_match_what_redis_computes() {
        // `CLUSTER KEYSLOT` answers on a cluster node (Redis 7.0.15).
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), 3443);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"sb:t:{chat}"), 14028);
        assert_eq!(slot(b"sb:t:{chat}"), slot(b"sb:h:{chat}"));
        assert_eq!(slot(b"sb:t:{chat}"), slot(b"chat"));
    }

    #[test]
    fn an_empty_or_unclosed_tag_hashes_the_whole_key() {
        // `CLUSTER KEYSLOT` answers again.
        assert_eq!(slot(b"foo{}{bar}"), 8363);
        assert_eq!(slot(b"foo{{bar}}zap"), 4015);
        assert_eq!(slot(b"foo{bar"), crc16(b"foo{bar") % SLOTS);
    }
}
