//! The chart's alert rules (`charts/kvcluster/files/alerts.yaml`) unit-tested with the real
//! `promtool test rules` (`tests/fixtures/alerts_test.yaml`): every alert has a test where it fires,
//! with its labels and annotations, and one where it stays silent; every alert names its runbook
//! section of `docs/monitoring.md`. Skipped with a loud message when `promtool` is missing, unless
//! `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use kvcluster_tests::helm::{cli_tool, output};
use kvcluster_tests::kube::repo_path;
use serde_json::Value;

const RULES: &str = "charts/kvcluster/files/alerts.yaml";
const UNIT_TESTS: &str = "tests/fixtures/alerts_test.yaml";

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo_path(path)).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every alerting rule of the chart.
fn alerts() -> Vec<Value> {
    let rules: Vec<Value> = yaml(RULES)["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap().clone())
        .filter(|rule| rule["alert"].is_string())
        .collect();
    assert!(rules.len() >= 9, "{rules:?}");
    rules
}

#[test]
fn promtool_unit_tests_of_the_alerts_pass() {
    let Some(promtool) = cli_tool(
        "alerts::promtool_test_rules",
        "PROMTOOL",
        "promtool",
        "apt-get install prometheus (scripts/install-deps.sh does)",
    ) else {
        return;
    };
    let out = output(
        Command::new(promtool)
            .args(["test", "rules"])
            .arg(repo_path(UNIT_TESTS)),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool test rules: {text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn every_alert_has_a_firing_and_a_silent_unit_test() {
    let cases: Vec<Value> = yaml(UNIT_TESTS)["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|test| test["alert_rule_test"].as_array().unwrap().clone())
        .collect();
    for alert in alerts() {
        let name = alert["alert"].as_str().unwrap();
        let expected: Vec<usize> = cases
            .iter()
            .filter(|case| case["alertname"] == name)
            .map(|case| case["exp_alerts"].as_array().map_or(0, Vec::len))
            .collect();
        assert!(
            expected.iter().any(|&n| n > 0),
            "{UNIT_TESTS} has no case where {name} fires"
        );
        assert!(
            expected.contains(&0),
            "{UNIT_TESTS} has no case where {name} stays silent"
        );
    }
}

#[test]
fn every_alert_names_its_runbook_section() {
    let docs = std::fs::read_to_string(repo_path("docs/monitoring.md")).unwrap();
    for alert in alerts() {
        let name = alert["alert"].as_str().unwrap();
        assert_eq!(
            alert["annotations"]["runbook"].as_str(),
            Some(format!("docs/monitoring.md#{}", name.to_lowercase()).as_str()),
            "{name}'s runbook annotation"
        );
        assert!(
            docs.lines().any(|line| line == format!("### {name}")),
            "docs/monitoring.md has no runbook section `### {name}`"
        );
    }
}
