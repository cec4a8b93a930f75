//! `indexer audit [--repair]` against the rig: MongoDB (FerretDB), Kafka and OpenSearch, with a
//! real indexer applying the events. The index is damaged behind the indexer's back in each of the
//! four ways; the audit must report exactly those documents, `--repair` must fix them, and a
//! second audit must find nothing.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;
use common::{Fixture, converge, event_record};
use e2e::state::{self, Versions};
use e2e::{rig::rig, unique, wait};
use indexer::audit::Drift;
use indexer::audit_tool::{self, AuditReport, EXIT_DIVERGED, Finding};
use indexer::config::{AuditArgs, Cli, Command};
use indexer::indexed::Repair;
use mongodb::bson::DateTime;
use pipeline_contract::document::{StoredMessage, document_of};
use pipeline_contract::search::SearchDocument;
use serde_json::Value;
use uuid::Uuid;

/// A message document as the api-server writes it: live at `version`, or a tombstone.
fn message(version: i64, deleted: bool) -> StoredMessage {
    let now = DateTime::now();
    StoredMessage {
        id: Uuid::new_v4().to_string(),
        tenant_id: "tenant-a".into(),
        conversation_id: Uuid::new_v4().to_string(),
        sender_id: (!deleted).then(|| Uuid::new_v4().to_string()),
        content: (!deleted).then(|| format!("content v{version}")),
        metadata_json: (!deleted).then(|| r#"{"k":"v"}"#.to_owned()),
        timestamp: now,
        updated_at: now,
        version,
        deleted,
        deleted_at: deleted.then_some(now),
        fingerprint: None,
        correlation_id: "audit-test".into(),
    }
}

fn search_document(m: &StoredMessage) -> SearchDocument {
    SearchDocument::try_from(m.to_event().unwrap()).unwrap()
}

struct Scenario {
    fixture: Fixture,
    database: String,
    group: String,
    messages: Vec<StoredMessage>,
    http: reqwest::Client,
}

impl Scenario {
    /// Stores `messages` in a fresh database and puts their events on the fixture's topic.
    async fn new(messages: Vec<StoredMessage>) -> Self {
        // Deletes forget their version at once, so the damage below can put an older version
        // back, as an index restored from an old snapshot would hold.
        let fixture = Fixture::new(Some("0s")).await;
        let database = unique("audit").replace('-', "_");
        let client = mongodb::Client::with_uri_str(rig().mongodb_uri())
            .await
            .unwrap();
        client
            .database(&database)
            .collection("messages")
            .insert_many(messages.iter().map(|m| document_of(m).unwrap()))
            .await
            .unwrap();
        let records: Vec<_> = messages
            .iter()
            .map(|m| event_record(&m.to_event().unwrap()))
            .collect();
        fixture.produce(&records).await;
        Self {
            fixture,
            database,
            group: unique("audit-indexer"),
            messages,
            http: reqwest::Client::new(),
        }
    }

    fn expected(&self) -> Versions {
        self.messages
            .iter()
            .map(|m| (Uuid::parse_str(&m.id).unwrap(), (m.version(), m.deleted)))
            .collect()
    }

    fn args(&self, extra: &[&str]) -> AuditArgs {
        let mut argv = vec![
            "indexer",
            "audit",
            "--mongodb-uri",
            rig().mongodb_uri(),
            "--mongodb-database",
            &self.database,
            "--bootstrap-servers",
            rig().kafka(),
            "--topic",
            &self.fixture.topic,
            "--group",
            &self.group,
            "--search-url",
            rig().search_url(),
            "--alias",
            self.fixture.layout.alias(),
            // Small pages: the walk crosses many page boundaries on both sides.
            "--page-size",
            "4",
        ];
        argv.extend_from_slice(extra);
        let Command::Audit(args) = Cli::try_parse_from(argv).expect("audit arguments").command
        else {
            unreachable!("parsed `audit`")
        };
        args
    }

    async fn audit(&self, extra: &[&str]) -> (AuditReport, BTreeMap<String, Finding>) {
        let mut findings = BTreeMap::new();
        let report = audit_tool::audit(&self.args(extra), |f| {
            assert!(
                findings.insert(f.id.clone(), f.clone()).is_none(),
                "{} reported twice",
                f.id
            );
        })
        .await
        .expect("the audit runs");
        (report, findings)
    }

    /// A write to the concrete index, as if someone other than the indexer made it; its status.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&SearchDocument>,
    ) -> (reqwest::StatusCode, Value) {
        let url = format!(
            "{}/{}/{path}",
            rig().search_url(),
            self.fixture.layout.first_index()
        );
        let mut request = self.http.request(method, &url);
        if let Some(doc) = body {
            request = request.json(doc);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or_default())
    }

    async fn damage(&self, method: reqwest::Method, path: &str, body: Option<&SearchDocument>) {
        let (status, answer) = self.send(method, path, body).await;
        assert!(status.is_success(), "{path}: {status} {answer}");
    }

    /// Replaces the document of `m.id` with `doc` at `doc.version`, even an older version than
    /// the index holds: as an index restored from an old snapshot would hold it.
    async fn overwrite(&self, m: &StoredMessage, doc: &SearchDocument) {
        self.damage(reqwest::Method::DELETE, &format!("_doc/{}", m.id), None)
            .await;
        let path = format!(
            "_doc/{}?version={}&version_type=external",
            doc.id, doc.version
        );
        // The engine remembers the delete's version until it prunes it (gc_deletes 0s, on a
        // refresh once its clock has moved on); until then the older version is refused.
        wait::until(
            "the delete's version is pruned",
            Duration::from_secs(30),
            || async {
                self.send(reqwest::Method::POST, "_refresh", None).await;
                let (status, answer) = self.send(reqwest::Method::PUT, &path, Some(doc)).await;
                match status.as_u16() {
                    200 | 201 => Some(()),
                    409 => None,
                    _ => panic!("{path}: {status} {answer}"),
                }
            },
        )
        .await;
    }
}

