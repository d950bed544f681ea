//! An incremental Server-Sent Events parser (the WHATWG event-stream format):
//! bytes go in as they arrive from the socket, in any split; complete
//! messages come out. It allocates only while a message is longer than any
//! before it.

/// One message: its `id`, `event` and `data` fields (data lines joined by `\n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub id: Option<&'a [u8]>,
    pub event: Option<&'a [u8]>,
    pub data: &'a [u8],
    /// Whether the message had at least one `data` line.
    pub has_data: bool,
}

#[derive(Default, Debug)]
pub struct Parser {
    /// The unfinished line carried over from the previous `feed`.
    partial: Vec<u8>,
    id: Vec<u8>,
    has_id: bool,
    event: Vec<u8>,
    has_event: bool,
    data: Vec<u8>,
    has_data: bool,
    /// A `\r` ended the last chunk: a `\n` starting the next one belongs to it.
    pending_cr: bool,
}

impl Parser {
    pub fn new() -> Self {
        Parser::default()
    }

    /// Feeds bytes; calls `on_message` for each message a blank line completes.
    pub fn feed(&mut self, mut input: &[u8], mut on_message: impl FnMut(Message<'_>)) {
        if self.pending_cr {
            self.pending_cr = false;
            if input.first() == Some(&b'\n') {
                input = &input[1..];
            }
        }
        while !input.is_empty() {
            match memchr::memchr2(b'\n', b'\r', input) {
                None => {
                    self.partial.extend_from_slice(input);
                    return;
                }
                Some(end) => {
                    let crlf = input[end] == b'\r';
                    if self.partial.is_empty() {
                        self.line(&input[..end], &mut on_message);
                    } else {
                        let mut line = std::mem::take(&mut self.partial);
                        line.extend_from_slice(&input[..end]);
                        self.line(&line, &mut on_message);
                        line.clear();
                        self.partial = line;
                    }
                    input = &input[end + 1..];
                    if crlf {
                        match input.first() {
                            Some(b'\n') => input = &input[1..],
                            None => self.pending_cr = true,
                            Some(_) => {}
                        }
                    }
                }
            }
        }
    }

    fn line(&mut self, line: &[u8], on_message: &mut impl FnMut(Message<'_>)) {
        if line.is_empty() {
            if self.has_data || self.has_id || self.has_event {
                on_message(Message {
                    id: self.has_id.then_some(&self.id[..]),
                    event: self.has_event.then_some(&self.event[..]),
                    data: &self.data,
                    has_data: self.has_data,
                });
            }
            self.has_id = false;
            self.has_event = false;
            self.has_data = false;
            self.id.clear();
            self.event.clear();
            self.data.clear();
            return;
        }
        if line[0] == b':' {
            return; // a comment
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let v = &line[colon + 1..];
                (&line[..colon], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"id" => {
                self.id.clear();
                self.id.extend_from_slice(value);
                self.has_id = true;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
                self.has_event = true;
            }
            _ => {} // retry and unknown fields
        }
    }
}

/// The number after `"command_id":"<run>-` in an envelope (or a reference
/// payload), when the command came from the bench run `run`.
pub fn command_index(data: &[u8], run: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"command_id\":\"";
    // Built once: building the searcher per message cost as much as the search.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(KEY));
    let at = FINDER.find(data)? + KEY.len();
    let rest = data[at..].strip_prefix(run)?.strip_prefix(b"-")?;
    let end = memchr::memchr(b'"', rest)?;
    parse_u64(&rest[..end])
}

pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    let mut n = 0u64;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(c - b'0');
    }
    Some(n)
}

/// An SSE id as an ordered key: herald's `42`, the ceiling's `42` and Nchan's
/// `1700000000:3` (time, then a tag) all compare in delivery order.
pub fn id_key(id: &[u8]) -> Option<(u64, u64)> {
    match memchr::memchr(b':', id) {
        None => parse_u64(id).map(|n| (n, 0)),
        Some(colon) => {
            let tag = &id[colon + 1..];
            let tag = tag.strip_prefix(b"[").unwrap_or(tag);
            let tag = tag.strip_suffix(b"]").unwrap_or(tag);
            Some((parse_u64(&id[..colon])?, parse_u64(tag)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: &[&[u8]]) -> Vec<(Option<String>, Option<String>, String)> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, |m| {
                out.push((
                    m.id.map(|s| String::from_utf8_lossy(s).into_owned()),
                    m.event.map(|s| String::from_utf8_lossy(s).into_owned()),
                    String::from_utf8_lossy(m.data).into_owned(),
                ))
            });
        }
        out
    }

    const STREAM: &[u8] = b"retry: 3000\n\nid: 7\n\n: keep-alive\n\nid: 8\nevent: DeploymentStarted\ndata: {\"a\":1}\n\nid: 9\ndata: x\ndata: y\n\n";

    #[test]
    fn parses_a_whole_stream() {
        let got = collect(&[STREAM]);
        assert_eq!(
            got,
            vec![
                (Some("7".into()), None, String::new()),
                (Some("8".into()), Some("DeploymentStarted".into()), "{\"a\":1}".into()),
                (Some("9".into()), None, "x\ny".into()),
            ]
        );
    }

    #[test]
    fn any_split_gives_the_same_messages() {
        let whole = collect(&[STREAM]);
        for cut in 0..STREAM.len() {
            assert_eq!(collect(&[&STREAM[..cut], &STREAM[cut..]]), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(collect(&bytes), whole);
    }

    #[test]
    fn crlf_and_cr_line_endings() {
        let crlf = b"id: 1\r\ndata: a\r\n\r\nid: 2\rdata: b\r\r";
        let want = vec![
            (Some("1".into()), None, "a".to_string()),
            (Some("2".into()), None, "b".to_string()),
        ];
        assert_eq!(collect(&[crlf]), want);
        for cut in 0..crlf.len() {
            assert_eq!(collect(&[&crlf[..cut], &crlf[cut..]]), want, "cut at {cut}");
        }
    }

    #[test]
    fn field_without_value_and_without_space() {
        assert_eq!(
            collect(&[b"data\nid:5\n\n"]),
            vec![(Some("5".into()), None, String::new())]
        );
    }

    #[test]
    fn finds_the_command_index() {
        let env = br#"{"actor":{},"command_id":"ab12-00000042","data":{}}"#;
        assert_eq!(command_index(env, b"ab12"), Some(42));
        assert_eq!(command_index(env, b"zz99"), None, "another run's command");
        assert_eq!(command_index(b"{\"command_id\":\"ab12-x\"}", b"ab12"), None);
        assert_eq!(command_index(b"{}", b"ab12"), None);
    }

    #[test]
    fn ids_order_like_delivery() {
        assert_eq!(id_key(b"42"), Some((42, 0)));
        assert_eq!(id_key(b"1700000000:3"), Some((1_700_000_000, 3)));
        assert_eq!(id_key(b"1700000000:[3]"), Some((1_700_000_000, 3)));
        assert!(id_key(b"1700000000:3") < id_key(b"1700000001:0"));
        assert_eq!(id_key(b"x"), None);
    }
}
