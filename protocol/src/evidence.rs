//! Crash evidence: what a worker's crashing thread was working on. The worker's crash-signal
//! handler writes one fixed record (no allocation or formatting in a signal handler) to a pipe
//! the gateway gave it; the gateway reads it once the worker is gone and convicts only the named
//! track instead of every player the worker hosted. To the gateway the record is hostile input
//! like any other byte from a worker: it is decoded strictly and only narrows a conviction.

/// The environment variable naming the evidence pipe's write end in a worker.
pub const EVIDENCE_FD_ENV: &str = "CALDERA_EVIDENCE_FD";

/// What a crashing thread was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Culprit {
    /// Loading (probing) for `/v4/loadtracks`: no player's track is to blame.
    Load,
    /// Opening or decoding a player's track.
    Track { player: u64, track_seq: u64 },
}

impl Culprit {
    /// A record's length: a tag and two big-endian u64.
    pub const LEN: usize = 17;

    pub const fn encode(self) -> [u8; Self::LEN] {
        let (tag, a, b) = match self {
            Culprit::Load => (1u8, 0u64, 0u64),
            Culprit::Track { player, track_seq } => (2, player, track_seq),
        };
        let (a, b) = (a.to_be_bytes(), b.to_be_bytes());
        let mut out = [0u8; Self::LEN];
        out[0] = tag;
        let mut i = 0;
        while i < 8 {
            out[1 + i] = a[i];
            out[9 + i] = b[i];
            i += 1;
        }
        out
    }

    /// The record, if `bytes` is exactly one well-formed record.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; Self::LEN] = bytes.try_into().ok()?;
        let word = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        match (bytes[0], word(1), word(9)) {
            (1, 0, 0) => Some(Culprit::Load),
            (2, player, track_seq) => Some(Culprit::Track { player, track_seq }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_anything_else_is_refused() {
        for c in [Culprit::Load, Culprit::Track { player: 7, track_seq: u64::MAX }] {
            assert_eq!(Culprit::decode(&c.encode()), Some(c));
        }
        let track = Culprit::Track { player: 1, track_seq: 2 }.encode();
        assert_eq!(Culprit::decode(&track[..16]), None);
        assert_eq!(Culprit::decode(&[track.as_slice(), &[0]].concat()), None);
        assert_eq!(Culprit::decode(&[[3u8].as_slice(), &[0; 16]].concat()), None);
        let mut load = Culprit::Load.encode();
        load[5] = 1;
        assert_eq!(Culprit::decode(&load), None);
        assert_eq!(Culprit::decode(&[]), None);
    }
}
