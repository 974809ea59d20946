//! A real Kubernetes control plane on loopback for the operator's integration tests: `etcd` and
//! `kube-apiserver` (built by `scripts/kube/install.sh`) started as child processes, with the
//! certificate layout of `scripts/kube/smoke.sh`.
//!
//! - [`kube_tools`] finds the binaries (`KUBE_APISERVER` / `ETCD`, else the install cache). When they
//!   are missing a test skips with a loud message, unless `CI=true`, where it fails.
//! - [`ControlPlane::start`] makes the certificates with the `openssl` CLI, starts etcd and the API
//!   server on free 127.0.0.1 ports, waits for `/readyz` and namespace `default`, writes an admin
//!   kubeconfig (client certificate in `system:masters`) and returns with an admin [`kube::Client`].
//! - [`ControlPlane::install_kvcluster_crd`] creates `crds/kvcluster.yaml` and waits until it is
//!   Established and served.
//! - [`ControlPlane::service_account_kubeconfig`] mints a ServiceAccount token through the
//!   TokenRequest API and writes a kubeconfig for it (bearer token), so a process can run under that
//!   ServiceAccount's RBAC.
//! - [`OperatorProcess`] runs the `kvoperator` binary with such a kubeconfig.
//!
//! Nothing else runs: no controller manager (no StatefulSet controller, no garbage collector, no
//! token controller) and no kubelet. Tests play those parts themselves.
//!
//! Every wait is bounded; every process is stopped (SIGTERM, then SIGKILL) when its guard drops and
//! the temporary directory is removed.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};

pub use crate::operator_process::{OperatorProcess, kvoperator_bin};

/// Where `scripts/kube/install.sh` caches its binaries unless `KVCLUSTER_TOOLS` says otherwise.
pub const DEFAULT_TOOLS_DIR: &str = "/var/tmp/kvcluster-tools";

/// How long etcd may take to report healthy.
pub const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long kube-apiserver may take to answer `/readyz` with 200 (3–4 s is usual).
pub const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a stopped process may take to exit after SIGTERM before it gets SIGKILL.
pub const PROCESS_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a CRD may take to become Established and served.
pub const CRD_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The control-plane binaries.
#[derive(Debug, Clone)]
pub struct KubeTools {
    /// `kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `etcd`.
    pub etcd: PathBuf,
}

