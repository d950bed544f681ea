//! Given-when-then tests for the Post aggregate (issue 10). Pure: no store, no I/O.
//!
//! `given(events).when(command).then(expected_events)` replays `events` into a fresh
//! `Post`, runs `decide`, and compares what it produced; `.then_rejected(rule)`
//! expects a `Rejection` with that rule (the problem's `title` on the wire).

use herald_core::aggregate::{Aggregate, InvalidCommand, Rejection, from_stored, to_new_event};
use herald_server::domains::posts::aggregate::{
    COMMAND_TYPES, Change, NOTHING_CHANGED, POST_EXISTS, POST_NOT_FOUND, Post, PostCommand, PostEvent, PostState,
};
use herald_server::domains::posts::tags::{is_tag, normalize_tags, parse_path_tag};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Scenario helper
// ---------------------------------------------------------------------------

struct Given {
    history: Vec<PostEvent>,
}

struct When {
    history: Vec<PostEvent>,
    command: PostCommand,
}

fn given(history: impl IntoIterator<Item = PostEvent>) -> Given {
    Given {
        history: history.into_iter().collect(),
    }
}

impl Given {
    fn when(self, command: PostCommand) -> When {
        When {
            history: self.history,
            command,
        }
    }

    /// The command as it arrives on the wire: parsed with `parse_command` first.
    #[track_caller]
    fn when_wire(self, command_type: &str, data: Value) -> When {
        let command = parse_ok(command_type, data);
        self.when(command)
    }
}

impl When {
    fn decide(&self) -> Result<Vec<PostEvent>, Rejection> {
        Post::replay(self.history.clone()).decide(&self.command)
    }

    /// Asserts the command is accepted and produces exactly `expected`; returns the history after.
    #[track_caller]
    fn then(self, expected: Vec<PostEvent>) -> Vec<PostEvent> {
        let produced = match self.decide() {
            Ok(events) => events,
            Err(rejection) => panic!(
                "expected {expected:?} from {:?} after {:?}, got rejection {rejection:?}",
                self.command, self.history
            ),
        };
        assert_eq!(
            produced, expected,
            "events produced by {:?} after {:?}",
            self.command, self.history
        );
        let mut history = self.history;
        history.extend(produced);
        history
    }

