//! Wall-clock time as herald stores it: milliseconds since the epoch. A leaf.

use herald_core::accounts::Millis;

pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

pub fn millis_rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn millis(d: std::time::Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}
