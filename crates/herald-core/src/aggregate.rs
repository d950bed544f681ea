//! Aggregates as `decide` / `evolve`: business rules are pure functions of the
//! state folded from a stream's events; no I/O here.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::store::NewEvent;

/// A business rule refused a command (`rule`, short and stable, names the rule; `detail` says why).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rule}: {detail}")]
pub struct Rejection {
    pub rule: &'static str,
    pub detail: String,
}

/// A command's data did not parse or validate (the message names the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidCommand(pub String);

pub trait Aggregate: Default + Clone + Send + Sync + 'static {
    /// The stream category, e.g. `deployment`.
    const CATEGORY: &'static str;
    /// The command types `parse_command` accepts.
    const COMMAND_TYPES: &'static [&'static str];
    type Command: Send + Sync;
    /// Adjacently tagged (`{"type": …, "data": {…}}`): the variant name is the event type.
    type Event: Serialize + DeserializeOwned + Send;

    /// Parses a command of this aggregate from the wire; `None` when `command_type`
    /// is not one of its commands.
    fn parse_command(command_type: &str, data: Value) -> Option<Result<Self::Command, InvalidCommand>>;

    /// Whether a person must have proved presence with their passkey recently
    /// to send this command (step-up). The domain decides, not the transport:
    /// the command path refuses a risky command from a caller whose last
    /// verification is too old ([`crate::command::CommandError::StepUpRequired`]).
    fn needs_step_up(_command: &Self::Command) -> bool {
        false
    }

    /// The rules: the events a command produces in this state, or why not.
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Rejection>;

    /// Folds one event into the state. Never fails: events are facts.
    fn evolve(&mut self, event: Self::Event);

    /// The state after `events`.
    fn replay(events: impl IntoIterator<Item = Self::Event>) -> Self {
        let mut state = Self::default();
        for e in events {
            state.evolve(e);
        }
        state
    }
}

/// Schema version of every event type so far.
pub const SCHEMA: u32 = 1;

/// Turns a domain event into the store's type + data.
pub fn to_new_event<E: Serialize>(event: &E) -> NewEvent {
    let mut value = serde_json::to_value(event).expect("domain events always serialize");
    let map = value.as_object_mut().expect("domain events are adjacently tagged");
    let event_type = match map.remove("type") {
        Some(Value::String(t)) => t,
        _ => unreachable!("domain events are adjacently tagged with `type`"),
    };
    let data = map.remove("data").unwrap_or_else(|| Value::Object(Default::default()));
    NewEvent {
        event_type,
        schema: SCHEMA,
        data,
    }
}

/// Parses a stored event's type + data back into a domain event.
pub fn from_stored<E: DeserializeOwned>(event_type: &str, data: Value) -> Result<E, serde_json::Error> {
    serde_json::from_value(serde_json::json!({ "type": event_type, "data": data }))
}

/// Parses command data into `T`, naming the offending field on error.
pub fn parse_data<T: DeserializeOwned>(command_type: &str, data: Value) -> Result<T, InvalidCommand> {
    let data = match data {
        Value::Null => Value::Object(Default::default()),
        Value::Object(_) => data,
        other => {
            return Err(InvalidCommand(format!(
                "data: expected an object, got {} (for {command_type})",
                json_kind(&other)
            )));
        }
    };
    serde_path_to_error::deserialize(data).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            InvalidCommand(format!("data: {inner} (for {command_type})"))
        } else {
            InvalidCommand(format!("data.{path}: {inner} (for {command_type})"))
        }
    })
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What a text field may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    /// One line (names, versions): no control characters at all.
    Name,
    /// Free text (messages, reasons): line breaks and tabs allowed.
    Prose,
}

/// Checks a text field: not blank (a field that is present must say something),
/// at most `max` characters, no control characters beyond what `kind` allows.
pub fn check_text(field: &str, value: &str, max: usize, kind: Text) -> Result<(), InvalidCommand> {
    if value.chars().all(|c| c.is_whitespace() || is_invisible(c)) {
        return Err(InvalidCommand(format!("data.{field}: must not be empty")));
    }
    let len = value.chars().count();
    if len > max {
        return Err(InvalidCommand(format!(
            "data.{field}: at most {max} characters (got {len})"
        )));
    }
    let allowed = |c: char| kind == Text::Prose && matches!(c, '\n' | '\r' | '\t');
    if value.chars().any(|c| c.is_control() && !allowed(c)) {
        return Err(InvalidCommand(format!(
            "data.{field}: must not contain control characters"
        )));
    }
    Ok(())
}

/// Zero-width and format characters that render as nothing.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{00AD}')
}
