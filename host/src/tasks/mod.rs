//! Tasks: how one is created, checked, finished and shown ([`lifecycle`]),
//! shared by the server and `tag-server run`.

pub mod lifecycle;
