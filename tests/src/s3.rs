//! A real S3-compatible server for the backup tests: `s3s-fs` on a free loopback port, with one
//! bucket `backups` and a fixed access key.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_ports, skip_or_fail};

/// The server's access key id.
pub const ACCESS_KEY: &str = "kvtest-access";
/// The server's secret key.
pub const SECRET_KEY: &str = "kvtest-secret-key";

/// An `s3s-fs` server on a free port, killed on drop.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    _root: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `s3s-fs`: `S3S_FS` when set, else the copy `scripts/install-deps.sh` installs, else `PATH`.
fn s3s_fs_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("S3S_FS") {
        return Some(PathBuf::from(bin));
    }
    let tools = std::env::var_os("KVCLUSTER_TOOLS")
        .map_or_else(|| PathBuf::from("/var/tmp/kvcluster-tools"), PathBuf::from);
    let cached = tools.join("cargo/bin/s3s-fs");
    if cached.is_file() {
        return Some(cached);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("s3s-fs"))
        .find(|p| p.is_file())
}

/// Starts `s3s-fs` with a bucket `backups`, or skips (fails in CI) without it.
pub async fn start(test: &str) -> Option<S3Server> {
    let Some(bin) = s3s_fs_bin() else {
        skip_or_fail(
            test,
            "s3s-fs not found: run scripts/install-deps.sh (cargo install s3s-fs into \
             /var/tmp/kvcluster-tools/cargo) or set S3S_FS",
        );
        return None;
    };
    let root = tempfile::tempdir().expect("s3 root");
    std::fs::create_dir(root.path().join("backups")).expect("bucket");
    let port = free_ports(1)[0];
    let child = Command::new(&bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let server = S3Server {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        _root: root,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "s3s-fs did not listen within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(server)
}
