//! Reading one HTTP/1 request head under a total deadline.
//!
//! Pingora's own head reader times each `read()` separately, so a client that sends one byte
//! every few seconds (slowloris) holds its connection forever. Here the whole head must
//! arrive by one deadline; the bytes read (the head, and any body bytes that came with it)
//! are then handed to Pingora, which parses them as if it had read them itself.
//!
//! The waits use Pingora's timer (`fast_timeout`, 10 ms ticks, armed only when a read is
//! pending), not Tokio's: registering a Tokio timer earlier than the runtime's next wake-up
//! wakes its driver through an eventfd: one extra `write` syscall per request (`strace -c`
//! at c=1 counted 1.04 per request with Tokio's timer, 0.036 with this one).

use bytes::BytesMut;
use pingora::time::fast_timeout::fast_timeout;
use std::time::Duration;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a client may take, and how much it may send, before its head is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// From the connection (or, between requests, from the head's first byte) to its end.
    pub head: Duration,
    /// Between requests on a kept-alive connection: the wait for the next head's first byte.
    pub idle: Duration,
    /// Request line and headers, in bytes.
    pub max_bytes: usize,
}

/// Why no complete head was read.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// The client closed the connection (or it failed) before sending a byte: a normal end.
    Closed,
    /// The client closed the connection (or it failed) in the middle of a head.
    Broken,
    /// A kept-alive connection stayed silent for `idle`.
    Idle,
    /// The head was not complete by its deadline; `received` bytes had arrived.
    TimedOut { received: usize },
    /// The head grew past `max_bytes`.
    TooLarge,
}

/// Reads a request head. `fresh`: the connection was just accepted, so the head deadline
/// runs from now, silence included; otherwise the client may first idle for `limits.idle`.
///
/// Returns the bytes read: the head, possibly followed by body bytes that arrived with it.
/// The first read asks for one byte, so an idle connection holds no buffer.
pub async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    limits: &HeadLimits,
    fresh: bool,
) -> Result<BytesMut, HeadError> {
    let mut first = [0u8; 1];
    let deadline = if fresh {
        let deadline = Instant::now() + limits.head;
        match fast_timeout(limits.head, io.read(&mut first)).await {
            Err(_) => return Err(HeadError::TimedOut { received: 0 }),
            Ok(Ok(1)) => deadline,
            Ok(_) => return Err(HeadError::Closed),
        }
    } else {
        match fast_timeout(limits.idle, io.read(&mut first)).await {
            Err(_) => return Err(HeadError::Idle),
            Ok(Ok(1)) => Instant::now() + limits.head,
            Ok(_) => return Err(HeadError::Closed),
        }
    };
    let mut buf = BytesMut::with_capacity(4096);
    buf.extend_from_slice(&first);
    let mut scan = HeadScan::default();
    loop {
        if let Some(end) = scan.advance(&buf) {
            return if end > limits.max_bytes {
                Err(HeadError::TooLarge)
            } else {
                Ok(buf)
            };
        }
        if buf.len() > limits.max_bytes {
            return Err(HeadError::TooLarge);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match fast_timeout(left, io.read_buf(&mut buf)).await {
            Err(_) => {
                return Err(HeadError::TimedOut {
                    received: buf.len(),
                })
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Err(HeadError::Broken),
            Ok(Ok(_)) => {}
        }
    }
}

/// Most headers a request may carry (Pingora's own limit).
pub const MAX_HEADERS: usize = 256;

/// What the gateway needs to know about a valid request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Length of the head, blank line included.
    pub len: usize,
    /// The declared body length (`None`: chunked, or no body).
    pub content_length: Option<u64>,
    pub chunked: bool,
}

impl Head {
    /// Where the request ends in `buf` (head + declared body), when that is known.
    pub fn end(&self) -> Option<usize> {
        if self.chunked {
            return None;
        }
        let body = usize::try_from(self.content_length.unwrap_or(0)).ok()?;
        self.len.checked_add(body)
    }
}

/// Checks a complete request head the way a careful server must before trusting it, so
/// that every malformed or ambiguous request gets a clear 400 in the gateway's envelope
/// (Pingora would answer an empty 400): a parse error, too many headers, obs-fold, an
/// absolute-form target, conflicting `Content-Length`s, a `Transfer-Encoding` other than
/// `chunked` or beside a `Content-Length` (request smuggling), several `Host` headers.
pub fn validate(buf: &[u8]) -> Result<Head, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("the request head is incomplete".into()),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(format!("the request has more than {MAX_HEADERS} headers"))
        }
        Err(e) => return Err(format!("the request head is not valid HTTP/1.1 ({e})")),
    };
    let target = req.path.unwrap_or("");
    let method = req.method.unwrap_or("");
    if !(target.starts_with('/') || (target == "*" && method == "OPTIONS")) {
        return Err(format!(
            "the request target must be a path starting with `/` (origin-form), not `{}`",
            target.chars().take(64).collect::<String>()
        ));
    }
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut hosts = 0;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or("`Content-Length` must be a number")?;
            if content_length.is_some_and(|c| c != v) {
                return Err("the request has conflicting `Content-Length` headers".into());
            }
            content_length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding.is_some() {
                return Err("the request has several `Transfer-Encoding` headers".into());
            }
            transfer_encoding = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
        }
    }
    if hosts > 1 {
        return Err("the request has several `Host` headers".into());
    }
    let chunked = match transfer_encoding {
        None => false,
        Some(v) if v.trim_ascii().eq_ignore_ascii_case(b"chunked") => true,
        Some(_) => return Err("`Transfer-Encoding` must be `chunked`".into()),
    };
    if chunked && content_length.is_some() {
        return Err("the request has both `Transfer-Encoding` and `Content-Length`".into());
    }
    Ok(Head {
        len,
        content_length,
        chunked,
    })
}

