//! The subcommands of `kvctl` beyond get/put/delete: `up`, `ring`, `status`,
//! `cluster`, `backup`, `bench`, `check`, `list` and `watch`.

pub(crate) mod admin;
pub(crate) mod backup;
pub(crate) mod bench;
pub(crate) mod check;
pub(crate) mod cluster;
pub(crate) mod list;
pub(crate) mod up;
pub(crate) mod watch;
