//! Audiences: boolean expressions over tags ([`expr`]), evaluated over each
//! tag's members held as roaring bitmaps ([`bitmaps`]).
//!
//! These are the pure parts of the audiences work (issue 22): the language
//! and the set algebra, unit-tested on their own. The dense user index and
//! the bitmaps' persistence in the stores come next.

pub mod bitmaps;
pub mod expr;
