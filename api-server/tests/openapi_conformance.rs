//! The api-server against its own `/openapi.json`, by schemathesis (property-based, every check
//! on): schema-valid requests must be accepted, invalid ones refused with a documented 4xx,
//! every response must match the document, and the stateful phase follows the document's links
//! from a create to the read, update and delete of the same message. Runs against the rig's
//! MongoDB-wire server, Kafka and OpenSearch with a valid API key; a fixed seed and a bounded
//! number of cases keep it reproducible and under two minutes.
//!
//! Its settings and hook are in `tests/schemathesis/` (each says why). Reproduce by hand: start
//! an api-server, then, in `api-server/tests/schemathesis`,
//! `CONFORMANCE_API_KEY=KEY SCHEMATHESIS_HOOKS=hooks PYTHONPATH=. $SCHEMATHESIS --config-file schemathesis.toml run
//! http://127.0.0.1:PORT/openapi.json --checks all --seed 20261202
//! --max-examples 25` (`SCHEMATHESIS` is in the rig's env file).

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Instant;

use common::{KEY_A, Server, Setup};
use e2e::rig::rig;
use e2e::unique;

/// Schemathesis's seed: the same cases on every run.
const SEED: &str = "20261202";
/// Cases per operation and phase; keeps the run under two minutes on the rig.
const MAX_EXAMPLES: &str = "25";

/// Requests per status, from the server's own `api_http_requests_total`, leaving out the
/// unauthenticated document itself.
async fn requests_by_status(server: &Server) -> BTreeMap<u16, u64> {
    let text = reqwest::get(format!("{}/metrics", server.metrics))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("api_http_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        if labels.contains(r#"route="/openapi.json""#) || labels.contains(r#"route="/metrics""#) {
            continue;
        }
        let status = labels
            .split(',')
            .find_map(|l| l.strip_prefix("status=\""))
            .and_then(|s| s.trim_end_matches('"').parse::<u16>().ok());
        if let (Some(status), Ok(n)) = (status, value.trim().parse::<f64>()) {
            *counts.entry(status).or_default() += n as u64;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_with_every_check_on() {
    let mut setup = Setup::new("conformance").await;
    setup.with_search_index("conformance-messages").await;
    let server = Server::start(&setup).await;

    let reports = std::env::temp_dir().join(unique("schemathesis"));
    std::fs::create_dir_all(&reports).unwrap();
    let started = Instant::now();
    let settings = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let mut command = rig().schemathesis();
    command
        .arg("--config-file")
        .arg(settings.join("schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/openapi.json", server.base))
        .args(["--checks", "all"])
        .args(["--seed", SEED, "--max-examples", MAX_EXAMPLES])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--workers", "2", "--request-timeout", "10"])
        .arg("--report-dir")
        .arg(&reports)
        .args(["--report", "junit"])
        // Its caches and example database go where it runs: not in the repository.
        .current_dir(&reports)
        .env("HYPOTHESIS_STORAGE_DIRECTORY", reports.join("hypothesis"))
        .env("NO_COLOR", "1")
        .env("CONFORMANCE_API_KEY", KEY_A)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", &settings)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("schemathesis runs");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");

    let counts = requests_by_status(&server).await;
    let total: u64 = counts.values().sum();
    let refused_at_auth = counts.get(&401).copied().unwrap_or(0);
    let reached = total - refused_at_auth;
    let share = reached as f64 / total.max(1) as f64;
    println!(
        "schemathesis: {total} requests in {:.0} s, {reached} reached a handler ({:.1} %), by status: {counts:?}",
        elapsed.as_secs_f64(),
        share * 100.0
    );
    assert!(
        output.status.success(),
        "schemathesis found problems (server log: {}; reports: {}):\n{stdout}\n{stderr}",
        server.log.display(),
        reports.display()
    );
    assert!(total > 500, "too few requests to mean anything: {total}");
    assert!(
        share >= 0.8,
        "only {:.1} % of the requests reached a handler",
        share * 100.0
    );
    assert!(
        !counts.keys().any(|s| *s >= 500),
        "a 5xx was answered: {counts:?}"
    );
}