#[tokio::test]
async fn the_audit_reports_each_kind_of_damage_exactly_and_repair_fixes_it() {
    let mut messages: Vec<StoredMessage> = (0..9).map(|_| message(1, false)).collect();
    messages.extend((0..3).map(|_| message(3, false)));
    messages.extend((0..3).map(|_| message(2, true)));
    let scenario = Scenario::new(messages).await;
    let (_metrics, stop, task) = scenario.fixture.start(&scenario.group);
    converge(
        &scenario.fixture,
        &scenario.expected(),
        "the indexer applies every event",
    )
    .await;

    let (report, findings) = scenario.audit(&[]).await;
    assert!(findings.is_empty(), "a caught-up pipeline: {findings:?}");
    assert_eq!((report.stored, report.indexed), (15, 15));
    assert_eq!((report.exit_code(), report.unsettled), (0, None));

    // The damage, one document of each kind.
    let missing = &scenario.messages[0];
    scenario
        .damage(
            reqwest::Method::DELETE,
            &format!("_doc/{}", missing.id),
            None,
        )
        .await;
    let stale = &scenario.messages[9];
    let mut older = search_document(stale);
    older.version = 2;
    scenario.overwrite(stale, &older).await;
    let resurrected = &scenario.messages[12];
    let mut alive = search_document(&message(1, false));
    (alive.id, alive.tenant_id) = (Uuid::parse_str(&resurrected.id).unwrap(), "tenant-a".into());
    scenario.overwrite(resurrected, &alive).await;
    let mut orphan = search_document(&message(1, false));
    orphan.id = Uuid::new_v4();
    let path = format!("_doc/{}?version=1&version_type=external", orphan.id);
    scenario
        .damage(reqwest::Method::PUT, &path, Some(&orphan))
        .await;
    let damaged = state::indexed(scenario.fixture.layout.alias())
        .await
        .unwrap();

    let want: BTreeMap<String, Drift> = [
        (missing.id.clone(), Drift::Missing),
        (stale.id.clone(), Drift::Stale),
        (resurrected.id.clone(), Drift::Resurrected),
        (orphan.id.to_string(), Drift::Orphan),
    ]
    .into();
    let classes = |findings: &BTreeMap<String, Finding>| -> BTreeMap<String, Drift> {
        findings
            .iter()
            .map(|(id, f)| (id.clone(), f.drift))
            .collect()
    };

    let (report, findings) = scenario.audit(&[]).await;
    assert_eq!(
        classes(&findings),
        want,
        "the report names exactly the damage"
    );
    assert!(findings.values().all(|f| f.repair.is_none()));
    assert_eq!(
        (report.stored, report.indexed, report.found_total()),
        (15, 15, 4),
        "{report:?}"
    );
    assert_eq!(report.exit_code(), EXIT_DIVERGED);
    assert_eq!(
        state::indexed(scenario.fixture.layout.alias())
            .await
            .unwrap(),
        damaged,
        "without --repair the index is left alone"
    );
    let f = &findings[&stale.id];
    assert_eq!(
        (
            f.stored.as_ref().unwrap().version,
            f.indexed.as_ref().unwrap().version
        ),
        (3, 2)
    );

    let (report, findings) = scenario.audit(&["--repair"]).await;
    assert_eq!(classes(&findings), want);
    assert!(
        findings.values().all(|f| f.repair == Some(Repair::Done)),
        "{findings:?}"
    );
    assert_eq!((report.remaining(), report.exit_code()), (0, 0));

    let (report, findings) = scenario.audit(&[]).await;
    assert!(findings.is_empty(), "after the repair: {findings:?}");
    assert_eq!(report.exit_code(), 0);
    assert_eq!(
        state::indexed(scenario.fixture.layout.alias())
            .await
            .unwrap(),
        scenario.expected(),
        "the index equals MongoDB again"
    );
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_change_the_indexer_has_not_applied_yet_is_waited_for_and_said_when_it_is_not() {
    // Nothing consumes the topic: the one event stays in flight for the whole audit.
    let scenario = Scenario::new(vec![message(1, false)]).await;
    let started = std::time::Instant::now();
    let (report, findings) = scenario.audit(&["--settle-timeout-secs", "3"]).await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the re-check waited for the indexer's group"
    );
    assert_eq!(report.unsettled, Some("the indexer's consumer group"));
    assert_eq!(
        findings.values().map(|f| f.drift).collect::<Vec<_>>(),
        [Drift::Missing]
    );

    // Once an indexer applies it, the same audit finds nothing and waits for nothing.
    let (_metrics, stop, task) = scenario.fixture.start(&scenario.group);
    converge(
        &scenario.fixture,
        &scenario.expected(),
        "the indexer catches up",
    )
    .await;
    let (report, findings) = scenario.audit(&["--settle-timeout-secs", "3"]).await;
    assert!(findings.is_empty(), "{findings:?}");
    assert_eq!(report.unsettled, None);
    stop.cancel();
    task.await.unwrap();
}
