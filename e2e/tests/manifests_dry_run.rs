//! Every Kubernetes manifest the project ships is accepted by the rig's real API server: the
//! operator's chart (rendered by `helm template`, cluster-wide and single-namespace), the
//! examples, and what `e2e/kind/run.sh` applies. The CRD is applied for real (server-side,
//! idempotent) so custom resources are validated against its schema and CEL rules; every other
//! object goes through server-side dry-run (`kubectl apply --server-side --dry-run=server`), one
//! object at a time, so a failure names the file and the object. Namespaces the objects need are
//! created for real (unique names, deleted at the end) with the `restricted` Pod Security
//! Standard in warn mode: a Deployment that would run as root or keep capabilities is reported.
//!
//! The kind scripts cannot run here (no Docker); they are checked with `bash -n` and shellcheck.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use e2e::{rig::rig, unique};
use serde_json::{Value, json};

const MANAGER: &str = "e2e-manifests-dry-run";
const CRD_NAME: &str = "messagepipelines.messagepipeline.io";
const CHART: &str = "charts/message-pipeline-operator";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

fn display(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Runs `command`, feeding `stdin`; the whole output, whatever the exit status.
fn run(mut command: Command, stdin: Option<&[u8]>) -> Output {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input)
            .unwrap_or_else(|e| panic!("writing to {command:?}: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {command:?}: {e}"))
}

/// Runs `command` and panics with its stderr unless it succeeds; its stdout.
fn run_ok(command: Command, stdin: Option<&[u8]>, what: &str) -> String {
    let out = run(command, stdin);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn kubectl(args: &[&str]) -> Command {
    let mut command = rig().kubectl();
    command.args(args);
    command
}

/// The CRD, applied for real from the chart's copy (what `helm install` would create), once per
/// test binary, and established.
fn ensure_crd() {
    static APPLIED: OnceLock<()> = OnceLock::new();
    APPLIED.get_or_init(|| {
        let crd = repo_root().join(CHART).join("crds/messagepipeline.yaml");
        let crd = crd.to_str().expect("UTF-8 path");
        // Server-side apply is idempotent; other tests apply the same generated CRD under their
        // own field manager, hence --force-conflicts.
        run_ok(
            kubectl(&[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager",
                MANAGER,
                "-f",
                crd,
            ]),
            None,
            "applying the MessagePipeline CRD",
        );
        run_ok(
            kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{CRD_NAME}"),
            ]),
            None,
            "waiting for the MessagePipeline CRD to be established",
        );
    });
}

/// Namespaces created for real for one test, deleted when it ends (even by a panic).
struct Namespaces(Vec<String>);

impl Namespaces {
    fn new() -> Self {
        Self(Vec::new())
    }

    /// A fresh namespace where the `restricted` Pod Security Standard warns.
    fn create(&mut self, prefix: &str) -> String {
        let name = unique(prefix);
        let manifest = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {
                    "pod-security.kubernetes.io/warn": "restricted",
                    "pod-security.kubernetes.io/warn-version": "latest",
                },
            },
        });
        run_ok(
            kubectl(&["create", "-f", "-"]),
            Some(manifest.to_string().as_bytes()),
            &format!("creating namespace {name}"),
        );
        self.0.push(name.clone());
        name
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let mut args = vec!["delete", "namespace", "--wait=false", "--ignore-not-found"];
        args.extend(self.0.iter().map(String::as_str));
        // Best effort: a failed clean-up must not hide the test's own failure.
        let _ = run(kubectl(&args), None);
    }
}

