//! RFC 8785 (JCS) canonical JSON, written straight into a `String`.
//!
//! The text is byte for byte what `serde_jcs` writes (a test holds the two to
//! each other on generated values): members sorted by their names' UTF-16 code
//! units, no whitespace, strings escaped as ECMAScript's `JSON.stringify` does
//! (`\b \t \n \f \r \" \\`, other controls as `\u00xx`, everything else as
//! is), and every number written as the IEEE double it denotes, the way
//! ECMAScript prints it (`ryu-js`). Why not `serde_jcs` itself: it sends every
//! fragment through a boxed writer, parses each member name back from JSON to
//! sort it and buffers each object in a map of vectors; the command path runs
//! this for every fingerprint and every sealed event, and `serde_jcs` was
//! about a tenth of a command's CPU.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

/// The canonical text of `value`.
pub fn to_string(value: &Value) -> String {
    let mut out = String::with_capacity(128);
    write_value(&mut out, value);
    out
}

/// Appends the canonical text of `value`.
pub fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

fn write_object(out: &mut String, map: &Map<String, Value>) {
    // The map iterates in UTF-8 byte order, which is code point order. UTF-16
    // order differs from it only where a name has a supplementary-plane
    // character (4 UTF-8 bytes, led by 0xF0..): without one, the map's own
    // order is the canonical one and nothing is collected or sorted.
    if map.keys().any(|k| k.bytes().any(|b| b >= 0xf0)) {
        let mut members: Vec<(&String, &Value)> = map.iter().collect();
        members.sort_by(|a, b| utf16_cmp(a.0, b.0));
        write_members(out, members);
    } else {
        write_members(out, map.iter());
    }
}

fn write_members<'a>(out: &mut String, members: impl IntoIterator<Item = (&'a String, &'a Value)>) {
    out.push('{');
    for (i, (key, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, key);
        out.push(':');
        write_value(out, value);
    }
    out.push('}');
}

/// Orders by UTF-16 code units (RFC 8785 §3.2.3).
pub fn utf16_cmp(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        a.cmp(b)
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

/// Appends `n` as the double it denotes, as ECMAScript prints it.
pub fn write_number(out: &mut String, n: &Number) {
    // Every serde_json number (u64, i64 or finite f64) has an f64 reading:
    // what RFC 8785 writes, and what serde_jcs converts integers to.
    write_f64(out, n.as_f64().unwrap_or(0.0));
}

/// Appends an unsigned integer the way RFC 8785 writes it (as a double).
pub fn write_u64(out: &mut String, n: u64) {
    write_f64(out, n as f64);
}

fn write_f64(out: &mut String, n: f64) {
    let mut buffer = ryu_js::Buffer::new();
    out.push_str(buffer.format_finite(n));
}

/// Appends `s` as a JSON string, escaped as RFC 8785 asks.
pub fn write_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            0x0c => "\\f",
            b'\r' => "\\r",
            0x00..=0x1f => "",
            _ => continue,
        };
        // Only ASCII bytes end a run, so `start..i` is whole characters.
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A small deterministic generator (xorshift), so a failure reproduces.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn string(&mut self) -> String {
            // Controls, quotes, backslash, ASCII, Latin-1, DEL, BMP (below and
            // above the surrogates, U+E000 and U+FFFF), and supplementary planes.
            const CHARS: &[char] = &[
                '\u{0}',
                '\u{1}',
                '\u{8}',
                '\t',
                '\n',
                '\u{b}',
                '\u{c}',
                '\r',
                '\u{1f}',
                '"',
                '\\',
                '/',
                'a',
                'Z',
                '0',
                ' ',
                '\u{7f}',
                '\u{e9}',
                '\u{2028}',
                '\u{d7ff}',
                '\u{e000}',
                '\u{ffff}',
                '\u{10000}',
                '\u{1f600}',
                '\u{10ffff}',
            ];
            (0..self.below(6))
                .map(|_| CHARS[self.below(CHARS.len() as u64) as usize])
                .collect()
        }

        fn number(&mut self) -> Value {
            match self.below(6) {
                0 => json!(self.next()),
                1 => json!(self.next() as i64),
                2 => json!(self.below(1 << 20) as i64 - (1 << 19)),
                3 => json!(f64::from_bits(self.next()).clamp(-1e300, 1e300)),
                4 => json!((self.below(2_000_000) as f64 - 1_000_000.0) / 1000.0),
                _ => json!(10f64.powi(self.below(60) as i32 - 30) * if self.below(2) == 0 { 1.0 } else { -1.0 }),
            }
        }

        fn value(&mut self, depth: u32) -> Value {
            match self.below(if depth == 0 { 5 } else { 7 }) {
                0 => Value::Null,
                1 => Value::Bool(self.below(2) == 0),
                2 => self.number(),
                3 | 4 => Value::String(self.string()),
                5 => Value::Array((0..self.below(4)).map(|_| self.value(depth - 1)).collect()),
                _ => Value::Object(
                    (0..self.below(6))
                        .map(|_| (self.string(), self.value(depth - 1)))
                        .collect(),
                ),
            }
        }
    }

    #[test]
    fn writes_what_serde_jcs_writes() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        for i in 0..20_000 {
            let value = g.value(4);
            let expected = serde_jcs::to_string(&value).expect("serde_jcs");
            assert_eq!(to_string(&value), expected, "value {i}: {value:?}");
        }
    }

    #[test]
    fn the_edges_rfc_8785_names() {
        for (value, text) in [
            (
                json!({"\u{e000}": 1, "\u{10000}": 2}),
                "{\"\u{10000}\":2,\"\u{e000}\":1}",
            ),
            (json!(-0.0), "0"),
            (json!(1e21), "1e+21"),
            (json!(1e-7), "1e-7"),
            (json!(9_007_199_254_740_993u64), "9007199254740992"),
            (json!(0.1 + 0.2), "0.30000000000000004"),
            (json!("\u{1}\u{7f}\u{2028}"), "\"\\u0001\u{7f}\u{2028}\""),
            (
                json!({"b": [1, {"d": null, "c": true}], "a": "x"}),
                "{\"a\":\"x\",\"b\":[1,{\"c\":true,\"d\":null}]}",
            ),
        ] {
            assert_eq!(to_string(&value), text, "{value:?}");
            assert_eq!(serde_jcs::to_string(&value).expect("serde_jcs"), text, "{value:?}");
        }
    }
}
