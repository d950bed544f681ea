//! The deployments domain (API.md §4–§6): start, progress, succeed, fail,
//! cancel; the deployments read model; its routes and resource streams.

pub mod aggregate;
pub mod live;
pub mod projection;
pub mod routes;
pub mod view;

use crate::state::Registry;

pub fn register(r: &mut Registry) {
    r.aggregate::<aggregate::Deployment>()
        .projection::<projection::Deployments>()
        .routes(routes::routes)
        .live(live::LIST)
        .live(live::ONE);
}