    /// Asserts the command is refused by the rule titled `rule`.
    #[track_caller]
    fn then_rejected(self, rule: &str) -> Rejection {
        match self.decide() {
            Err(rejection) => {
                assert_eq!(
                    rejection.rule, rule,
                    "rule refusing {:?} after {:?}",
                    self.command, self.history
                );
                assert!(!rejection.detail.trim().is_empty(), "rejection without detail");
                rejection
            }
            Ok(events) => panic!(
                "expected rejection {rule:?} of {:?} after {:?}, got events {events:?}",
                self.command, self.history
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

fn s(v: &str) -> String {
    v.to_owned()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|t| s(t)).collect()
}

fn created(title: &str, content: &str, tags: &[&str]) -> PostEvent {
    PostEvent::PostCreated {
        title: s(title),
        content: s(content),
        tags: strings(tags),
    }
}

fn hello() -> PostEvent {
    created("Hello", "First post.", &["rust", "ops"])
}

fn create(title: &str, content: &str, tags: &[&str]) -> PostCommand {
    PostCommand::Create {
        title: s(title),
        content: s(content),
        tags: strings(tags),
    }
}

fn update(title: Option<&str>, content: Option<&str>, tags: Option<&[&str]>) -> PostCommand {
    PostCommand::Update {
        title: title.map(s),
        content: content.map(s),
        tags: tags.map(strings),
    }
}

fn change<T>(old: T, new: T) -> Option<Change<T>> {
    Some(Change { old, new })
}

#[track_caller]
fn parse(command_type: &str, data: Value) -> Result<PostCommand, InvalidCommand> {
    match Post::parse_command(command_type, data) {
        Some(result) => result,
        None => panic!("{command_type} should be a post command"),
    }
}

#[track_caller]
fn parse_ok(command_type: &str, data: Value) -> PostCommand {
    match parse(command_type, data.clone()) {
        Ok(command) => command,
        Err(InvalidCommand(detail)) => panic!("{command_type} {data} should parse, got {detail:?}"),
    }
}

/// Asserts the command is invalid and the message starts with `field`; returns the message.
#[track_caller]
fn parse_err(command_type: &str, data: Value, field: &str) -> String {
    match parse(command_type, data.clone()) {
        Ok(command) => panic!("{command_type} {data} should be invalid, parsed as {command:?}"),
        Err(InvalidCommand(detail)) => {
            assert!(
                detail.starts_with(&format!("{field}:")),
                "error for {command_type} {data} should name {field:?}: {detail:?}"
            );
            detail
        }
    }
}

// ---------------------------------------------------------------------------
// Tags
// ---------------------------------------------------------------------------

#[test]
fn tags_are_trimmed_lowercased_and_deduplicated_keeping_the_first() {
    assert_eq!(
        normalize_tags(&strings(&["  Rust", "OPS ", "rust", "release-2", "Ops", "a"])),
        Ok(strings(&["rust", "ops", "release-2", "a"]))
    );
    assert_eq!(normalize_tags(&[]), Ok(vec![]));
    // On the wire, absent tags are none.
    assert_eq!(
        parse_ok("CreatePost", json!({"title": "t", "content": "c"})),
        create("t", "c", &[])
    );
    assert_eq!(
        parse_ok(
            "CreatePost",
            json!({"title": "t", "content": "c", "tags": [" Infra", "infra", "DB"]})
        ),
        create("t", "c", &["infra", "db"])
    );
}

#[test]
fn a_tag_is_1_to_32_of_lowercase_letters_digits_and_dashes() {
    for ok in ["a", "0", "-", "rust-2026", &"x".repeat(32)] {
        assert!(is_tag(ok), "{ok:?}");
    }
    for bad in [
        "",
        "no spaces",
        "snake_case",
        "ünï",
        "Rust",
        &"x".repeat(33),
        "a.b",
        "#tag",
    ] {
        assert!(!is_tag(bad), "{bad:?}");
    }
    // Normalising comes first: " RUST " is rust; 33 characters stay too many.
    assert_eq!(parse_path_tag(" RUST "), Ok(s("rust")));
    assert_eq!(parse_path_tag(&format!(" {} ", "X".repeat(32))), Ok("x".repeat(32)));
    assert!(parse_path_tag(&"x".repeat(33)).is_err());
    assert_eq!(
        parse_path_tag("no spaces"),
        Err(s("tag: \"no spaces\" is not a tag (1–32 characters of a–z, 0–9 and -)"))
    );
}

#[test]
fn an_invalid_tag_is_named_by_its_index() {
    let detail = parse_err(
        "CreatePost",
        json!({"title": "t", "content": "c", "tags": ["rust", "ops", "no spaces"]}),
        "data.tags[2]",
    );
    assert_eq!(
        detail,
        "data.tags[2]: \"no spaces\" is not a tag (1–32 characters of a–z, 0–9 and -)"
    );
    parse_err(
        "CreatePost",
        json!({"title": "t", "content": "c", "tags": ["   "]}),
        "data.tags[0]",
    );
    parse_err(
        "CreatePost",
        json!({"title": "t", "content": "c", "tags": ["a", "a", &"b".repeat(33)]}),
        "data.tags[2]",
    );
    parse_err("UpdatePost", json!({"tags": ["ok", "not_ok"]}), "data.tags[1]");
    parse_err(
        "CreatePost",
        json!({"title": "t", "content": "c", "tags": ["a", 3]}),
        "data.tags[1]",
    );
    parse_err(
        "CreatePost",
        json!({"title": "t", "content": "c", "tags": "rust"}),
        "data.tags",
    );
}

#[test]
fn at_most_10_tags_after_deduplication() {
    let ten: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let mut with_dupes = ten.clone();
    with_dupes.extend(["T1".to_owned(), " t2".to_owned()]);
    assert_eq!(
        parse_ok("CreatePost", json!({"title": "t", "content": "c", "tags": with_dupes})),
        PostCommand::Create {
            title: s("t"),
            content: s("c"),
            tags: ten.clone()
        }
    );
    let mut eleven = ten;
    eleven.push("t10".to_owned());
    let detail = parse_err(
        "CreatePost",
        json!({"title": "t", "content": "c", "tags": eleven}),
        "data.tags",
    );
    assert_eq!(detail, "data.tags: at most 10 tags (got 11)");
    parse_err("UpdatePost", json!({"tags": eleven}), "data.tags");
}

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

#[test]
fn title_is_1_to_200_characters_on_one_line() {
    let ok = "é".repeat(200);
    assert_eq!(
        parse_ok("CreatePost", json!({"title": ok, "content": "c"})),
        create(&ok, "c", &[])
    );
    let detail = parse_err(
        "CreatePost",
        json!({"title": "é".repeat(201), "content": "c"}),
        "data.title",
    );
    assert!(detail.contains("200"), "{detail}");
    parse_err("CreatePost", json!({"title": "", "content": "c"}), "data.title");
    parse_err("CreatePost", json!({"title": "   ", "content": "c"}), "data.title");
    parse_err(
        "CreatePost",
        json!({"title": "two\nlines", "content": "c"}),
        "data.title",
    );
    parse_err(
        "CreatePost",
        json!({"title": "tab\there", "content": "c"}),
        "data.title",
    );
    parse_err("UpdatePost", json!({"title": "x".repeat(201)}), "data.title");
    parse_err("UpdatePost", json!({"title": ""}), "data.title");
}

#[test]
fn content_is_1_to_20000_characters_of_prose() {
    let ok = format!("{}\n\tend", "x".repeat(19_995));
    assert_eq!(ok.chars().count(), 20_000);
    assert_eq!(
        parse_ok("CreatePost", json!({"title": "t", "content": ok})),
        create("t", &ok, &[])
    );
    let detail = parse_err(
        "CreatePost",
        json!({"title": "t", "content": "x".repeat(20_001)}),
        "data.content",
    );
    assert!(detail.contains("20000"), "{detail}");
    parse_err("CreatePost", json!({"title": "t", "content": ""}), "data.content");
    parse_err(
        "CreatePost",
        json!({"title": "t", "content": "bell\u{7}"}),
        "data.content",
    );
    parse_err("UpdatePost", json!({"content": "\n\n"}), "data.content");
}

#[test]
fn missing_wrong_and_unknown_fields_are_named() {
    parse_err("CreatePost", json!({"content": "c"}), "data");
    parse_err("CreatePost", json!({"title": "t"}), "data");
    parse_err("CreatePost", json!({"title": 1, "content": "c"}), "data.title");
    parse_err(
        "CreatePost",
        json!({"title": "t", "content": "c", "author": "me"}),
        "data.author",
    );
    parse_err("UpdatePost", json!({"title": "t", "colour": "red"}), "data.colour");
    parse_err("CreatePost", json!([]), "data");
    parse_err("UpdatePost", json!("t"), "data");
}

#[test]
fn an_update_must_give_at_least_one_field() {
    for data in [json!({}), Value::Null, json!({"title": null, "tags": null})] {
        let detail = parse_err("UpdatePost", data, "data");
        assert_eq!(detail, "data: at least one of title, content, tags");
    }
    assert_eq!(
        parse_ok("UpdatePost", json!({"tags": []})),
        update(None, None, Some(&[]))
    );
    assert_eq!(
        parse_ok("UpdatePost", json!({"content": "c", "tags": ["A"]})),
        update(None, Some("c"), Some(&["a"]))
    );
}

#[test]
fn the_command_types_are_create_and_update() {
    assert_eq!(COMMAND_TYPES, &["CreatePost", "UpdatePost"]);
    assert!(Post::parse_command("DeletePost", json!({})).is_none());
    assert!(Post::parse_command("StartDeployment", json!({})).is_none());
    // No step-up for post commands.
    assert!(!Post::needs_step_up(&create("t", "c", &[])));
    assert!(!Post::needs_step_up(&update(Some("t"), None, None)));
}

// ---------------------------------------------------------------------------
// decide: rules
// ---------------------------------------------------------------------------

#[test]
fn create_on_a_new_stream_emits_created() {
    given([])
        .when(create("Hello", "First post.", &["rust", "ops"]))
        .then(vec![hello()]);
}

#[test]
fn create_on_an_existing_post_is_rejected() {
    given([hello()])
        .when(create("Other", "Other.", &[]))
        .then_rejected(POST_EXISTS);
    // Even after updates, and even with the very same data.
    let history = given([hello()])
        .when(update(Some("Hi"), None, None))
        .then(vec![PostEvent::PostUpdated {
            title: change(s("Hello"), s("Hi")),
            content: None,
            tags: None,
        }]);
    given(history)
        .when(create("Hello", "First post.", &["rust", "ops"]))
        .then_rejected(POST_EXISTS);
}

#[test]
fn update_of_no_post_is_rejected() {
    for command in [
        update(Some("t"), None, None),
        update(None, Some("c"), None),
        update(None, None, Some(&[])),
    ] {
        given([]).when(command).then_rejected(POST_NOT_FOUND);
    }
}

#[test]
fn update_carries_old_and_new_of_only_what_changed() {
    given([hello()])
        .when(update(Some("Hello"), Some("Edited."), Some(&["rust", "ops"])))
        .then(vec![PostEvent::PostUpdated {
            title: None,
            content: change(s("First post."), s("Edited.")),
            tags: None,
        }]);
    given([hello()])
        .when(update(None, None, Some(&["rust", "ops", "infra"])))
        .then(vec![PostEvent::PostUpdated {
            title: None,
            content: None,
            tags: change(strings(&["rust", "ops"]), strings(&["rust", "ops", "infra"])),
        }]);
    given([hello()])
        .when(update(Some("New"), Some("New."), Some(&[])))
        .then(vec![PostEvent::PostUpdated {
            title: change(s("Hello"), s("New")),
            content: change(s("First post."), s("New.")),
            tags: change(strings(&["rust", "ops"]), vec![]),
        }]);
    // A new order of the same tags is a change (the post lists them in order).
    given([hello()])
        .when(update(None, None, Some(&["ops", "rust"])))
        .then(vec![PostEvent::PostUpdated {
            title: None,
            content: None,
            tags: change(strings(&["rust", "ops"]), strings(&["ops", "rust"])),
        }]);
}

#[test]
fn an_update_changing_nothing_is_rejected() {
    for command in [
        update(Some("Hello"), None, None),
        update(None, Some("First post."), None),
        update(None, None, Some(&["rust", "ops"])),
        update(Some("Hello"), Some("First post."), Some(&["rust", "ops"])),
    ] {
        given([hello()]).when(command).then_rejected(NOTHING_CHANGED);
    }
    // The wire normalises first: "RUST, ops" is what the post has.
    given([hello()])
        .when_wire("UpdatePost", json!({"tags": ["RUST", " ops", "rust"]}))
        .then_rejected(NOTHING_CHANGED);
}

#[test]
fn the_old_value_is_the_current_one_after_earlier_updates() {
    let history = given([hello()])
        .when(update(Some("Two"), None, None))
        .then(vec![PostEvent::PostUpdated {
            title: change(s("Hello"), s("Two")),
            content: None,
            tags: None,
        }]);
    let history = given(history)
        .when(update(Some("Three"), None, Some(&["infra"])))
        .then(vec![PostEvent::PostUpdated {
            title: change(s("Two"), s("Three")),
            content: None,
            tags: change(strings(&["rust", "ops"]), strings(&["infra"])),
        }]);
    given(history.clone())
        .when(update(Some("Three"), None, Some(&["infra"])))
        .then_rejected(NOTHING_CHANGED);
    assert_eq!(
        Post::replay(history).current(),
        Some(&PostState {
            title: s("Three"),
            content: s("First post."),
            tags: strings(&["infra"]),
        })
    );
}

// ---------------------------------------------------------------------------
// evolve / replay, and the events on the wire
// ---------------------------------------------------------------------------

#[test]
fn replay_folds_the_current_fields() {
    assert_eq!(Post::replay([]).current(), None);
    let history = [
        hello(),
        PostEvent::PostUpdated {
            title: None,
            content: change(s("First post."), s("Second.")),
            tags: None,
        },
        PostEvent::PostUpdated {
            title: None,
            content: None,
            tags: change(strings(&["rust", "ops"]), strings(&["ops"])),
        },
    ];
    let mut state = Post::default();
    for (i, e) in history.iter().enumerate() {
        state.evolve(e.clone());
        assert_eq!(state, Post::replay(history[..=i].to_vec()), "after event {i}");
    }
    assert_eq!(
        state.current(),
        Some(&PostState {
            title: s("Hello"),
            content: s("Second."),
            tags: strings(&["ops"]),
        })
    );
    // An update of no post, or a second create, changes nothing.
    let mut none = Post::default();
    none.evolve(history[1].clone());
    assert_eq!(none, Post::default());
    let mut again = state.clone();
    again.evolve(created("X", "Y", &[]));
    assert_eq!(again, state);
}

#[test]
fn events_are_stored_as_the_spec_says() {
    let new = to_new_event(&hello());
    assert_eq!(new.event_type, "PostCreated");
    assert_eq!(
        new.data,
        json!({"title": "Hello", "content": "First post.", "tags": ["rust", "ops"]})
    );
    let e = PostEvent::PostUpdated {
        title: change(s("a"), s("b")),
        content: None,
        tags: change(strings(&["x"]), strings(&["x", "y"])),
    };
    let new = to_new_event(&e);
    assert_eq!(new.event_type, "PostUpdated");
    assert_eq!(
        new.data,
        json!({"title": {"old": "a", "new": "b"}, "tags": {"old": ["x"], "new": ["x", "y"]}})
    );
    assert_eq!(from_stored::<PostEvent>(&new.event_type, new.data).ok(), Some(e));
    let empty = to_new_event(&created("t", "c", &[]));
    assert_eq!(empty.data, json!({"title": "t", "content": "c", "tags": []}));
}

#[test]
fn full_lifecycle_from_wire_commands() {
    let history = given([])
        .when_wire(
            "CreatePost",
            json!({"title": "Hello", "content": "First post.", "tags": ["Rust", "ops"]}),
        )
        .then(vec![hello()]);
    let history = given(history)
        .when_wire("UpdatePost", json!({"tags": ["ops"], "title": "Hello"}))
        .then(vec![PostEvent::PostUpdated {
            title: None,
            content: None,
            tags: change(strings(&["rust", "ops"]), strings(&["ops"])),
        }]);
    given(history)
        .when_wire("CreatePost", json!({"title": "Hello", "content": "again"}))
        .then_rejected(POST_EXISTS);
}
