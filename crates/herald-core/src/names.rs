//! Validated identifiers: aggregate ids and stream names (API.md §3).

use std::fmt;

/// 1–64 characters of `A–Z a–z 0–9 _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AggregateId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("aggregate_id must be 1 to 64 characters of A-Z a-z 0-9 _ - (got {0} characters)")]
    IdLength(usize),
    #[error("aggregate_id may only contain A-Z a-z 0-9 _ - (found {0:?})")]
    IdCharacter(char),
    #[error("stream name must be <category>-<id> with a lowercase category")]
    StreamShape,
}

impl AggregateId {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let len = raw.chars().count();
        if len == 0 || len > 64 {
            return Err(NameError::IdLength(len));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(NameError::IdCharacter(bad));
        }
        Ok(AggregateId(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AggregateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `<category>-<aggregate id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamName(String);

impl StreamName {
    pub fn new(category: &str, id: &AggregateId) -> Self {
        debug_assert!(is_category(category));
        StreamName(format!("{category}-{id}"))
    }

    /// Parses a stream name as a client may send it (e.g. in `/api/streams/{stream}`).
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let (category, id) = raw.split_once('-').ok_or(NameError::StreamShape)?;
        if !is_category(category) {
            return Err(NameError::StreamShape);
        }
        AggregateId::parse(id)?;
        Ok(StreamName(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn category(&self) -> &str {
        crate::envelope::category_of(&self.0)
    }

    pub fn id(&self) -> &str {
        self.0.split_once('-').map_or("", |(_, id)| id)
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A category is 1–32 lowercase ASCII letters.
pub fn is_category(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_ids() {
        assert!(AggregateId::parse("7f3a-b_C9").is_ok());
        assert!(AggregateId::parse(&"a".repeat(64)).is_ok());
        assert_eq!(AggregateId::parse(""), Err(NameError::IdLength(0)));
        assert_eq!(AggregateId::parse(&"a".repeat(65)), Err(NameError::IdLength(65)));
        assert_eq!(AggregateId::parse("a/b"), Err(NameError::IdCharacter('/')));
        assert_eq!(AggregateId::parse("é"), Err(NameError::IdCharacter('é')));
        assert_eq!(AggregateId::parse("a b"), Err(NameError::IdCharacter(' ')));
    }

    #[test]
    fn stream_names() {
        let s = StreamName::parse("deployment-7f3a-1").unwrap();
        assert_eq!(s.category(), "deployment");
        assert_eq!(s.id(), "7f3a-1");
        assert!(StreamName::parse("deployment").is_err());
        assert!(StreamName::parse("Deployment-1").is_err());
        assert!(StreamName::parse("deployment-").is_err());
        assert!(StreamName::parse("-1").is_err());
        assert!(StreamName::parse("deployment-a.b").is_err());
    }
}
