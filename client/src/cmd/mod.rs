//! The subcommands of `kvctl`: `get`, `put` and `delete` (kv), `up`, `ring`, `status`, `cluster`,
//! `backup`, `bench`, `check`, `list` and `watch`.

pub(crate) mod admin;
pub(crate) mod backup;
pub(crate) mod bench;
pub(crate) mod check;
pub(crate) mod cluster;
pub(crate) mod kv;
pub(crate) mod list;
pub(crate) mod up;
pub(crate) mod watch;
