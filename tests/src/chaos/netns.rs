//! Runs a test inside a network namespace of its own, so its iptables rules and loopback hosts touch
//! nothing else on the machine.
//!
//! [`run_isolated`] called in the test process creates namespace `kvchaos-<pid>`, brings its
//! loopback up, and runs this same test binary again inside it (`ip netns exec`) for that one test,
//! with [`NETNS_ENV`] set. In there `run_isolated` runs the test's body. The namespace is deleted,
//! and any process left in it killed, when the outer call returns or panics.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Set to the namespace's name in the re-executed test process.
pub const NETNS_ENV: &str = "KVCHAOS_NETNS";

/// How long one isolated test may run, beyond its faults, before it is killed and fails.
pub const ISOLATED_TIMEOUT: Duration = Duration::from_secs(600);

/// Isolated tests run one at a time: each runs five nodes and a load on a 2-core machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `body` in a fresh network namespace (see the module documentation). `test` must be the
/// test function's name, as `cargo test -- --exact` matches it. Without root, `ip` or `iptables`
/// the test is skipped loudly, or fails in CI.
pub fn run_isolated(test: &str, body: impl FnOnce()) {
    if let Ok(namespace) = std::env::var(NETNS_ENV) {
        // The firewall rules the body adds must never reach the host's: trust the variable only
        // once the kernel confirms this process is in that namespace.
        let identified = Command::new("ip")
            .args(["netns", "identify", &std::process::id().to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        assert_eq!(
            identified, namespace,
            "{NETNS_ENV}={namespace} is set, but this process is not in that network namespace"
        );
        eprintln!("{test}: running inside network namespace {namespace}");
        body();
        return;
    }
    // Held from the probe on: two tests probing at once would trip over each other.
    let _turn = one_at_a_time();
    if let Err(missing) = prerequisites() {
        crate::skip_or_fail(
            test,
            &format!("it needs a network namespace of its own and iptables: {missing}"),
        );
        return;
    }
    let namespace = Namespace::create();
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &namespace.name])
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(NETNS_ENV, &namespace.name)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the test inside the namespace");
    let stdout = child.stdout.take().expect("piped stdout");
    let echo = std::thread::spawn(move || {
        let mut ran_one = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            ran_one |= line.starts_with("test result: ok. 1 passed");
            eprintln!("  | {line}");
        }
        ran_one
    });
    let timeout = ISOLATED_TIMEOUT + super::faults_for();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the isolated test") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{test} did not finish within {timeout:?} in its namespace");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let ran_one = echo.join().unwrap_or(false);
    assert!(
        status.success(),
        "{test} failed inside namespace {} ({status}); its output is above",
        namespace.name
    );
    assert!(
        ran_one,
        "{test} ran no test inside namespace {}: is `{test}` the exact test name?",
        namespace.name
    );
}

/// Holds the machine for one load-heavy test: isolated tests, and any other test whose timing
/// must not share the 2 cores with one, take it.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why this machine cannot run isolated tests, if it cannot.
fn prerequisites() -> Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("root is required (ip netns add)".to_owned());
    }
    for tool in [["ip", "-V"], ["iptables", "-V"]] {
        let works = Command::new(tool[0])
            .arg(tool[1])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !works {
            return Err(format!(
                "`{}` is missing (Debian packages iproute2 and iptables; scripts/install-deps.sh installs them)",
                tool[0]
            ));
        }
    }
    // Root in a container may still lack the right to make namespaces: try.
    let probe = format!("kvchaos-probe-{}", std::process::id());
    let _ = ip(&["netns", "delete", &probe]);
    ip(&["netns", "add", &probe])
        .map_err(|e| format!("ip netns add is not permitted here: {e}"))?;
    let _ = ip(&["netns", "delete", &probe]);
    Ok(())
}

/// A network namespace with loopback up, deleted on drop.
struct Namespace {
    name: String,
}

impl Namespace {
    fn create() -> Self {
        let name = format!("kvchaos-{}", std::process::id());
        // A namespace left by a killed earlier run of this pid is stale: start clean.
        let _ = ip(&["netns", "delete", &name]);
        ip(&["netns", "add", &name]).unwrap_or_else(|e| panic!("ip netns add {name}: {e}"));
        let namespace = Self { name };
        ip(&["-n", &namespace.name, "link", "set", "lo", "up"])
            .unwrap_or_else(|e| panic!("bring up lo in {}: {e}", namespace.name));
        namespace
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            eprintln!(
                "WARNING: could not delete network namespace {}: {e}",
                self.name
            );
        }
    }
}

/// Runs `ip ARGS`; the error carries its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}