/// Finds `kube-apiserver` and `etcd`: `$KUBE_APISERVER` / `$ETCD`, else
/// `${KVCLUSTER_TOOLS:-/var/tmp/kvcluster-tools}/bin/`. When one is missing: panics if [`crate::in_ci`],
/// else prints a loud SKIPPED message naming `test` and returns `None`.
pub fn kube_tools(test: &str) -> Option<KubeTools> {
    let cache = std::env::var_os("KVCLUSTER_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TOOLS_DIR))
        .join("bin");
    let find = |var: &str, name: &str| -> Result<PathBuf, String> {
        match std::env::var_os(var) {
            Some(path) if !path.is_empty() => {
                let path = PathBuf::from(path);
                if path.is_file() {
                    Ok(path)
                } else {
                    Err(format!("{var}={} is not a file", path.display()))
                }
            }
            _ => {
                let path = cache.join(name);
                if path.is_file() {
                    Ok(path)
                } else {
                    Err(format!(
                        "{var} is not set and {} is missing",
                        path.display()
                    ))
                }
            }
        }
    };
    match (
        find("KUBE_APISERVER", "kube-apiserver"),
        find("ETCD", "etcd"),
    ) {
        (Ok(kube_apiserver), Ok(etcd)) => Some(KubeTools {
            kube_apiserver,
            etcd,
        }),
        (a, e) => {
            let why: Vec<String> = [a.err(), e.err()].into_iter().flatten().collect();
            let message = format!(
                "{test} needs a real kube-apiserver and etcd: {}. Build them with \
                 `eval \"$(scripts/kube/install.sh)\"` (several minutes once, cached after).",
                why.join("; ")
            );
            crate::skip_or_fail(test, &message);
            None
        }
    }
}

/// Runs a command to completion and panics with its output when it fails.
fn run(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is openssl installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes the certificates of `scripts/kube/smoke.sh` in `pki` (all ECDSA P-256):
/// `ca.crt/.key` (serving CA), `apiserver.crt/.key` (127.0.0.1 and localhost), `client-ca.crt/.key`,
/// `admin.crt/.key` (CN=admin, O=system:masters) and `sa.key`/`sa.pub` (token signing).
pub fn make_certs(pki: &Path) {
    std::fs::create_dir_all(pki).expect("create pki dir");
    let p = |name: &str| pki.join(name);
    let new_key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, subject) in [
        ("ca", "/CN=kvcluster-test-ca"),
        ("client-ca", "/CN=kvcluster-test-client-ca"),
    ] {
        run(Command::new("openssl")
            .args(["req", "-x509"])
            .args(new_key)
            .arg("-keyout")
            .arg(p(&format!("{name}.key")))
            .arg("-out")
            .arg(p(&format!("{name}.crt")))
            .args(["-days", "3650", "-subj", subject]));
    }
    std::fs::write(
        p("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n",
    )
    .expect("write server.ext");
    std::fs::write(
        p("client.ext"),
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n\
         basicConstraints=critical,CA:FALSE\n",
    )
    .expect("write client.ext");
    for (name, subject, ca, ext) in [
        ("apiserver", "/CN=kube-apiserver", "ca", "server.ext"),
        (
            "admin",
            "/O=system:masters/CN=admin",
            "client-ca",
            "client.ext",
        ),
    ] {
        run(Command::new("openssl")
            .arg("req")
            .args(new_key)
            .arg("-keyout")
            .arg(p(&format!("{name}.key")))
            .arg("-out")
            .arg(p(&format!("{name}.csr")))
            .args(["-subj", subject]));
        run(Command::new("openssl")
            .args(["x509", "-req", "-in"])
            .arg(p(&format!("{name}.csr")))
            .arg("-CA")
            .arg(p(&format!("{ca}.crt")))
            .arg("-CAkey")
            .arg(p(&format!("{ca}.key")))
            .args(["-CAcreateserial", "-days", "3650", "-extfile"])
            .arg(p(ext))
            .arg("-out")
            .arg(p(&format!("{name}.crt"))));
    }
    // PKCS#8 private key, as --service-account-signing-key-file wants, and its public key.
    run(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(p("sa.key")));
    run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(p("sa.key"))
        .arg("-out")
        .arg(p("sa.pub")));
}

/// Sends SIGTERM to `child`, waits up to [`PROCESS_STOP_TIMEOUT`], then SIGKILLs it; always reaps.
pub fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + PROCESS_STOP_TIMEOUT;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "process {} ignored SIGTERM for {PROCESS_STOP_TIMEOUT:?}: SIGKILL",
        child.id()
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `lines` lines of a log file (empty when unreadable).
pub fn file_tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn b64_file(path: &Path) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

/// A kube client from a kubeconfig file (its current context).
pub async fn client_from_kubeconfig(path: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("read kubeconfig {}: {e}", path.display()));
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("load kubeconfig {}: {e}", path.display()));
    // Bounded calls: a hung API server fails the test instead of stalling it.
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(30));
    config.write_timeout = Some(Duration::from_secs(30));
    Client::try_from(config).expect("build kube client")
}

/// etcd and kube-apiserver running on loopback, with an admin client.
pub struct ControlPlane {
    client: Client,
    server: String,
    kubeconfig: PathBuf,
    apiserver: Option<Child>,
    etcd: Option<Child>,
    startup: Duration,
    // Declared last: removed after the processes are stopped.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.server)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver for `test`; `None` (after a loud message) when the binaries
    /// are missing outside CI. See the module documentation.
    pub async fn start(test: &str) -> Option<Self> {
        let tools = kube_tools(test)?;
        Some(Self::start_with(&tools).await)
    }