/// The objects of a YAML stream (one or many documents), as JSON, parsed by kubectl itself
/// (client side, nothing sent to the server). With `namespace`, namespaced objects get it, and
/// kubectl refuses one that names another (a manifest meant for `kubectl -n`).
fn objects(origin: &str, yaml: &[u8], namespace: Option<&str>) -> Vec<Value> {
    let mut args = vec!["create", "--dry-run=client", "-o", "json", "-f", "-"];
    if let Some(ns) = namespace {
        args.extend(["--namespace", ns]);
    }
    let json = run_ok(kubectl(&args), Some(yaml), &format!("parsing {origin}"));
    let mut out = Vec::new();
    for value in serde_json::Deserializer::from_str(&json).into_iter::<Value>() {
        let value = value.unwrap_or_else(|e| panic!("{origin}: kubectl printed bad JSON: {e}"));
        if value["kind"] == "List" {
            out.extend(value["items"].as_array().cloned().unwrap_or_default());
        } else {
            out.push(value);
        }
    }
    assert!(!out.is_empty(), "{origin}: no Kubernetes object in it");
    out
}

/// The objects of a manifest applied with `kubectl -n namespace` (none may name its own).
fn objects_of_file(path: &Path, namespace: &str) -> Vec<Value> {
    let yaml = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    objects(&display(path), &yaml, Some(namespace))
}

/// `Kind name` of an object, for messages.
fn describe(object: &Value) -> String {
    format!(
        "{} {}",
        object["kind"].as_str().unwrap_or("<no kind>"),
        object["metadata"]["name"].as_str().unwrap_or("<no name>")
    )
}

