//! Audiences: boolean expressions over tags ([`expr`]), evaluated over each
//! tag's members held as roaring bitmaps ([`bitmaps`]).
//!
//! These are the pure parts, unit-tested on their own: the stores keep the
//! dense user index and the bitmaps ([`crate::store::sql::audience`]), and
//! [`crate::members`] serves them.

pub mod bitmaps;
pub mod expr;
