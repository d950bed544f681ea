//! A minimal HTTP/1.1 client over tokio TCP: keep-alive requests with a
//! `Content-Length` or chunked response, and the head of a streaming response
//! whose body (chunked or raw) is then decoded incrementally.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connects to `addr`, from `source` (a loopback address: each one has its own
/// ephemeral ports) when given.
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `POST path` with a body.
pub fn post(host: &str, path: &str, token: Option<&str>, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n");
    if let Some(t) = token {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

/// `GET path` with extra header lines (each ending in `\r\n`).
pub fn get(host: &str, path: &str, token: Option<&str>, extra: &str) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    if let Some(t) = token {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    r.push_str(extra);
    r.push_str("\r\n");
    r.into_bytes()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(usize),
    Chunked,
    /// Until the connection closes.
    Close,
}

#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub framing: Framing,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a response head (`buf` ends with the blank line).
pub fn parse_head(buf: &[u8]) -> Result<Head> {
    let text = std::str::from_utf8(buf).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    let mut framing = Framing::Close;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            framing = Framing::Length(value.parse().context("bad content-length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            framing = Framing::Chunked;
        }
        headers.push((name.to_owned(), value.to_owned()));
    }
    if matches!(status, 204 | 304) {
        framing = Framing::Length(0);
    }
    Ok(Head {
        status,
        framing,
        headers,
    })
}

/// A keep-alive connection.
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` read but not consumed.
    filled: usize,
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            buf: vec![0; 16 * 1024],
            filled: 0,
        }
    }

    async fn fill(&mut self) -> Result<()> {
        if self.filled == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.filled..]).await?;
        if n == 0 {
            bail!("connection closed by the server");
        }
        self.filled += n;
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
    }

    /// Reads a response head; the bytes after it stay buffered ([`Conn::leftover`]).
    pub async fn read_head(&mut self) -> Result<Head> {
        loop {
            if let Some(end) = memchr::memmem::find(&self.buf[..self.filled], b"\r\n\r\n") {
                let head = parse_head(&self.buf[..end + 4])?;
                self.consume(end + 4);
                return Ok(head);
            }
            self.fill().await?;
        }
    }

    /// The bytes read past the head, handed over once.
    pub fn take_leftover(&mut self) -> Vec<u8> {
        let out = self.buf[..self.filled].to_vec();
        self.filled = 0;
        out
    }

    /// Sends a request and reads the whole response.
    pub async fn request(&mut self, request: &[u8]) -> Result<Response> {
        self.stream.write_all(request).await?;
        let head = self.read_head().await?;
        let body = match head.framing {
            Framing::Length(n) => {
                while self.filled < n {
                    self.fill().await?;
                }
                let body = self.buf[..n].to_vec();
                self.consume(n);
                body
            }
            Framing::Chunked => {
                let mut decoder = Dechunker::default();
                let mut body = Vec::new();
                loop {
                    let data = self.buf[..self.filled].to_vec();
                    self.filled = 0;
                    let used = decoder.feed(&data, |part| body.extend_from_slice(part))?;
                    if decoder.finished() {
                        // Keep what followed the last chunk (a pipelined response).
                        self.buf[..data.len() - used].copy_from_slice(&data[used..]);
                        self.filled = data.len() - used;
                        break;
                    }
                    self.fill().await?;
                }
                body
            }
            Framing::Close => bail!("response without a length on a keep-alive request"),
        };
        Ok(Response {
            status: head.status,
            body,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    #[default]
    Size,
    /// Chunk extensions up to the line's end.
    SizeTail,
    Data(usize),
    DataEnd,
    Trailer,
    Done,
}

/// An incremental `Transfer-Encoding: chunked` decoder.
#[derive(Debug, Default)]
pub struct Dechunker {
    state: ChunkState,
    size: usize,
    digits: usize,
}

impl Dechunker {
    pub fn finished(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes `input`, calling `out` with each piece of body; returns how many
    /// bytes were used (all of them unless the body ended inside `input`).
    pub fn feed(&mut self, input: &[u8], mut out: impl FnMut(&[u8])) -> Result<usize> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                ChunkState::Size => {
                    let c = input[i];
                    i += 1;
                    match c {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            let d = (c as char).to_digit(16).unwrap_or(0) as usize;
                            self.size = self.size.checked_mul(16).context("chunk size overflow")? + d;
                            self.digits += 1;
                        }
                        b'\r' | b';' | b' ' => self.state = ChunkState::SizeTail,
                        b'\n' => self.end_size_line()?,
                        _ => bail!("bad chunk size byte {c:#x}"),
                    }
                }
                ChunkState::SizeTail => {
                    let c = input[i];
                    i += 1;
                    if c == b'\n' {
                        self.end_size_line()?;
                    }
                }
                ChunkState::Data(left) => {
                    let n = left.min(input.len() - i);
                    out(&input[i..i + n]);
                    i += n;
                    self.state = if n == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n)
                    };
                }
                ChunkState::DataEnd => {
                    let c = input[i];
                    i += 1;
                    if c == b'\n' {
                        self.state = ChunkState::Size;
                    }
                }
                ChunkState::Trailer => {
                    // Only an empty trailer is expected: CRLF.
                    let c = input[i];
                    i += 1;
                    if c == b'\n' {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(i),
            }
        }
        Ok(i)
    }

    fn end_size_line(&mut self) -> Result<()> {
        if self.digits == 0 {
            bail!("empty chunk size");
        }
        self.state = if self.size == 0 {
            ChunkState::Trailer
        } else {
            ChunkState::Data(self.size)
        };
        self.size = 0;
        self.digits = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_in_any_split() {
        let wire = b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\n\r\nNEXT";
        for cut in 0..wire.len() {
            let mut d = Dechunker::default();
            let mut body = Vec::new();
            let end = wire.len() - 4;
            let a = d.feed(&wire[..cut], |p| body.extend_from_slice(p)).expect("first part");
            assert_eq!(a, cut.min(end));
            let used = if d.finished() {
                a
            } else {
                cut + d
                    .feed(&wire[cut..], |p| body.extend_from_slice(p))
                    .expect("second part")
            };
            assert_eq!(body, b"hello world!", "cut at {cut}");
            assert!(d.finished());
            assert_eq!(&wire[used..], b"NEXT", "cut at {cut}");
        }
    }

    #[test]
    fn parses_heads() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nlast-event-id: 5\r\n\r\n")
            .expect("head");
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, Framing::Chunked);
        assert_eq!(h.header("Last-Event-ID"), Some("5"));
        let h = parse_head(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 12\r\n\r\n").expect("head");
        assert_eq!((h.status, h.framing), (429, Framing::Length(12)));
    }
}
