//! The container image, run the way a cluster runs it: built by `scripts/image.sh` (the daemonless twin
//! of the root Dockerfile) from the binaries under test, unpacked with umoci and run by runc with a
//! read-only root and a writable volume for the data. kvnode must start as the image's non-root user,
//! keep its data on the volume, serve a put/get, stop cleanly on SIGTERM; kvctl and kvoperator must
//! run inside the image, and a write to the root filesystem must fail.
//!
//! The container shares the host's network namespace (loopback, free ports) and creates no mounts
//! outside its own mount namespace. It is killed and deleted when the test ends, passes or panics,
//! and a run killed outright leaves its container in [`RUNC_ROOT`], where the next run deletes it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Read as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kvcluster_tests::{
    KvClient, LISTENING_PREFIX, STOP_TIMEOUT, free_ports, kvnode_bin, skip_or_fail,
};

const TEST: &str = "image_runs_kvnode_as_non_root_on_a_read_only_root";

/// The image's user and group (the Dockerfile's `USER`).
const NON_ROOT: u32 = 65532;

/// runc's state directory for this test's containers (on tmpfs: gone at reboot).
const RUNC_ROOT: &str = "/run/kvcluster-image-test";

/// Building the image: the first run makes the Debian base (a few seconds to a minute, downloads).
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// Any other command: umoci unpack, runc exec of a short-lived binary, runc state.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long kvnode may take to fail on the read-only root.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn image_runs_kvnode_as_non_root_on_a_read_only_root() {
    if let Err(missing) = prerequisites() {
        skip_or_fail(TEST, &missing);
        return;
    }
    delete_leftovers();
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();

    let bin_dir = kvnode_bin().parent().expect("bin dir").to_path_buf();
    let image_dir = dir.path().join("image");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root");
    let built = run_bounded(
        Command::new(repo.join("scripts/image.sh"))
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--out")
            .arg(&image_dir)
            .args(["--name", "kvcluster/kvcluster:test"]),
        BUILD_TIMEOUT,
    );
    assert_success("scripts/image.sh", &built);
    eprintln!(
        "{}\nimage built in {:?}",
        text(&built.stdout),
        started.elapsed()
    );

    // The tarball for `ctr images import` / `docker load` names the image.
    let manifest = run_bounded(
        Command::new("tar")
            .arg("--extract")
            .arg("--to-stdout")
            .arg("--file")
            .arg(image_dir.join("kvcluster.tar"))
            .arg("manifest.json"),
        COMMAND_TIMEOUT,
    );
    assert_success("reading the docker archive's manifest.json", &manifest);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.stdout).expect("json");
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!(["docker.io/kvcluster/kvcluster:test"]),
        "the docker archive's image name"
    );

    let bundle = dir.path().join("bundle");
    let unpacked = run_bounded(
        Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:test", image_dir.join("oci").display()))
            .arg(&bundle),
        COMMAND_TIMEOUT,
    );
    assert_success("umoci unpack", &unpacked);

    // The volume: a host directory the image's user owns, bound at the image's data directory.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    std::os::unix::fs::chown(&data, Some(NON_ROOT), Some(NON_ROOT)).expect("chown data dir");
    let ports = free_ports(2);
    let endpoint = format!("http://127.0.0.1:{}", ports[0]);
    configure_bundle(&bundle, &data, &ports);

    let mut container = Container::run(&bundle, &dir.path().join("container.log"));
    container.wait_listening();
    eprintln!("kvnode serving from the image at {:?}", started.elapsed());

    // The user comes from the image: the bundle's config is umoci's rendering of it, untouched.
    let status = std::fs::read_to_string(format!("/proc/{}/status", container.pid()))
        .expect("read the container process's status");
    for field in ["Uid:", "Gid:"] {
        let ids: Vec<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .expect("id line")
            .split_whitespace()
            .map(|id| id.parse().expect("numeric id"))
            .collect();
        assert!(
            ids.iter().all(|&id| id == NON_ROOT),
            "kvnode in the image runs with {field} {ids:?}, not the non-root {NON_ROOT}"
        );
    }

    let client = KvClient::new(&endpoint);
    client.put_ok(b"from-host", b"hello image", None).await;
    assert_eq!(client.get_one(b"from-host").await.0, b"hello image");

    // The data went to the volume (KVNODE_DATA_DIR from the image), written by the non-root user.
    let db = data.join("db");
    assert!(
        db.is_dir(),
        "no RocksDB directory on the volume at {}",
        db.display()
    );
    assert_eq!(std::fs::metadata(&db).expect("db metadata").uid(), NON_ROOT);

    // kvctl in the image reads and writes through the node; kvoperator starts.
    let got = container.exec(&["kvctl", "--endpoint", &endpoint, "get", "from-host"]);
    assert_success("kvctl get in the image", &got);
    assert_eq!(text(&got.stdout), "hello image");
    let put = container.exec(&["kvctl", "--endpoint", &endpoint, "put", "from-image", "hi"]);
    assert_success("kvctl put in the image", &put);
    assert_eq!(client.get_one(b"from-image").await.0, b"hi");
    let help = container.exec(&["kvoperator", "--help"]);
    assert_success("kvoperator --help in the image", &help);
    assert!(text(&help.stdout).contains("Usage: kvoperator"));

    // The root is read-only: even the user's own home cannot take a new data directory (on a
    // writable root this kvnode would start and serve, and outlive PROBE_TIMEOUT).
    let probe = container
        .try_exec(
            &[
                "kvnode",
                "--data-dir",
                "/home/nonroot/probe",
                "--listen",
                "127.0.0.1:0",
                "--peer-listen",
                "127.0.0.1:0",
            ],
            PROBE_TIMEOUT,
        )
        .expect("kvnode started with its data under /home/nonroot: the root is writable");
    assert!(
        !probe.status.success() && text(&probe.stderr).contains("Read-only file system"),
        "a write under / succeeded or failed for another reason ({}): {}",
        probe.status,
        text(&probe.stderr)
    );

    // SIGTERM to the container's init (kvnode as PID 1) stops it cleanly.
    let exit = container.terminate();
    assert!(
        exit.success(),
        "kvnode in the image exited with {exit} on SIGTERM; its log:\n{}",
        container.log()
    );
    let state = Path::new(RUNC_ROOT).join(&container.id);
    drop(container);
    assert!(
        !state.exists(),
        "runc still keeps the container's state in {} after the test deleted it",
        state.display()
    );
    eprintln!("{TEST}: all checks passed in {:?}", started.elapsed());
}

