//! Tags (issue 10): what a post's tags and a feed's name may be. A command's
//! tags and the tag in `/api/feeds/{tag}` are normalised the same way: trimmed,
//! lowercased, then 1–32 characters of `a-z 0-9 -`; a post's list is
//! de-duplicated keeping the first occurrence, and holds at most [`MAX_TAGS`].

use std::collections::HashSet;

use herald_core::aggregate::InvalidCommand;

/// Tags a post may have.
pub const MAX_TAGS: usize = 10;

/// The longest tag, in characters (all ASCII).
pub const MAX_TAG_LEN: usize = 32;

/// Whether `s` is a tag as stored: 1–32 characters of `a-z 0-9 -`.
pub fn is_tag(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TAG_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `raw` trimmed and lowercased, if that is a tag.
pub fn normalize(raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    if is_tag(trimmed) {
        return Some(trimmed.to_owned());
    }
    let lower = trimmed.to_lowercase();
    is_tag(&lower).then_some(lower)
}

/// Why `raw` (as sent) is not a tag, for the field `field`.
pub fn not_a_tag(field: &str, raw: &str) -> String {
    format!("{field}: {raw:?} is not a tag (1–32 characters of a–z, 0–9 and -)")
}

/// The tag in a path (`/api/feeds/Rust` is `rust`), or the 400 detail naming it.
pub fn parse_path_tag(raw: &str) -> Result<String, String> {
    normalize(raw).ok_or_else(|| not_a_tag("tag", raw))
}

/// A command's `tags`: each normalised, then de-duplicated keeping the first
/// occurrence; the error names the field (`data.tags[2]: …`, `data.tags: at
/// most 10 tags (got 11)`).
pub fn normalize_tags(raw: &[String]) -> Result<Vec<String>, InvalidCommand> {
    let mut seen = HashSet::with_capacity(raw.len());
    let mut out = Vec::with_capacity(raw.len().min(MAX_TAGS));
    for (i, r) in raw.iter().enumerate() {
        let tag = normalize(r).ok_or_else(|| InvalidCommand(not_a_tag(&format!("data.tags[{i}]"), r)))?;
        if seen.insert(tag.clone()) {
            out.push(tag);
        }
    }
    if out.len() > MAX_TAGS {
        return Err(InvalidCommand(format!(
            "data.tags: at most {MAX_TAGS} tags (got {})",
            out.len()
        )));
    }
    Ok(out)
}

/// Tags as the read model keeps them, whatever a stored event holds: each
/// normalised, those that are no tag dropped, duplicates dropped. For the
/// events herald writes (already normalised) this is the list itself.
pub fn sanitize<'a>(raw: impl IntoIterator<Item = &'a str>, out: &mut Vec<String>) {
    out.clear();
    for r in raw {
        let Some(tag) = (if is_tag(r) { Some(r.to_owned()) } else { normalize(r) }) else {
            continue;
        };
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn normalises_trims_lowercases_and_keeps_first_occurrences() {
        assert_eq!(
            normalize_tags(&strings(&[" Rust ", "ops", "RUST", "rust", "a-1"])),
            Ok(strings(&["rust", "ops", "a-1"]))
        );
    }

    #[test]
    fn sanitize_drops_what_is_no_tag() {
        let mut out = vec!["stale".to_owned()];
        sanitize(["Rust", "no spaces", "rust", "", "ops"], &mut out);
        assert_eq!(out, strings(&["rust", "ops"]));
    }
}
