//! A minimal RESP2 client for `kvctl bench --target redis`: `SET` and `GET` over one TCP connection.
//!
//! Hand-written rather than the `redis` crate: the bench needs two commands and four reply types, and
//! the crate would bring its own connection management and dependency tree for that.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest bulk string a reply may announce (a bench value is at most 1 MiB).
const MAX_BULK: usize = 64 << 20;

/// A parsed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    /// `+OK` and other simple strings.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:N`.
    Integer(i64),
    /// `$N` with its bytes.
    Bulk(Vec<u8>),
    /// `$-1`: no value.
    Nil,
}

/// Encodes one command as a RESP array of bulk strings.
pub(super) fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the start of `buf`: `Ok(None)` when it is not complete yet, else the reply and
/// the bytes it took.
pub(super) fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, rest)) = buf[..line_end].split_first() else {
        return Err("empty reply line".to_owned());
    };
    let line = std::str::from_utf8(rest).map_err(|_| "reply line is not UTF-8".to_owned())?;
    let after = line_end + 2;
    match kind {
        b'+' => Ok(Some((Reply::Simple(line.to_owned()), after))),
        b'-' => Ok(Some((Reply::Error(line.to_owned()), after))),
        b':' => line
            .parse()
            .map(|n| Some((Reply::Integer(n), after)))
            .map_err(|_| format!("bad integer reply {line:?}")),
        b'$' => {
            let len: i64 = line
                .parse()
                .map_err(|_| format!("bad bulk length {line:?}"))?;
            if len == -1 {
                return Ok(Some((Reply::Nil, after)));
            }
            let len = usize::try_from(len)
                .ok()
                .filter(|len| *len <= MAX_BULK)
                .ok_or_else(|| format!("bulk length {len} out of range"))?;
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            if &buf[after + len..after + len + 2] != b"\r\n" {
                return Err("bulk string not followed by CRLF".to_owned());
            }
            Ok(Some((
                Reply::Bulk(buf[after..after + len].to_vec()),
                after + len + 2,
            )))
        }
        other => Err(format!("unsupported reply type {:?}", other as char)),
    }
}

/// One connection, one command in flight.
#[derive(Debug)]
pub(super) struct Connection {
    /// The socket.
    stream: TcpStream,
    /// Bytes read and not parsed yet.
    buf: BytesMut,
    /// The command being sent.
    out: Vec<u8>,
}

impl Connection {
    /// Connects to `address` (`host:port`).
    pub(super) async fn connect(address: &str) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buf: BytesMut::with_capacity(4096),
            out: Vec::with_capacity(256),
        })
    }

    /// Sends one command and reads its reply.
    pub(super) async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        self.out.clear();
        encode(args, &mut self.out);
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|e| format!("transport: {e}"))?;
        loop {
            if let Some((reply, used)) = parse(&self.buf)? {
                self.buf.advance(used);
                return Ok(reply);
            }
            let read = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| format!("transport: {e}"))?;
            if read == 0 {
                return Err("transport: the server closed the connection".to_owned());
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn commands_encode_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&[b"SET", b"k1", b"a\r\nb"], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$4\r\na\r\nb\r\n");
    }

    #[test]
    fn replies_parse_whole_or_wait_for_more() {
        assert_eq!(
            parse(b"+OK\r\nrest").unwrap(),
            Some((Reply::Simple("OK".into()), 5))
        );
        assert_eq!(
            parse(b"-ERR wrong\r\n").unwrap(),
            Some((Reply::Error("ERR wrong".into()), 12))
        );
        assert_eq!(parse(b":42\r\n").unwrap(), Some((Reply::Integer(42), 5)));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some((Reply::Nil, 5)));
        assert_eq!(
            parse(b"$5\r\nab\r\nc\r\n").unwrap(),
            Some((Reply::Bulk(b"ab\r\nc".to_vec()), 11))
        );
        assert_eq!(
            parse(b"$0\r\n\r\n").unwrap(),
            Some((Reply::Bulk(vec![]), 6))
        );
        // Incomplete: no line end, or a bulk body still in flight.
        assert_eq!(parse(b"+O").unwrap(), None);
        assert_eq!(parse(b"$5\r\nab").unwrap(), None);
        assert_eq!(parse(b"$5\r\nabcde\r").unwrap(), None);
    }

    #[test]
    fn broken_replies_are_errors_not_panics() {
        assert!(parse(b"\r\n").is_err());
        assert!(parse(b"*1\r\n").is_err());
        assert!(parse(b":x\r\n").is_err());
        assert!(parse(b"$-2\r\n").is_err());
        assert!(parse(b"$99999999999\r\n").is_err());
        assert!(parse(b"$2\r\nabcd").is_err());
    }
}
