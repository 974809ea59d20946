//! The Helm chart (`charts/kvcluster`) under its real tools: finds `helm`, `kubectl` and `promtool`,
//! renders the chart, reads the rendered manifests, and checks metric names in PromQL against the
//! ones the code registers.
//!
//! - [`cli_tool`] finds a tool: `$VAR`, else the kube tools cache of `scripts/kube/install.sh`, else
//!   `PATH`. When it is missing a test skips with a loud message, unless `CI=true`, where it fails.
//! - [`Helm::template`] renders the chart; [`documents`] splits the output into JSON values.
//! - [`metric_names`] lists the `kv_*`/`kvoperator_*` names a PromQL expression uses;
//!   [`registered_metrics`] the names the node and operator sources register; [`foreign_metrics`]
//!   the other metric names an expression uses, which must be among [`EXTERNAL_METRICS`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::kube::{DEFAULT_TOOLS_DIR, repo_path};

/// The chart, relative to the repository root.
pub const CHART: &str = "charts/kvcluster";

/// The values file that turns every optional part of the chart on.
pub const ALL_ON_VALUES: &str = "charts/kvcluster/ci/all-on-values.yaml";

/// Finds tool `name` for `test`: `$var` when set, else `name` in the kube tools cache
/// (`${KVCLUSTER_TOOLS:-/var/tmp/kvcluster-tools}/bin`), else on `PATH`. When missing: panics in CI,
/// else prints a SKIPPED banner saying `how` to get it and returns `None`.
pub fn cli_tool(test: &str, var: &str, name: &str, how: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{var}={} does not name a file",
            path.display()
        );
        return Some(path);
    }
    let cache = std::env::var_os("KVCLUSTER_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TOOLS_DIR))
        .join("bin")
        .join(name);
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    match (cache.is_file(), on_path) {
        (true, _) => Some(cache),
        (false, Some(path)) => Some(path),
        (false, None) => {
            crate::skip_or_fail(
                test,
                &format!(
                    "{name} not found ({var} unset, not in the tools cache nor on PATH): {how}"
                ),
            );
            None
        }
    }
}

/// Runs `cmd` to completion with no stdin.
pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Stdout of a successful `cmd`; panics with its output when it fails.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `helm` binary.
#[derive(Debug, Clone)]
pub struct Helm {
    bin: PathBuf,
}

impl Helm {
    /// Finds `helm` for `test` (see [`cli_tool`]).
    pub fn find(test: &str) -> Option<Self> {
        let bin = cli_tool(
            test,
            "HELM",
            "helm",
            "`eval \"$(scripts/kube/install.sh)\"` fetches it",
        )?;
        Some(Self { bin })
    }

    /// A `helm` command run from the repository root.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(repo_path(""));
        cmd
    }

    /// `helm template RELEASE charts/kvcluster --namespace NAMESPACE ARGS...`: the rendered
    /// manifests, or helm's error output when it refused.
    pub fn template(
        &self,
        release: &str,
        namespace: &str,
        args: &[&str],
    ) -> Result<String, String> {
        let out = output(
            self.command()
                .args(["template", release, CHART, "--namespace", namespace])
                .args(args),
        );
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// The documents of a multi-document YAML stream, as JSON values (empty documents skipped).
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{yaml}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// The one document of `kind` named `name`; panics when there is not exactly one.
pub fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{kind}/{name} rendered {} times",
        found.len()
    );
    found[0]
}

/// The kinds of `docs`, sorted, with repeats.
pub fn kinds(docs: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    kinds.sort();
    kinds
}

/// Whether `name` is a metric of ours: `kv_` (the nodes) or `kvoperator_` (the operator).
fn ours(name: &str) -> bool {
    name.starts_with("kv_") || name.starts_with("kvoperator_")
}

/// The `kv_*` and `kvoperator_*` identifiers in `text` (a PromQL expression, or source code).
pub fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| ours(word))
        .map(str::to_string)
        .collect()
}

/// Every metric name registered in `node/src` and `operator/src/metrics.rs`: the quoted
/// `"kv_..."` and `"kvoperator_..."` string literals.
pub fn registered_metrics() -> BTreeSet<String> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|x| x == "rs") {
                files.push(path);
            }
        }
    }
    let mut files = vec![repo_path("operator/src/metrics.rs")];
    walk(&repo_path("node/src"), &mut files);
    let mut names = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        for literal in text.split('"').skip(1).step_by(2) {
            if ours(literal) && metric_names(literal).len() == 1 {
                names.insert(literal.to_string());
            }
        }
    }
    names
}

/// The names `expr` uses that no code registers (a histogram's `_bucket`, `_sum` and `_count`
/// series count as its name).
pub fn unknown_metrics(expr: &str, registered: &BTreeSet<String>) -> Vec<String> {
    metric_names(expr)
        .into_iter()
        .filter(|name| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            !registered.contains(name) && !registered.contains(base)
        })
        .collect()
}

/// The metrics of others the chart's alerts and dashboard may use: Prometheus' `up`, and the
/// kubelet's volume statistics, which kube-prometheus-stack scrapes (labelled by
/// `persistentvolumeclaim`).
pub const EXTERNAL_METRICS: &[&str] = &[
    "up",
    "kubelet_volume_stats_available_bytes",
    "kubelet_volume_stats_capacity_bytes",
];

/// The metric names PromQL `expr` uses that are not ours: the identifiers outside strings, label
/// matchers, range selectors and grouping clauses that are neither functions nor keywords.
pub fn foreign_metrics(expr: &str) -> BTreeSet<String> {
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Binary operators, modifiers, and aggregations (their grouping may come before the `(`).
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let skip_to = |from: usize, end: char| {
        (from + 1..chars.len())
            .find(|&j| chars[j] == end)
            .map_or(chars.len(), |j| j + 1)
    };
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i = skip_to(i, c);
        } else if c == '{' {
            i = skip_to(i, '}');
        } else if c == '[' {
            i = skip_to(i, ']');
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = (i..chars.len()).find(|&j| !chars[j].is_whitespace());
            let call = next.is_some_and(|j| chars[j] == '(');
            if call && GROUPING.contains(&word.as_str()) {
                i = skip_to(next.unwrap_or(i), ')');
            } else if !call && !KEYWORDS.contains(&word.as_str()) && !ours(&word) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}
