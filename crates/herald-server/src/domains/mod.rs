//! herald's domains, one folder each. Adding a domain is one line here.

pub mod deployments;
pub mod posts;

use crate::domain::Registry;

/// Every domain's `register`.
pub const ALL: &[fn(&mut Registry)] = &[deployments::register, posts::register];
