//! What `--nats`, `--nats-credential` and `--broker-prefix` configure (API.md
//! §12), for `ServerConfig`. A leaf: the consumers are in `brokers`.

use std::collections::BTreeMap;

/// The name `/readyz` and the logs give the NATS command consumer.
pub const NATS_CONSUMER: &str = "NATS command consumer";

/// The event relay to NATS: its checkpoint's name (`readmodels/nats_relay.db`,
/// the schema `rm_nats_relay`) and metrics label.
pub const RELAY: &str = "nats_relay";

/// The name `/readyz` and the logs give the Redis command consumer.
pub const REDIS_CONSUMER: &str = "Redis command consumer";

/// How long an unacknowledged message waits for its consumer by default
/// (`--broker-ack-wait-seconds`).
pub const DEFAULT_ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The default prefix of every subject, stream and key (`--broker-prefix`).
pub const DEFAULT_PREFIX: &str = "herald";

/// Credential names, as a message's subject names them, and the API token
/// each stands for (`--nats-credential NAME=TOKEN`). Debug shows the names only.
#[derive(Clone, Default)]
pub struct Credentials(BTreeMap<String, String>);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Credentials {
    /// Parses `NAME=TOKEN` pairs; a name is what a subject's last token can be.
    pub fn parse<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<Credentials, String> {
        let mut map = BTreeMap::new();
        for pair in pairs {
            let Some((name, token)) = pair.split_once('=') else {
                return Err("a credential is NAME=TOKEN (the token as `herald token create` printed it)".into());
            };
            let name = name.trim();
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "credential name {name:?}: 1 to 64 letters, digits, '-' or '_' (it is a subject's last token)"
                ));
            }
            if token.trim().is_empty() {
                return Err(format!("credential {name}: the token is empty"));
            }
            if map.insert(name.to_owned(), token.trim().to_owned()).is_some() {
                return Err(format!("credential {name} is given twice"));
            }
        }
        Ok(Credentials(map))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn token(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// `--nats` and what goes with it.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// `nats://host:4222` (credentials in the URL are the server's, not herald's).
    pub url: String,
    /// `--broker-prefix`: the first token of every subject and stream name.
    pub prefix: String,
    pub credentials: Credentials,
    /// How long a message taken by an instance that does not acknowledge it
    /// (it crashed) waits before JetStream delivers it again.
    pub ack_wait: std::time::Duration,
}

impl NatsConfig {
    /// `<prefix>.commands.>`.
    pub fn commands_subjects(&self) -> String {
        format!("{}.commands.>", self.prefix)
    }

    /// Where credential `name`'s refused messages go.
    pub fn dead_subject(&self, name: &str) -> String {
        format!("{}.dead.{name}", self.prefix)
    }

    /// A JetStream stream's name for `what` (names cannot hold `.`).
    pub fn stream_name(&self, what: &str) -> String {
        let prefix: String = self
            .prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("{prefix}_{what}")
    }
}

/// `--redis` and what goes with it.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://host:6379[/db]` (a password in the URL is the server's).
    pub url: String,
    /// `--broker-prefix`: the start of every key.
    pub prefix: String,
    pub credentials: Credentials,
    /// How long an entry stays pending with a consumer that does not
    /// acknowledge it (it crashed) before another instance claims it.
    pub claim_idle: std::time::Duration,
}

impl RedisConfig {
    /// The stream agents add commands to: `<prefix>:commands`.
    pub fn commands_key(&self) -> String {
        format!("{}:commands", self.prefix)
    }

    /// The stream refused commands go to: `<prefix>:dead`.
    pub fn dead_key(&self) -> String {
        format!("{}:dead", self.prefix)
    }
}

/// Checks a `--broker-prefix`: subject tokens, no wildcards or spaces.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .split('.')
            .all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--broker-prefix {prefix:?}: dot-separated tokens of letters, digits, '-' or '_' (at most 64 characters)"
        ))
    }
}