/// What this machine lacks to run the test, if anything.
fn prerequisites() -> Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if text(&uid.stdout) != "0" {
        return Err("root is required (mmdebstrap, umoci unpack and runc)".to_owned());
    }
    for tool in ["mmdebstrap", "umoci", "skopeo", "runc"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(format!("`{tool}` is missing (scripts/install-deps.sh)"));
        }
    }
    Ok(())
}

/// Makes umoci's runtime config run kvnode on the host's loopback with a read-only root and `data`
/// bound at the image's volume. Everything else (user, entrypoint, environment) stays the image's.
fn configure_bundle(bundle: &Path, data: &Path, ports: &[u16]) {
    let path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read config.json")).expect("json");
    config["root"]["readonly"] = true.into();
    let process = &mut config["process"];
    process["terminal"] = false.into();
    assert_eq!(
        process["args"],
        serde_json::json!(["kvnode"]),
        "the image's entrypoint"
    );
    for arg in [
        "--listen".to_owned(),
        format!("127.0.0.1:{}", ports[0]),
        "--peer-listen".to_owned(),
        format!("127.0.0.1:{}", ports[1]),
    ] {
        process["args"]
            .as_array_mut()
            .expect("args")
            .push(arg.into());
    }
    // No limits of its own: the container inherits the runtime's, as under containerd's CRI
    // (umoci's open-file limit of 1024 would leave kvnode a single connection).
    process.as_object_mut().expect("process").remove("rlimits");
    let namespaces = config["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces");
    namespaces.retain(|ns| ns["type"] != "network");
    let mounts = config["mounts"].as_array_mut().expect("mounts");
    let volume = mounts
        .iter_mut()
        .find(|m| m["destination"] == "/var/lib/kvnode")
        .expect("umoci renders the image's volume /var/lib/kvnode as a mount");
    *volume = serde_json::json!({
        "destination": "/var/lib/kvnode",
        "type": "bind",
        "source": data,
        "options": ["rbind", "rw", "nosuid", "nodev"],
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).expect("write");
}

/// A container started by `runc run` in the foreground; killed and deleted on drop.
struct Container {
    id: String,
    child: Child,
    stdout: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Container {
    fn run(bundle: &Path, log: &Path) -> Self {
        // Named after this process, so a later run can tell whether the container was left behind.
        let id = format!("kvimage-{}", std::process::id());
        let stderr = std::fs::File::create(log).expect("create container log");
        let mut child = Command::new("runc")
            .args(["--root", RUNC_ROOT, "run", "--bundle"])
            .arg(bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn runc run");
        let out = child.stdout.take().expect("piped stdout");
        let (send, stdout) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        Self {
            id,
            child,
            stdout,
            log: log.to_path_buf(),
        }
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(line) = self
            .stdout
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.starts_with(LISTENING_PREFIX) {
                return;
            }
        }
        panic!(
            "kvnode in the image did not print `{LISTENING_PREFIX}…` within 30 s; its log:\n{}",
            self.log()
        );
    }

    /// The host PID of the container's init process.
    fn pid(&self) -> u32 {
        let state = runc(&["state", &self.id]);
        let state: serde_json::Value = serde_json::from_slice(&state.stdout).expect("runc state");
        u32::try_from(state["pid"].as_u64().expect("pid")).expect("pid fits u32")
    }

    /// Runs `args` inside the container as the image's user.
    fn exec(&self, args: &[&str]) -> Output {
        self.try_exec(args, COMMAND_TIMEOUT).unwrap_or_else(|| {
            panic!("{args:?} in the image did not finish within {COMMAND_TIMEOUT:?}")
        })
    }

    /// [`Self::exec`], or `None` when it has not finished within `timeout` (it is left running).
    fn try_exec(&self, args: &[&str], timeout: Duration) -> Option<Output> {
        let mut command = Command::new("runc");
        command
            .args(["--root", RUNC_ROOT, "exec", &self.id])
            .args(args);
        try_run_bounded(&mut command, timeout)
    }

    /// Sends SIGTERM to the container's init and waits for `runc run` to return its exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        assert_success("runc kill TERM", &runc(&["kill", &self.id, "TERM"]));
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for runc run") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "kvnode in the image did not stop within {STOP_TIMEOUT:?} of SIGTERM; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = runc(&["kill", &self.id, "KILL"]);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = runc(&["delete", "--force", &self.id]);
        // runc's state directory, once it holds no container (of a concurrent run either).
        let _ = std::fs::remove_dir(RUNC_ROOT);
    }
}

/// Deletes containers that runs killed outright left behind: those whose test process is gone.
fn delete_leftovers() {
    for id in text(&runc(&["list", "--quiet"]).stdout).lines() {
        let owner = id.strip_prefix("kvimage-").unwrap_or_default();
        if Path::new("/proc").join(owner).exists() {
            continue;
        }
        eprintln!("{TEST}: deleting container {id} left by an earlier run");
        let _ = runc(&["delete", "--force", id]);
    }
}

/// `runc --root RUNC_ROOT ARGS`, bounded in time.
fn runc(args: &[&str]) -> Output {
    run_bounded(
        Command::new("runc").args(["--root", RUNC_ROOT]).args(args),
        COMMAND_TIMEOUT,
    )
}

/// Runs `command` to completion, killing it and failing after `timeout`.
fn run_bounded(command: &mut Command, timeout: Duration) -> Output {
    try_run_bounded(command, timeout)
        .unwrap_or_else(|| panic!("{command:?} did not finish within {timeout:?}"))
}

/// Runs `command` to completion, or kills it after `timeout` and returns `None`.
fn try_run_bounded(command: &mut Command, timeout: Duration) -> Option<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let mut pipes = [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ]
    .map(|mut pipe| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    })
    .into_iter();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = pipes.next().expect("stdout").join().unwrap_or_default();
    let stderr = pipes.next().expect("stderr").join().unwrap_or_default();
    Some(Output {
        status,
        stdout,
        stderr,
    })
}

fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}
