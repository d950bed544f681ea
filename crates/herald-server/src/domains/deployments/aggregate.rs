//! The Deployment aggregate (API.md §4): start, progress, succeed, fail, cancel.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use herald_core::aggregate::{Aggregate, InvalidCommand, Rejection, Text, check_text, parse_data};

const MAX_NAME: usize = 200;
const MAX_TEXT: usize = 2000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploymentCommand {
    Start {
        service: String,
        version: Option<String>,
        environment: Option<String>,
    },
    ReportProgress {
        percent: u8,
        message: Option<String>,
    },
    Succeed,
    Fail {
        reason: String,
    },
    Cancel {
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum DeploymentEvent {
    DeploymentStarted {
        service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        environment: Option<String>,
    },
    DeploymentProgressed {
        percent: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    DeploymentSucceeded {},
    DeploymentFailed {
        reason: String,
    },
    DeploymentCancelled {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    InProgress,
    Succeeded,
    Failed,
    Cancelled,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::InProgress => "in_progress",
            DeploymentStatus::Succeeded => "succeeded",
            DeploymentStatus::Failed => "failed",
            DeploymentStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::InProgress, Self::Succeeded, Self::Failed, Self::Cancelled]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

/// The write-side state: only what the rules need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deployment {
    status: Option<DeploymentStatus>,
}

impl Deployment {
    pub fn status(&self) -> Option<DeploymentStatus> {
        self.status
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartData {
    service: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    environment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgressData {
    percent: u8,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoData {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailData {
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelData {
    #[serde(default)]
    reason: Option<String>,
}

fn check_opt(field: &str, value: &Option<String>, max: usize, kind: Text) -> Result<(), InvalidCommand> {
    value.as_deref().map_or(Ok(()), |v| check_text(field, v, max, kind))
}

fn parse(command_type: &str, data: Value) -> Result<DeploymentCommand, InvalidCommand> {
    Ok(match command_type {
        "StartDeployment" => {
            let d: StartData = parse_data(command_type, data)?;
            check_text("service", &d.service, MAX_NAME, Text::Name)?;
            check_opt("version", &d.version, MAX_NAME, Text::Name)?;
            check_opt("environment", &d.environment, MAX_NAME, Text::Name)?;
            DeploymentCommand::Start {
                service: d.service,
                version: d.version,
                environment: d.environment,
            }
        }
        "ReportDeploymentProgress" => {
            let d: ProgressData = parse_data(command_type, data)?;
            if d.percent > 100 {
                return Err(InvalidCommand(format!(
                    "data.percent: must be from 0 to 100 (got {})",
                    d.percent
                )));
            }
            check_opt("message", &d.message, MAX_TEXT, Text::Prose)?;
            DeploymentCommand::ReportProgress {
                percent: d.percent,
                message: d.message,
            }
        }
        "SucceedDeployment" => {
            let _: NoData = parse_data(command_type, data)?;
            DeploymentCommand::Succeed
        }
        "FailDeployment" => {
            let d: FailData = parse_data(command_type, data)?;
            check_text("reason", &d.reason, MAX_TEXT, Text::Prose)?;
            DeploymentCommand::Fail { reason: d.reason }
        }
        "CancelDeployment" => {
            let d: CancelData = parse_data(command_type, data)?;
            check_opt("reason", &d.reason, MAX_TEXT, Text::Prose)?;
            DeploymentCommand::Cancel { reason: d.reason }
        }
        _ => unreachable!("checked by parse_command"),
    })
}

pub const COMMAND_TYPES: &[&str] = &[
    "StartDeployment",
    "ReportDeploymentProgress",
    "SucceedDeployment",
    "FailDeployment",
    "CancelDeployment",
];

impl Aggregate for Deployment {
    const CATEGORY: &'static str = "deployment";
    const COMMAND_TYPES: &'static [&'static str] = COMMAND_TYPES;
    type Command = DeploymentCommand;
    type Event = DeploymentEvent;

    fn parse_command(command_type: &str, data: Value) -> Option<Result<Self::Command, InvalidCommand>> {
        COMMAND_TYPES.contains(&command_type).then(|| parse(command_type, data))
    }

    /// Starting a deployment changes a running system: a person must have
    /// confirmed with their passkey lately. Reporting on one that runs does not.
    fn needs_step_up(command: &DeploymentCommand) -> bool {
        matches!(command, DeploymentCommand::Start { .. })
    }

    fn decide(&self, command: &DeploymentCommand) -> Result<Vec<DeploymentEvent>, Rejection> {
        use DeploymentCommand as C;
        use DeploymentEvent as E;
        if let C::Start {
            service,
            version,
            environment,
        } = command
        {
            return match self.status {
                None => Ok(vec![E::DeploymentStarted {
                    service: service.clone(),
                    version: version.clone(),
                    environment: environment.clone(),
                }]),
                Some(status) => Err(Rejection {
                    rule: "Deployment already started",
                    detail: format!("a deployment with this id exists (status {})", status.as_str()),
                }),
            };
        }
        match self.status {
            None => {
                return Err(Rejection {
                    rule: "Deployment not started",
                    detail: "no deployment with this id has been started".into(),
                });
            }
            Some(DeploymentStatus::InProgress) => {}
            Some(status) => {
                return Err(Rejection {
                    rule: "Deployment not in progress",
                    detail: format!("the deployment has already finished (status {})", status.as_str()),
                });
            }
        }
        Ok(vec![match command {
            C::Start { .. } => unreachable!("handled above"),
            C::ReportProgress { percent, message } => E::DeploymentProgressed {
                percent: *percent,
                message: message.clone(),
            },
            C::Succeed => E::DeploymentSucceeded {},
            C::Fail { reason } => E::DeploymentFailed { reason: reason.clone() },
            C::Cancel { reason } => E::DeploymentCancelled { reason: reason.clone() },
        }])
    }

    fn evolve(&mut self, event: DeploymentEvent) {
        self.status = Some(match event {
            DeploymentEvent::DeploymentStarted { .. } | DeploymentEvent::DeploymentProgressed { .. } => {
                DeploymentStatus::InProgress
            }
            DeploymentEvent::DeploymentSucceeded {} => DeploymentStatus::Succeeded,
            DeploymentEvent::DeploymentFailed { .. } => DeploymentStatus::Failed,
            DeploymentEvent::DeploymentCancelled { .. } => DeploymentStatus::Cancelled,
        });
    }
}
