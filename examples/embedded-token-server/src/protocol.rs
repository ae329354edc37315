//! The token protocol: every request line from the client gets one reply line,
//! `seq=<n> token=<32 hex digits> time=<microseconds since the Unix epoch>\n`, where `n`
//! counts the connection's replies from 1 and the token is 128 random bits. Nothing in a
//! reply follows from the request, so no standby daemon could reproduce it: the server
//! checkpoints instead.

use thiserror::Error;

/// The longest request line accepted (the client is untrusted).
pub const MAX_REQUEST_LINE: usize = 1024;

/// A reply line's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reply {
    /// The connection's reply number, from 1.
    pub seq: u64,
    /// 128 random bits.
    pub token: u128,
    /// When the reply was made: microseconds since the Unix epoch.
    pub time_micros: u64,
}

/// A reply line or a state that does not read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// A reply line is not `seq=<n> token=<hex> time=<n>\n`.
    #[error("not a reply line: {0:?}")]
    BadReply(String),
    /// A checkpointed state is not the 8 bytes this server writes.
    #[error("a checkpointed state has {0} bytes, 8 expected: the checkpoint is not this server's")]
    BadState(usize),
}

impl Reply {
    /// The reply line, newline included.
    pub fn line(&self) -> String {
        format!(
            "seq={} token={:032x} time={}\n",
            self.seq, self.token, self.time_micros
        )
    }

    /// Reads a reply line (with or without its newline).
    pub fn parse(line: &str) -> Result<Reply, ProtocolError> {
        let bad = || ProtocolError::BadReply(line.to_string());
        let mut fields = line.trim_end_matches('\n').split(' ');
        let mut field = |name: &str| {
            fields
                .next()
                .and_then(|f| f.strip_prefix(name))
                .and_then(|f| f.strip_prefix('='))
                .ok_or_else(bad)
        };
        let seq = field("seq")?.parse().map_err(|_| bad())?;
        let token_hex = field("token")?;
        if token_hex.len() != 32 {
            return Err(bad());
        }
        let token = u128::from_str_radix(token_hex, 16).map_err(|_| bad())?;
        let time_micros = field("time")?.parse().map_err(|_| bad())?;
        if fields.next().is_some() {
            return Err(bad());
        }
        Ok(Reply {
            seq,
            token,
            time_micros,
        })
    }
}

/// What the server keeps per connection, and checkpoints: the replies made so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionState {
    /// Replies made on the connection.
    pub replies: u64,
}

impl ConnectionState {
    /// The checkpointed form: 8 bytes, little-endian.
    pub fn encode(&self) -> Vec<u8> {
        self.replies.to_le_bytes().to_vec()
    }

    /// Reads a checkpointed state.
    pub fn decode(bytes: &[u8]) -> Result<ConnectionState, ProtocolError> {
        let bytes: [u8; 8] = bytes
            .try_into()
            .map_err(|_| ProtocolError::BadState(bytes.len()))?;
        Ok(ConnectionState {
            replies: u64::from_le_bytes(bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_line_reads_back() {
        let reply = Reply {
            seq: 7,
            token: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
            time_micros: 1_700_000_000_000_000,
        };
        let line = reply.line();
        assert_eq!(
            line,
            "seq=7 token=0123456789abcdef0011223344556677 time=1700000000000000\n"
        );
        assert_eq!(Reply::parse(&line), Ok(reply));
    }

    #[test]
    fn malformed_reply_lines_are_errors() {
        for line in [
            "",
            "seq=1",
            "seq=1 token=12 time=3",
            "seq=x token=0123456789abcdef0011223344556677 time=3",
            "seq=1 token=0123456789abcdef0011223344556677 time=3 extra",
            "seq=1 tok=0123456789abcdef0011223344556677 time=3",
        ] {
            assert!(Reply::parse(line).is_err(), "{line:?}");
        }
    }

    #[test]
    fn a_state_reads_back_and_a_foreign_one_is_refused() {
        let state = ConnectionState { replies: 41 };
        assert_eq!(ConnectionState::decode(&state.encode()), Ok(state));
        assert_eq!(
            ConnectionState::decode(b"abc"),
            Err(ProtocolError::BadState(3))
        );
    }
}
