//! The task wing: the run contract ([`control`]) and every state change a
//! task goes through ([`lifecycle`]), shared by the server and `tag-server run`.

pub mod control;
pub mod lifecycle;
pub mod queue;
