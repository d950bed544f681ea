//! herald's domains, one folder each. Adding a domain is one line here.

pub mod deployments;
pub mod posts;

use crate::state::Registry;

/// Every domain's `register`.
pub const ALL: &[fn(&mut Registry)] = &[deployments::register, posts::register];

/// Every domain of [`ALL`], registered.
pub fn registry() -> Registry {
    let mut registry = Registry::default();
    for register in ALL {
        register(&mut registry);
    }
    registry
}