    /// Starts etcd and kube-apiserver from `tools`.
    pub async fn start_with(tools: &KubeTools) -> Self {
        let t0 = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("kvcluster-kube-")
            .tempdir()
            .expect("create control plane temp dir");
        let pki = dir.path().join("pki");
        make_certs(&pki);
        let ports = crate::free_ports(3);
        let (etcd_port, peer_port, api_port) = (ports[0], ports[1], ports[2]);

        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = dir.path().join("admin.kubeconfig");
        let kubeconfig_text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    \
             certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    \
             client-key-data: {}\ncontexts:\n- name: test\n  context: {{cluster: test, user: admin, namespace: default}}\n\
             current-context: test\n",
            b64_file(&pki.join("ca.crt")),
            b64_file(&pki.join("admin.crt")),
            b64_file(&pki.join("admin.key")),
        );
        write_private(&kubeconfig, &kubeconfig_text);
        // Building a client connects nowhere yet.
        let client = client_from_kubeconfig(&kubeconfig).await;
        let mut plane = Self {
            client,
            server,
            kubeconfig,
            apiserver: None,
            etcd: None,
            startup: Duration::ZERO,
            dir,
        };

        let etcd_log = File::create(plane.dir.path().join("etcd.log")).expect("create etcd.log");
        let etcd = Command::new(&tools.etcd)
            .arg("--name=default")
            .arg(format!(
                "--data-dir={}",
                plane.dir.path().join("etcd").display()
            ))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=default=http://127.0.0.1:{peer_port}"
            ))
            .arg("--initial-cluster-state=new")
            .arg("--log-level=warn")
            .arg("--unsafe-no-fsync")
            .stdin(Stdio::null())
            .stdout(etcd_log.try_clone().expect("clone log"))
            .stderr(etcd_log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", tools.etcd.display()));
        plane.etcd = Some(etcd);
        plane.wait_etcd(etcd_port).await;

        let p = |name: &str| pki.join(name).display().to_string();
        let api_log =
            File::create(plane.dir.path().join("apiserver.log")).expect("create apiserver.log");
        let apiserver = Command::new(&tools.kube_apiserver)
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={api_port}"))
            .arg(format!("--tls-cert-file={}", p("apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", p("apiserver.key")))
            .arg(format!("--client-ca-file={}", p("client-ca.crt")))
            .arg(format!("--service-account-issuer={}", plane.server))
            .arg(format!("--service-account-key-file={}", p("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                p("sa.key")
            ))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--authorization-mode=RBAC")
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--allow-privileged=true")
            .stdin(Stdio::null())
            .stdout(api_log.try_clone().expect("clone log"))
            .stderr(api_log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", tools.kube_apiserver.display()));
        plane.apiserver = Some(apiserver);

        plane.wait_ready().await;
        plane.startup = t0.elapsed();
        eprintln!(
            "control plane: kube-apiserver ready on {} after {:?} (etcd on 127.0.0.1:{etcd_port}; files in {})",
            plane.server,
            plane.startup,
            plane.dir.path().display()
        );
        plane
    }

    async fn wait_etcd(&mut self, port: u16) {
        let http = crate::http_client_builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let url = format!("http://127.0.0.1:{port}/health");
        let deadline = Instant::now() + ETCD_READY_TIMEOUT;
        loop {
            if let Ok(resp) = http.get(&url).send().await
                && let Ok(text) = resp.text().await
                && text.contains("\"health\":\"true\"")
            {
                return;
            }
            self.assert_alive("etcd");
            assert!(
                Instant::now() < deadline,
                "etcd not healthy within {ETCD_READY_TIMEOUT:?}\n--- etcd.log ---\n{}",
                self.log_tail("etcd", 30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + APISERVER_READY_TIMEOUT;
        loop {
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("request");
            let ready =
                tokio::time::timeout(Duration::from_secs(5), self.client.request_text(request))
                    .await;
            if let Ok(Ok(text)) = &ready
                && text.trim() == "ok"
            {
                break;
            }
            self.assert_alive("apiserver");
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready within {APISERVER_READY_TIMEOUT:?} (last: {ready:?})\n\
                 --- apiserver.log ---\n{}",
                self.log_tail("apiserver", 40)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The API server creates namespace `default` shortly after it is ready.
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(namespaces.get_opt("default").await, Ok(Some(_))) {
            assert!(
                Instant::now() < deadline,
                "namespace default did not appear"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn assert_alive(&mut self, which: &str) {
        let child = match which {
            "etcd" => self.etcd.as_mut(),
            _ => self.apiserver.as_mut(),
        };
        if let Some(child) = child
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "{which} exited with {status}\n--- {which}.log ---\n{}",
                self.log_tail(which, 40)
            );
        }
    }

    /// The last `lines` lines of `etcd.log` or `apiserver.log`.
    pub fn log_tail(&self, which: &str, lines: usize) -> String {
        file_tail(&self.dir.path().join(format!("{which}.log")), lines)
    }

    /// An admin client (`system:masters`).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The admin kubeconfig file.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The control plane's temporary directory (certificates, logs, kubeconfigs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How long etcd and the API server took to start, certificates included.
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// Creates namespace `name` with `labels`.
    pub async fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
    }

    /// Creates namespace `name` enforcing the Pod Security "restricted" profile, so every Pod made
    /// there from an operator's template is checked against it.
    pub async fn create_restricted_namespace(&self, name: &str) {
        self.create_namespace(
            name,
            &[
                ("pod-security.kubernetes.io/enforce", "restricted"),
                ("pod-security.kubernetes.io/enforce-version", "latest"),
            ],
        )
        .await;
    }

    /// Creates the CRD in `path` (YAML) and waits until it is Established and its resource is
    /// listed through the API.
    pub async fn install_crd(&self, path: &Path) -> CustomResourceDefinition {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let name = crd.metadata.name.clone().expect("CRD name");
        api.create(&PostParams::default(), &crd)
            .await
            .unwrap_or_else(|e| panic!("create CRD {name}: {e}"));
        let deadline = Instant::now() + CRD_READY_TIMEOUT;
        loop {
            let current = api.get(&name).await.expect("get CRD");
            let established = current
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "CRD {name} not Established within {CRD_READY_TIMEOUT:?}: {:?}",
                current.status
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Established means served soon; wait until a list of the storage version answers.
        let version = crd
            .spec
            .versions
            .iter()
            .find(|v| v.storage)
            .expect("a storage version");
        let gvk = GroupVersionKind::gvk(&crd.spec.group, &version.name, &crd.spec.names.kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, &crd.spec.names.plural);
        let dynamic: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
        loop {
            match dynamic.list(&ListParams::default().limit(1)).await {
                Ok(_) => break,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "CRD {name} Established but not served within {CRD_READY_TIMEOUT:?}: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        api.get(&name).await.expect("get CRD")
    }

    /// Installs `crds/kvcluster.yaml` of this repository.
    pub async fn install_kvcluster_crd(&self) -> CustomResourceDefinition {
        self.install_crd(&repo_path("crds/kvcluster.yaml")).await
    }

    /// Creates ServiceAccount `namespace/name` unless it exists.
    pub async fn create_service_account(&self, namespace: &str, name: &str) {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        if api.get_opt(name).await.expect("get SA").is_some() {
            return;
        }
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        api.create(&PostParams::default(), &sa)
            .await
            .unwrap_or_else(|e| panic!("create ServiceAccount {namespace}/{name}: {e}"));
    }

    /// Binds ClusterRole `role` to ServiceAccount `namespace/name` cluster-wide (a
    /// ClusterRoleBinding named like the role).
    pub async fn bind_cluster_role(&self, role: &str, namespace: &str, name: &str) {
        let binding = ClusterRoleBinding {
            metadata: ObjectMeta {
                name: Some(role.to_string()),
                ..ObjectMeta::default()
            },
            role_ref: cluster_role_ref(role),
            subjects: Some(vec![service_account(namespace, name)]),
        };
        Api::<ClusterRoleBinding>::all(self.client.clone())
            .create(&PostParams::default(), &binding)
            .await
            .unwrap_or_else(|e| panic!("bind ClusterRole {role} to {namespace}/{name}: {e}"));
    }

    /// Binds ClusterRole `role` to ServiceAccount `sa_namespace/name` within `namespace` only (a
    /// RoleBinding there, named like the role).
    pub async fn bind_cluster_role_in(
        &self,
        role: &str,
        namespace: &str,
        sa_namespace: &str,
        name: &str,
    ) {
        let binding = RoleBinding {
            metadata: ObjectMeta {
                name: Some(role.to_string()),
                namespace: Some(namespace.to_string()),
                ..ObjectMeta::default()
            },
            role_ref: cluster_role_ref(role),
            subjects: Some(vec![service_account(sa_namespace, name)]),
        };
        Api::<RoleBinding>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &binding)
            .await
            .unwrap_or_else(|e| panic!("bind ClusterRole {role} in {namespace}: {e}"));
    }

    /// A one-hour token of ServiceAccount `namespace/name` from the TokenRequest API (created
    /// first when missing).
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        self.create_service_account(namespace, name).await;
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let answer = api
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"));
        answer
            .status
            .and_then(|s| s.token)
            .expect("TokenRequest answered without a token")
    }

    /// Writes a kubeconfig that authenticates as ServiceAccount `namespace/name` with a fresh
    /// token (default namespace `namespace`), and returns its path.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self.service_account_token(namespace, name).await;
        let path = self
            .dir
            .path()
            .join(format!("sa-{namespace}-{name}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {}\nusers:\n- name: {name}\n  user:\n    token: {token}\n\
             contexts:\n- name: sa\n  context: {{cluster: test, user: {name}, namespace: {namespace}}}\n\
             current-context: sa\n",
            self.server,
            b64_file(&self.dir.path().join("pki/ca.crt")),
        );
        write_private(&path, &text);
        path
    }

    /// The operator's Secret access as shipped: creates `reader` (the secret-reader ClusterRole of
    /// `operator/src/rbac.rs`) and binds it to ServiceAccount `default/kvoperator` in `namespace` only.
    pub async fn grant_secret_reader(&self, reader: &ClusterRole, namespace: &str) {
        Api::<ClusterRole>::all(self.client.clone())
            .create(&PostParams::default(), reader)
            .await
            .unwrap_or_else(|e| panic!("create the secret reader ClusterRole: {e}"));
        let name = reader.metadata.name.clone().unwrap_or_default();
        self.bind_cluster_role_in(&name, namespace, "default", "kvoperator")
            .await;
    }

    /// The operator's identity as shipped: creates `role` (the ClusterRole of `operator/rbac.yaml`),
    /// binds it to ServiceAccount `default/kvoperator` and returns that account's kubeconfig.
    pub async fn operator_identity(&self, role: &ClusterRole) -> PathBuf {
        Api::<ClusterRole>::all(self.client.clone())
            .create(&PostParams::default(), role)
            .await
            .unwrap_or_else(|e| panic!("create the operator's ClusterRole: {e}"));
        self.create_service_account("default", "kvoperator").await;
        let name = role.metadata.name.clone().unwrap_or_default();
        self.bind_cluster_role(&name, "default", "kvoperator").await;
        self.service_account_kubeconfig("default", "kvoperator")
            .await
    }
}

/// Polls `f` every 200 ms until it returns `Some`, at most `timeout`; panics naming `what` then.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for which in ["apiserver", "etcd"] {
                eprintln!(
                    "--- last lines of {which}.log ---\n{}",
                    self.log_tail(which, 20)
                );
            }
        }
        // The API server first, then etcd under it.
        if let Some(mut child) = self.apiserver.take() {
            terminate(&mut child);
        }
        if let Some(mut child) = self.etcd.take() {
            terminate(&mut child);
        }
    }
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A reference to ClusterRole `role`.
fn cluster_role_ref(role: &str) -> RoleRef {
    RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "ClusterRole".into(),
        name: role.to_string(),
    }
}

/// ServiceAccount `namespace/name` as a binding's subject.
fn service_account(namespace: &str, name: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: name.to_string(),
        namespace: Some(namespace.to_string()),
        ..Subject::default()
    }
}

/// `path` relative to the repository root: the `tests/` package's parent, as `cargo test` says at
/// run time (`CARGO_MANIFEST_DIR`), else as it was at build time (a test binary may have been built
/// from another checkout sharing the target directory).
pub fn repo_path(path: &str) -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.join("..").join(path)
}
