//! Request parsing and response writing shared by the routes: JSON bodies with
//! precise errors, query strings, and event lists written from the stored JSON
//! without re-serializing.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use herald_core::RecordedEvent;
use herald_core::names::StreamName;
use herald_core::store::Filter;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Reads a JSON body of at most `limit` bytes, refusing other content types.
pub async fn read_json_body<T: DeserializeOwned>(headers: &HeaderMap, body: Body, limit: usize) -> Result<T, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            let m = m.trim();
            m.eq_ignore_ascii_case("application/json") || m.to_ascii_lowercase().ends_with("+json")
        });
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::BadRequest(format!("the request body could not be read: {e}"))
        }
    })?;
    parse_json(&bytes)
}

/// Parses JSON naming the offending field (`data.percent: invalid type …`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(ApiError::BadRequest(
                "the request body is empty; send a JSON object".into(),
            ));
        }
        // Derived structs would also accept a positional array: only objects are bodies here.
        Some(b'{') => {}
        Some(_) => return Err(ApiError::BadRequest("body: expected a JSON object".into())),
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        use serde_json::error::Category;
        match inner.classify() {
            Category::Eof => ApiError::BadRequest(format!("the JSON body is truncated: {inner}")),
            Category::Syntax | Category::Io => ApiError::BadRequest(format!("the body is not valid JSON: {inner}")),
            Category::Data if path == "." => ApiError::BadRequest(format!("body: {inner}")),
            Category::Data => ApiError::BadRequest(format!("{path}: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::BadRequest(format!("the body has trailing characters after the JSON value: {e}")))?;
    Ok(value)
}

/// A JSON response from pre-built bytes.
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Writes `"name":[envelope,…]` from the stored JSON.
pub fn write_events(out: &mut Vec<u8>, name: &str, events: &[Arc<RecordedEvent>]) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e.json());
    }
    out.push(b']');
}

/// Writes `"name":<json>`.
pub fn write_field(out: &mut Vec<u8>, name: &str, value: &impl serde::Serialize) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    serde_json::to_writer(&mut *out, value).expect("plain values serialize");
}

/// The frames of several events as one buffer (one copy), or the frame itself for one.
pub fn concat_frames(events: &[Arc<RecordedEvent>]) -> Bytes {
    if let [one] = events {
        return one.frame().clone();
    }
    let mut buf = BytesMut::with_capacity(events.iter().map(|e| e.frame().len()).sum());
    for e in events {
        buf.put_slice(e.frame());
    }
    buf.freeze()
}

/// `?after=&limit=&stream=&category=&type=` (filters repeatable).
#[derive(Debug, Default)]
pub struct EventQuery {
    pub after: Option<u64>,
    pub limit: Option<usize>,
    pub filter: Filter,
}

pub const MAX_FILTER_VALUES: usize = 100;

impl EventQuery {
    /// Parses the query string; `allowed_extra` lists other parameter names a route accepts.
    pub fn parse(query: Option<&str>, allow_limit: bool) -> Result<EventQuery, ApiError> {
        let mut q = EventQuery::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "after" => q.after = Some(parse_number("after", &value)?),
                "limit" if allow_limit => {
                    let n: u64 = parse_number("limit", &value)?;
                    if n == 0 {
                        return Err(ApiError::BadRequest("limit: must be at least 1".into()));
                    }
                    q.limit = Some(n.min(1000) as usize);
                }
                "stream" => {
                    StreamName::parse(&value)
                        .map_err(|e| ApiError::BadRequest(format!("stream: {value:?} is not a stream name: {e}")))?;
                    q.filter.streams.push(value.into_owned());
                }
                "category" => {
                    if !herald_core::names::is_category(&value) {
                        return Err(ApiError::BadRequest(format!(
                            "category: {value:?} is not a category (1 to 32 lowercase letters)"
                        )));
                    }
                    q.filter.categories.push(value.into_owned());
                }
                "type" => {
                    if value.is_empty() || value.len() > 128 || !value.chars().all(|c| c.is_ascii_alphanumeric()) {
                        return Err(ApiError::BadRequest(format!(
                            "type: {value:?} is not an event type (letters and digits)"
                        )));
                    }
                    q.filter.types.push(value.into_owned());
                }
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "{other}: unknown query parameter (known: after, {}stream, category, type)",
                        if allow_limit { "limit, " } else { "" }
                    )));
                }
            }
        }
        let total = q.filter.streams.len() + q.filter.categories.len() + q.filter.types.len();
        if total > MAX_FILTER_VALUES {
            return Err(ApiError::BadRequest(format!(
                "at most {MAX_FILTER_VALUES} stream, category and type values in all (got {total})"
            )));
        }
        Ok(q)
    }
}

pub fn parse_number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ApiError> {
    value
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{name}: {value:?} is not a non-negative whole number")))
}

/// `axum::extract::Path` whose rejection is a problem+json 400.
pub struct PathParam<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for PathParam<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| PathParam(v))
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }
}

/// `?min_position=P` alone (0 when absent): the query of a read-model read
/// or a resource stream that takes nothing else; 400 naming anything else.
pub fn min_position_query(uri: &axum::http::Uri) -> Result<u64, ApiError> {
    let mut min_position = 0;
    for (key, value) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*key {
            "min_position" => min_position = parse_number("min_position", &value)?,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "{other}: unknown query parameter (known: min_position)"
                )));
            }
        }
    }
    Ok(min_position)
}
