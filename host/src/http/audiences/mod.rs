//! Audiences: boolean expressions over tags counted and listed from the
//! tags' bitmaps ([`query`]), saved audiences with their size after each
//! run ([`saved`]), a tag's change feed per run and the tags' overlap
//! ([`feed`]); members exported as CSV, JSON lines or parquet
//! ([`stream`]).

mod feed;
mod query;
mod saved;
pub(crate) mod stream;

use super::AppState;
use utoipa_axum::router::OpenApiRouter;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(query::router())
        .merge(saved::router())
        .merge(feed::router())
}
