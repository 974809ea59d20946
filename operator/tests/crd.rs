//! The generated CRD: checked in and current, and its schema accepting the example and refusing
//! structurally bad specs. (CEL rules are enforced by a real API server in the integration tests;
//! here they are only checked to be present.)

use kube::CustomResourceExt;
use kvoperator::crd::KVCluster;
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn generated_files_are_up_to_date() -> TestResult {
    let root = kvoperator::generate::workspace_root();
    for (path, content) in kvoperator::generate::files()? {
        let on_disk = std::fs::read_to_string(root.join(&path)).unwrap_or_default();
        assert!(
            on_disk == content,
            "{} is stale: run `cargo run -p kvoperator --bin crdgen`",
            path.display()
        );
    }
    Ok(())
}

/// The CRD's OpenAPI v3 schema as JSON Schema: `nullable: true` becomes a `null` type.
fn json_schema() -> Result<Value, Box<dyn std::error::Error>> {
    fn convert(v: &mut Value) {
        match v {
            Value::Object(map) => {
                if map.remove("nullable") == Some(Value::Bool(true))
                    && let Some(Value::String(t)) = map.get("type").cloned()
                {
                    map.insert("type".into(), json!([t, "null"]));
                    if let Some(Value::Array(e)) = map.get_mut("enum") {
                        e.push(Value::Null);
                    }
                }
                map.values_mut().for_each(convert);
            }
            Value::Array(items) => items.iter_mut().for_each(convert),
            _ => {}
        }
    }
    let crd = serde_json::to_value(KVCluster::crd())?;
    let mut schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    assert!(schema.is_object(), "no schema in the CRD");
    convert(&mut schema);
    Ok(schema)
}

fn example() -> Result<Value, Box<dyn std::error::Error>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kvcluster.yaml");
    let text = std::fs::read_to_string(path)?;
    Ok(serde_saphyr::from_str(&text)?)
}

fn errors(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator.iter_errors(doc).map(|e| e.to_string()).collect()
}

#[test]
fn example_is_valid_and_deserializes() -> TestResult {
    let validator = jsonschema::validator_for(&json_schema()?)?;
    let doc = example()?;
    assert_eq!(errors(&validator, &doc), Vec::<String>::new());
    let kvc: KVCluster = serde_json::from_value(doc)?;
    assert_eq!(kvc.spec.replicas, 5);
    assert_eq!(kvc.spec.storage.storage_class_name, None);
    Ok(())
}

#[test]
fn structurally_bad_specs_are_refused() -> TestResult {
    let validator = jsonschema::validator_for(&json_schema()?)?;
    let good = example()?;
    let bad: Vec<(&str, Value)> = vec![
        ("replicas", json!(0)),
        ("replicas", json!(257)),
        ("replicas", json!("five")),
        ("replicationFactor", json!(0)),
        ("replicationFactor", json!(16)),
        ("writeQuorum", json!(0)),
        ("readQuorum", json!(16)),
        ("partitions", json!(100)),
        ("partitions", json!(131072)),
        ("partitions", json!(0)),
        ("durability", json!("sometimes")),
        ("cacheSize", json!("lots")),
        ("cacheSize", json!("1Ti")),
        ("image", json!("")),
        ("imagePullPolicy", json!("Sometimes")),
        ("storage", json!({"storageClassName": "fast"})),
        ("auth", json!({"adminTokenSecretRef": {"key": "token"}})),
        (
            "tls",
            json!({"peer": {"issuerRef": {"name": "ca", "kind": "Vault"}}}),
        ),
        ("tls", json!({"client": {"secretName": ""}})),
    ];
    for (field, value) in bad {
        let mut doc = good.clone();
        doc["spec"][field] = value.clone();
        assert!(
            !validator.is_valid(&doc),
            "spec.{field} = {value} was accepted"
        );
    }
    for field in [
        "replicas",
        "replicationFactor",
        "writeQuorum",
        "readQuorum",
        "image",
        "storage",
    ] {
        let mut doc = good.clone();
        if let Some(spec) = doc["spec"].as_object_mut() {
            spec.remove(field);
        }
        assert!(
            !validator.is_valid(&doc),
            "spec without {field} was accepted"
        );
    }
    Ok(())
}

#[test]
fn every_power_of_two_partition_count_is_accepted() -> TestResult {
    let validator = jsonschema::validator_for(&json_schema()?)?;
    for bits in 0..=16 {
        let mut doc = example()?;
        doc["spec"]["partitions"] = json!(1u32 << bits);
        assert!(validator.is_valid(&doc), "partitions {}", 1u32 << bits);
    }
    Ok(())
}

#[test]
fn cross_field_and_immutability_rules_are_in_the_schema() -> TestResult {
    let schema = json_schema()?;
    let spec = &schema["properties"]["spec"];
    let rules: Vec<&str> = spec["x-kubernetes-validations"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["rule"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        rules,
        vec![
            "self.replicationFactor <= self.replicas",
            "self.writeQuorum <= self.replicationFactor",
            "self.readQuorum <= self.replicationFactor",
            kvoperator::crd::SHARED_S3_RULE,
        ]
    );
    assert_eq!(
        spec["properties"]["partitions"]["x-kubernetes-validations"][0]["rule"],
        "self == oldSelf"
    );
    // A Quantity is only int-or-string in the schema: CEL checks it is one, and positive.
    assert_eq!(
        spec["properties"]["storage"]["properties"]["size"]["x-kubernetes-validations"][0]["rule"],
        kvoperator::crd::STORAGE_SIZE_RULE
    );
    Ok(())
}

#[test]
fn crd_has_short_name_status_and_printer_columns() -> TestResult {
    let crd = serde_json::to_value(KVCluster::crd())?;
    assert_eq!(crd["metadata"]["name"], "kvclusters.kvcluster.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["kvc"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], json!({}));
    assert_eq!(
        version["subresources"]["scale"],
        json!({"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
               "labelSelectorPath": ".status.selector"})
    );
    let description = version["schema"]["openAPIV3Schema"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(
        description.starts_with("A kvcluster ring") && !description.contains("Auto-generated"),
        "{description}"
    );
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        columns,
        vec![
            "Replicas",
            "Ready",
            "N",
            "W",
            "R",
            "Consistency",
            "Phase",
            "Age"
        ]
    );
    Ok(())
}

/// `examples/invalid/*.yaml`: each names in its first line whether the schema or a CEL rule
/// refuses it. The schema ones must fail here; the CEL ones must pass the structural schema (so
/// that the API server test proves the CEL rule, not the schema, refuses them).
#[test]
fn invalid_examples_are_refused_by_what_they_say() -> TestResult {
    let validator = jsonschema::validator_for(&json_schema()?)?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/invalid");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        let doc: Value = serde_saphyr::from_str(&text)?;
        let first = text.lines().next().unwrap_or_default();
        if first.starts_with("# Refused by the schema") {
            assert!(!validator.is_valid(&doc), "{} was accepted", path.display());
        } else if first.starts_with("# Refused by CEL") {
            assert_eq!(
                errors(&validator, &doc),
                Vec::<String>::new(),
                "{}",
                path.display()
            );
        } else {
            panic!("{} does not say what refuses it", path.display());
        }
        seen += 1;
    }
    assert!(seen >= 6, "only {seen} invalid examples");
    Ok(())
}
