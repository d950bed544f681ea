//! The Post aggregate (issue 10): create a post, update its title, content or
//! tags. No step-up: writing posts is an operator's everyday work.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use herald_core::aggregate::{Aggregate, InvalidCommand, Rejection, Text, check_text, parse_data};

use super::tags::normalize_tags;

/// The stream category of posts (`post-<id>`).
pub const CATEGORY: &str = "post";

pub const MAX_TITLE: usize = 200;
pub const MAX_CONTENT: usize = 20_000;

/// The rule refusing a create on a stream that has a post.
pub const POST_EXISTS: &str = "post_exists";
/// The rule refusing an update of a post that does not exist.
pub const POST_NOT_FOUND: &str = "post_not_found";
/// The rule refusing an update that would change nothing.
pub const NOTHING_CHANGED: &str = "nothing_changed";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostCommand {
    Create {
        title: String,
        content: String,
        /// Normalised (see [`super::tags`]).
        tags: Vec<String>,
    },
    /// At least one field is given.
    Update {
        title: Option<String>,
        content: Option<String>,
        /// Normalised.
        tags: Option<Vec<String>>,
    },
}

/// A field's value before and after an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change<T> {
    pub old: T,
    pub new: T,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum PostEvent {
    PostCreated {
        title: String,
        content: String,
        tags: Vec<String>,
    },
    /// Only what changed.
    PostUpdated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<Change<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<Change<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tags: Option<Change<Vec<String>>>,
    },
}

/// A post as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostState {
    pub title: String,
    pub content: String,
    pub tags: Vec<String>,
}

/// The write-side state: the post's current fields, once created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Post {
    current: Option<PostState>,
}

impl Post {
    pub fn current(&self) -> Option<&PostState> {
        self.current.as_ref()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateData {
    title: String,
    content: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateData {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

fn parse(command_type: &str, data: Value) -> Result<PostCommand, InvalidCommand> {
    Ok(match command_type {
        "CreatePost" => {
            let d: CreateData = parse_data(command_type, data)?;
            check_text("title", &d.title, MAX_TITLE, Text::Name)?;
            check_text("content", &d.content, MAX_CONTENT, Text::Prose)?;
            let tags = normalize_tags(d.tags.as_deref().unwrap_or_default())?;
            PostCommand::Create {
                title: d.title,
                content: d.content,
                tags,
            }
        }
        "UpdatePost" => {
            let d: UpdateData = parse_data(command_type, data)?;
            if d.title.is_none() && d.content.is_none() && d.tags.is_none() {
                return Err(InvalidCommand("data: at least one of title, content, tags".into()));
            }
            if let Some(title) = &d.title {
                check_text("title", title, MAX_TITLE, Text::Name)?;
            }
            if let Some(content) = &d.content {
                check_text("content", content, MAX_CONTENT, Text::Prose)?;
            }
            let tags = d.tags.as_deref().map(normalize_tags).transpose()?;
            PostCommand::Update {
                title: d.title,
                content: d.content,
                tags,
            }
        }
        _ => unreachable!("checked by parse_command"),
    })
}

pub const COMMAND_TYPES: &[&str] = &["CreatePost", "UpdatePost"];

/// `Some(old → new)` when `new` is given and differs from `old`.
fn change<T: PartialEq + Clone>(old: &T, new: &Option<T>) -> Option<Change<T>> {
    new.as_ref().filter(|new| *new != old).map(|new| Change {
        old: old.clone(),
        new: new.clone(),
    })
}

impl Aggregate for Post {
    const CATEGORY: &'static str = CATEGORY;
    const COMMAND_TYPES: &'static [&'static str] = COMMAND_TYPES;
    type Command = PostCommand;
    type Event = PostEvent;

    fn parse_command(command_type: &str, data: Value) -> Option<Result<Self::Command, InvalidCommand>> {
        COMMAND_TYPES.contains(&command_type).then(|| parse(command_type, data))
    }

    fn decide(&self, command: &PostCommand) -> Result<Vec<PostEvent>, Rejection> {
        match (command, &self.current) {
            (PostCommand::Create { title, content, tags }, None) => Ok(vec![PostEvent::PostCreated {
                title: title.clone(),
                content: content.clone(),
                tags: tags.clone(),
            }]),
            (PostCommand::Create { .. }, Some(_)) => Err(Rejection {
                rule: POST_EXISTS,
                detail: "a post with this id exists already".into(),
            }),
            (PostCommand::Update { .. }, None) => Err(Rejection {
                rule: POST_NOT_FOUND,
                detail: "there is no post with this id".into(),
            }),
            (PostCommand::Update { title, content, tags }, Some(current)) => {
                let title = change(&current.title, title);
                let content = change(&current.content, content);
                let tags = change(&current.tags, tags);
                if title.is_none() && content.is_none() && tags.is_none() {
                    return Err(Rejection {
                        rule: NOTHING_CHANGED,
                        detail: "every field given already has that value".into(),
                    });
                }
                Ok(vec![PostEvent::PostUpdated { title, content, tags }])
            }
        }
    }

    fn evolve(&mut self, event: PostEvent) {
        match event {
            PostEvent::PostCreated { title, content, tags } => {
                if self.current.is_none() {
                    self.current = Some(PostState { title, content, tags });
                }
            }
            PostEvent::PostUpdated { title, content, tags } => {
                if let Some(current) = &mut self.current {
                    if let Some(c) = title {
                        current.title = c.new;
                    }
                    if let Some(c) = content {
                        current.content = c.new;
                    }
                    if let Some(c) = tags {
                        current.tags = c.new;
                    }
                }
            }
        }
    }
}