/// The length of the head that starts `chunks` joined (up to and including its blank line),
/// scanned as the chunks arrive, the way [`read_head`] scans across reads. For tests and
/// fuzzing: the answer must not depend on how the bytes were split.
pub fn head_end<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Option<usize> {
    let mut scan = HeadScan::default();
    let mut buf = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        if let Some(end) = scan.advance(&buf) {
            return Some(end);
        }
    }
    None
}

/// Finds the blank line that ends a head, across reads, without rescanning.
///
/// Accepts what Pingora's parser (httparse) accepts: CRLF or bare LF line ends, and empty
/// lines before the request line (which do not end anything).
#[derive(Debug, Default)]
struct HeadScan {
    /// Bytes already known not to end the head.
    checked: usize,
    /// Whether the request line has started (past any leading empty lines).
    started: bool,
}

impl HeadScan {
    /// The length of the head in `buf` (up to and including its blank line), once complete.
    fn advance(&mut self, buf: &[u8]) -> Option<usize> {
        if !self.started {
            match buf[self.checked..]
                .iter()
                .position(|b| *b != b'\r' && *b != b'\n')
            {
                Some(i) => {
                    self.checked += i;
                    self.started = true;
                }
                None => {
                    self.checked = buf.len();
                    return None;
                }
            }
        }
        for i in memchr::memchr_iter(b'\n', &buf[self.checked..]).map(|i| i + self.checked) {
            match (buf.get(i + 1), buf.get(i + 2)) {
                (Some(b'\n'), _) => return Some(i + 2),
                (Some(b'\r'), Some(b'\n')) => return Some(i + 3),
                // The next bytes have not arrived yet: look at this line end again.
                (None, _) | (Some(b'\r'), None) => {
                    self.checked = i;
                    return None;
                }
                _ => {}
            }
        }
        self.checked = buf.len();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn end_of(chunks: &[&[u8]]) -> Option<usize> {
        head_end(chunks.iter().copied())
    }

    #[test]
    fn head_end_is_found_whatever_the_split() {
        let head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
        let want = head.len() - 2;
        assert_eq!(end_of(&[head]), Some(want));
        for cut in 1..head.len() {
            assert_eq!(
                end_of(&[&head[..cut], &head[cut..]]),
                Some(want),
                "cut {cut}"
            );
        }
        let bytes: Vec<&[u8]> = head.chunks(1).collect();
        assert_eq!(end_of(&bytes), Some(want));
    }

    #[test]
    fn bare_lf_and_leading_empty_lines_are_understood() {
        assert_eq!(end_of(&[b"GET / HTTP/1.1\nHost: x\n\n"]), Some(24));
        let lead = b"\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(end_of(&[lead]), Some(lead.len()));
        assert_eq!(
            end_of(&[b"\r\n", b"\r\n", b"GET / HTTP/1.1\r\n", b"\r\n"]),
            Some(22)
        );
        assert_eq!(end_of(&[b"GET / HTTP/1.1\r\nHost: x\r\n"]), None);
        assert_eq!(end_of(&[b"\r\n\r\n"]), None);
    }

    const LIMITS: HeadLimits = HeadLimits {
        head: Duration::from_millis(300),
        idle: Duration::from_millis(200),
        max_bytes: 2048,
    };

    #[test]
    fn ambiguous_or_malformed_heads_are_refused() {
        let ok = b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}";
        let head = validate(ok).unwrap();
        assert_eq!(head.content_length, Some(2));
        assert_eq!(head.end(), Some(ok.len()));
        let many: String = (0..300).map(|i| format!("x-h{i}: v\r\n")).collect();
        for bad in [
            "GET http://evil.example/v1/models HTTP/1.1\r\nHost: a\r\n\r\n".to_string(),
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".into(),
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  folded\r\n\r\n".into(),
            format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n"),
            "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n".into(),
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n".into(),
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(),
            "GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n".into(),
            "GE T / HTTP/1.1\r\n\r\n".into(),
        ] {
            assert!(validate(bad.as_bytes()).is_err(), "{bad:?}");
        }
        // The same length twice is not a conflict.
        assert!(
            validate(b"POST / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n").is_ok()
        );
        assert!(validate(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
    }

    #[tokio::test]
    async fn a_complete_head_comes_back_with_the_body_bytes_that_followed_it() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let req = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        client.write_all(req).await.unwrap();
        let got = read_head(&mut server, &LIMITS, true).await.unwrap();
        assert_eq!(&got[..], &req[..]);
    }

    #[tokio::test]
    async fn a_dribbling_client_is_cut_at_the_head_deadline() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            for b in b"GET /health HTTP/1.1\r\nHost: slow\r\n".iter().cycle() {
                if client.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let start = std::time::Instant::now();
        let e = read_head(&mut server, &LIMITS, true).await.unwrap_err();
        let took = start.elapsed();
        assert!(
            matches!(e, HeadError::TimedOut { received } if received > 3),
            "{e:?}"
        );
        assert!(took >= Duration::from_millis(290), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        drop(server);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_silent_new_connection_times_out_and_a_silent_kept_alive_one_idles_out() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let e = read_head(&mut server, &LIMITS, true).await.unwrap_err();
        assert_eq!(e, HeadError::TimedOut { received: 0 });
        let e = read_head(&mut server, &LIMITS, false).await.unwrap_err();
        assert_eq!(e, HeadError::Idle);
    }

    #[tokio::test]
    async fn between_requests_the_head_deadline_starts_at_the_first_byte() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            client.write_all(b"\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        // 150 ms idle + 200 ms of head: over 300 ms in all, but each part within its limit.
        let got = read_head(&mut server, &LIMITS, false).await.unwrap();
        assert_eq!(&got[..], b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn an_oversized_head_is_refused() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(4000));
        client.write_all(big.as_bytes()).await.unwrap();
        let e = read_head(&mut server, &LIMITS, true).await.unwrap_err();
        assert_eq!(e, HeadError::TooLarge);
    }

    #[tokio::test]
    async fn a_close_before_any_byte_is_a_normal_end_and_mid_head_is_broken() {
        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        assert_eq!(
            read_head(&mut server, &LIMITS, false).await.unwrap_err(),
            HeadError::Closed
        );
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HT").await.unwrap();
        drop(client);
        assert_eq!(
            read_head(&mut server, &LIMITS, true).await.unwrap_err(),
            HeadError::Broken
        );
    }
}
