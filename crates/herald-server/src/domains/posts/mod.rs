//! The posts domain (issue 10): create and update posts; the `feeds` read
//! model (each post, and a feed per tag); their routes.

pub mod aggregate;
pub mod live;
pub mod projection;
pub mod reads;
pub mod routes;
pub mod tags;
pub mod view;

use crate::state::Registry;

pub fn register(r: &mut Registry) {
    r.aggregate::<aggregate::Post>()
        .projection::<projection::Feeds>()
        .routes(routes::routes)
        .live(live::POST_LIVE)
        .live(live::FEEDS_LIVE)
        .live(live::FEED_LIVE);
}