/// Sends each object to the API server with server-side dry-run; every refusal or warning, as
/// `origin: Kind name: message`.
fn dry_run(origin: &str, objects: &[Value]) -> Vec<String> {
    let mut failures = Vec::new();
    let args = [
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager",
        MANAGER,
        "-f",
        "-",
    ];
    for object in objects {
        let out = run(kubectl(&args), Some(object.to_string().as_bytes()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            failures.push(format!(
                "{origin}: {}: refused: {}",
                describe(object),
                stderr.trim()
            ));
        } else if stderr.contains("Warning:") {
            failures.push(format!(
                "{origin}: {}: accepted with a warning: {}",
                describe(object),
                stderr.trim()
            ));
        } else if !stdout.contains("(server dry run)") {
            failures.push(format!(
                "{origin}: {}: kubectl did not report a server dry run: {}",
                describe(object),
                stdout.trim()
            ));
        }
    }
    failures
}

fn assert_no_failures(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} object(s) not accepted by the API server:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `helm template` of the chart with `sets` (`key=value`), in release namespace `namespace`.
fn render_chart(namespace: &str, sets: &[String]) -> Vec<u8> {
    let mut helm = rig().helm();
    helm.args(["template", "mpo"])
        .arg(repo_root().join(CHART))
        .args(["--namespace", namespace]);
    for set in sets {
        helm.args(["--set", set]);
    }
    run_ok(helm, None, &format!("helm template {CHART} {sets:?}")).into_bytes()
}

/// (kind, namespace or "") of every object, counted.
fn kinds(objects: &[Value]) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for o in objects {
        let key = (
            o["kind"].as_str().unwrap_or_default().to_owned(),
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

fn expected(entries: &[(&str, &str, usize)]) -> BTreeMap<(String, String), usize> {
    entries
        .iter()
        .map(|(k, ns, n)| (((*k).to_owned(), (*ns).to_owned()), *n))
        .collect()
}

/// The value of `name` in the env of the operator's Deployment, if set.
fn operator_env(objects: &[Value], name: &str) -> Option<String> {
    let deployments: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Deployment")
        .collect();
    assert_eq!(deployments.len(), 1, "one Deployment in the chart");
    let env = &deployments[0]["spec"]["template"]["spec"]["containers"][0]["env"];
    env.as_array()?
        .iter()
        .find(|v| v["name"] == name)
        .map(|v| v["value"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn chart_lints_renders_and_every_object_is_accepted() {
    ensure_crd();
    let chart = repo_root().join(CHART);
    let mut lint = rig().helm();
    lint.args(["lint", "--strict"]).arg(&chart);
    run_ok(lint, None, "helm lint --strict");

    let mut namespaces = Namespaces::new();
    let release_ns = namespaces.create("mp-chart");
    let watched_ns = namespaces.create("mp-watched");
    let mut failures = Vec::new();

    // Default values: every namespace watched, cluster-wide RBAC.
    let rendered = objects(
        "helm template (default values)",
        &render_chart(&release_ns, &[]),
        None,
    );
    assert_eq!(
        kinds(&rendered),
        expected(&[
            ("ClusterRole", "", 1),
            ("ClusterRoleBinding", "", 1),
            ("Deployment", &release_ns, 1),
            ("Service", &release_ns, 1),
            ("ServiceAccount", &release_ns, 1),
        ]),
        "objects of the chart with default values"
    );
    assert_eq!(
        operator_env(&rendered, "WATCH_NAMESPACE"),
        None,
        "WATCH_NAMESPACE must be unset (not empty) to watch every namespace"
    );
    assert_eq!(
        operator_env(&rendered, "OPERATOR_CONCURRENCY").as_deref(),
        Some("8"),
        "the operator's default concurrency"
    );
    failures.extend(dry_run("helm template (default values)", &rendered));

    // One namespace watched: Role + RoleBinding there, the leader-election Role in the release
    // namespace, and cluster-wide only `list` and `watch` of MessagePipelines (claims span
    // namespaces).
    let origin = format!("helm template (watchNamespace={watched_ns})");
    let rendered = objects(
        &origin,
        &render_chart(&release_ns, &[format!("watchNamespace={watched_ns}")]),
        None,
    );
    assert_eq!(
        kinds(&rendered),
        expected(&[
            ("ClusterRole", "", 1),
            ("ClusterRoleBinding", "", 1),
            ("Deployment", &release_ns, 1),
            ("Role", &release_ns, 1),
            ("Role", &watched_ns, 1),
            ("RoleBinding", &release_ns, 1),
            ("RoleBinding", &watched_ns, 1),
            ("Service", &release_ns, 1),
            ("ServiceAccount", &release_ns, 1),
        ]),
        "objects of the chart with watchNamespace set"
    );
    assert_eq!(
        operator_env(&rendered, "WATCH_NAMESPACE"),
        Some(watched_ns.clone()),
        "the operator's WATCH_NAMESPACE with watchNamespace set"
    );
    let concurrency = objects(
        "helm template (concurrency=16)",
        &render_chart(&release_ns, &["concurrency=16".to_owned()]),
        None,
    );
    assert_eq!(
        operator_env(&concurrency, "OPERATOR_CONCURRENCY").as_deref(),
        Some("16"),
        "the operator's OPERATOR_CONCURRENCY with concurrency set"
    );
    failures.extend(dry_run(&origin, &rendered));

    assert_no_failures(&failures);
}

#[test]
fn examples_are_accepted_and_minimal_and_full_say_what_they_claim() {
    ensure_crd();
    let mut namespaces = Namespaces::new();
    let ns = namespaces.create("mp-examples");
    let dir = repo_root().join("examples");
    let mut failures = Vec::new();
    let mut pipelines = BTreeMap::new();
    for path in yaml_files(&dir) {
        let objects = objects_of_file(&path, &ns);
        failures.extend(dry_run(&display(&path), &objects));
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for o in objects
            .into_iter()
            .filter(|o| o["kind"] == "MessagePipeline")
        {
            pipelines.insert(file.clone(), o);
        }
    }
    assert_no_failures(&failures);

    let schema = spec_schema();
    let minimal = pipelines
        .get("minimal.yaml")
        .expect("examples/minimal.yaml holds a MessagePipeline");
    let optional = optional_fields(&schema, &minimal["spec"], "spec");
    assert!(
        optional.is_empty(),
        "examples/minimal.yaml should set only required fields, but sets {optional:?}"
    );
    let full = pipelines
        .get("full.yaml")
        .expect("examples/full.yaml holds a MessagePipeline");
    let missing = missing_fields(&schema, &full["spec"], "spec");
    assert!(
        missing.is_empty(),
        "examples/full.yaml should set every field of the CRD's spec, but lacks {missing:?}"
    );
}

#[test]
fn kind_manifests_are_accepted() {
    ensure_crd();
    let mut namespaces = Namespaces::new();
    let ns = namespaces.create("mp-kind");
    let dir = repo_root().join("e2e/kind/manifests");
    let files = yaml_files(&dir);
    assert!(!files.is_empty(), "no manifest in {}", dir.display());
    let mut failures = Vec::new();
    for path in files {
        let objects = objects_of_file(&path, &ns);
        failures.extend(dry_run(&display(&path), &objects));
    }
    assert_no_failures(&failures);
}

#[test]
fn kind_scripts_parse_and_pass_shellcheck() {
    let dir = repo_root().join("e2e/kind");
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "sh"))
        .collect();
    scripts.sort();
    assert!(!scripts.is_empty(), "no script in {}", dir.display());
    let mut failures = Vec::new();
    for script in &scripts {
        let out = run(
            {
                let mut c = Command::new("bash");
                c.arg("-n").arg(script);
                c
            },
            None,
        );
        if !out.status.success() {
            failures.push(format!(
                "bash -n {}: {}",
                display(script),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let mut shellcheck = Command::new("shellcheck");
        shellcheck.arg("--external-sources").arg(script);
        let out = match shellcheck.output() {
            Ok(out) => out,
            Err(e) => {
                panic!("cannot run shellcheck ({e}): it is in devstack/packages: run `make deps`")
            }
        };
        if !out.status.success() {
            failures.push(format!(
                "shellcheck {}:\n{}",
                display(script),
                String::from_utf8_lossy(&out.stdout).trim()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

/// The spec's schema as the API server serves it (the CRD applied above).
fn spec_schema() -> Value {
    let crd: Value = serde_json::from_str(&run_ok(
        kubectl(&["get", "crd", CRD_NAME, "-o", "json"]),
        None,
        "reading the CRD",
    ))
    .expect("CRD JSON");
    let version = crd["spec"]["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["storage"] == true))
        .expect("a storage version");
    version["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
}

/// Fields the schema defines (through nested `properties`) that `value` does not set.
fn missing_fields(schema: &Value, value: &Value, path: &str) -> Vec<String> {
    let mut missing = Vec::new();
    let Some(properties) = schema["properties"].as_object() else {
        return missing;
    };
    for (name, sub) in properties {
        let here = format!("{path}.{name}");
        match value.get(name) {
            None | Some(Value::Null) => missing.push(here),
            Some(v) => missing.extend(missing_fields(sub, v, &here)),
        }
    }
    missing
}

/// Fields `value` sets that the schema does not require (or does not define).
fn optional_fields(schema: &Value, value: &Value, path: &str) -> Vec<String> {
    let mut optional = Vec::new();
    let Some(fields) = value.as_object() else {
        return optional;
    };
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, v) in fields {
        let here = format!("{path}.{name}");
        match schema["properties"].get(name) {
            Some(sub) if required.contains(&name.as_str()) => {
                optional.extend(optional_fields(sub, v, &here));
            }
            _ => optional.push(here),
        }
    }
    optional
}

/// The two walkers above decide what the examples test asserts: they must find what is there.
#[test]
fn schema_walkers_find_missing_and_optional_fields() {
    let schema = json!({
        "required": ["a"],
        "properties": {
            "a": {"required": ["x"], "properties": {"x": {}, "y": {}}},
            "b": {"properties": {"z": {}}},
            "m": {"additionalProperties": {"type": "string"}},
        },
    });
    assert_eq!(
        missing_fields(&schema, &json!({"a": {"x": 1}}), "spec"),
        ["spec.a.y", "spec.b", "spec.m"]
    );
    assert_eq!(
        missing_fields(
            &schema,
            &json!({"a": {"x": 1, "y": 2}, "b": {"z": 3}, "m": {"k": "v"}}),
            "spec"
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        optional_fields(&schema, &json!({"a": {"x": 1, "y": 2}, "b": {}}), "spec"),
        ["spec.a.y", "spec.b"]
    );
    assert_eq!(
        optional_fields(&schema, &json!({"a": {"x": 1}}), "spec"),
        Vec::<String>::new()
    );
    assert_eq!(
        optional_fields(&schema, &json!({"a": {"x": 1}, "unknown": 1}), "spec"),
        ["spec.unknown"]
    );
}
