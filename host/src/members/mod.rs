//! Audiences served: the live snapshot of the tags' bitmaps ([`live`]),
//! expressions resolved against the loaded tags ([`resolve`]), and members
//! written out as CSV, JSON lines or parquet ([`export`]), for the API and
//! for `tag-server export`.

pub mod export;
pub mod live;
pub mod resolve;
