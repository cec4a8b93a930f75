//! The rig's search engine takes the contract's index layout and honours what the indexer relies
//! on: external versions that refuse older writes, `flat_object` metadata queries, term filters.

use e2e::{rig::rig, unique};
use pipeline_contract::install::{Change, InstallError, SearchEndpoint, install};
use pipeline_contract::search::{Distribution, IndexLayout, IndexSettings, SearchDocument, field};
use pipeline_contract::{MessageEvent, MessagePayload, Timestamp};
use serde_json::{Map, Value, json};
use uuid::Uuid;

struct Index {
    http: reqwest::Client,
    base: String,
    layout: IndexLayout,
}

impl Index {
    async fn install() -> Self {
        let base = rig().search_url().to_owned();
        let layout = IndexLayout::new(unique("smoke-messages")).unwrap();
        let http = reqwest::Client::new();
        let settings = IndexSettings {
            replicas: 0,
            ..IndexSettings::default()
        };
        let report = install(&http, &SearchEndpoint::new(&base), &layout, &settings)
            .await
            .expect("install");
        assert_eq!(
            report.engine.distribution,
            Distribution::OpenSearch,
            "the rig runs OpenSearch"
        );
        assert_eq!(
            (report.template, report.first_index, report.alias),
            (Change::Created, Change::Created, Change::Created)
        );
        assert_eq!(report.alias_indices, [layout.first_index()]);
        Self { http, base, layout }
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}/{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("search engine request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A `_bulk` of whole documents with external versions; returns each item's status.
    async fn bulk(&self, docs: &[SearchDocument]) -> Vec<(u16, Value)> {
        let mut body = String::new();
        for d in docs {
            let action = json!({"index": {"_index": self.layout.alias(), "_id": d.id, "version": d.version, "version_type": "external"}});
            body.push_str(&format!(
                "{action}\n{}\n",
                serde_json::to_string(d).unwrap()
            ));
        }
        let resp = self
            .http
            .post(format!("{}/_bulk?refresh=true", self.base))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .expect("bulk");
        assert!(
            resp.status().is_success(),
            "bulk request failed: {}",
            resp.status()
        );
        let result: Value = resp.json().await.unwrap();
        result["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["index"]["status"].as_u64().unwrap() as u16,
                    i["index"].clone(),
                )
            })
            .collect()
    }

    async fn search_ids(&self, query: Value) -> Vec<Uuid> {
        let (status, body) = self
            .request(
                reqwest::Method::POST,
                &format!("{}/_search", self.layout.alias()),
                Some(json!({"query": query})),
            )
            .await;
        assert_eq!(status, 200, "search failed: {body}");
        let mut ids: Vec<Uuid> = body["hits"]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["_id"].as_str().unwrap().parse().unwrap())
            .collect();
        ids.sort();
        ids
    }

    async fn remove(self) {
        let _ = self
            .request(reqwest::Method::DELETE, &self.layout.first_index(), None)
            .await;
        let _ = self
            .request(
                reqwest::Method::DELETE,
                &format!("_index_template/{}", self.layout.template_name()),
                None,
            )
            .await;
    }
}

fn document(tenant: &str, content: &str, version: u64, metadata: Value) -> SearchDocument {
    let event = MessageEvent::Created(MessagePayload {
        id: Uuid::new_v4(),
        conversation_id: Some(Uuid::new_v4()),
        sender_id: Some(Uuid::new_v4()),
        content: content.into(),
        tenant_id: tenant.into(),
        timestamp: Some(Timestamp::now()),
        updated_at: None,
        metadata: metadata.as_object().cloned().unwrap_or_else(Map::new),
        version: Some(version),
    });
    SearchDocument::from_event(&event).unwrap()
}

#[tokio::test]
async fn installer_is_idempotent_and_picks_flat_object() {
    let index = Index::install().await;
    let endpoint = SearchEndpoint::new(&index.base);
    let settings = IndexSettings {
        replicas: 0,
        ..IndexSettings::default()
    };
    let again = install(&index.http, &endpoint, &index.layout, &settings)
        .await
        .unwrap();
    assert!(
        !again.changed(),
        "a second install changed something: {again:?}"
    );
    assert_eq!(again.alias_indices, [index.layout.first_index()]);

    let (_, mapping) = index
        .request(
            reqwest::Method::GET,
            &format!("{}/_mapping", index.layout.first_index()),
            None,
        )
        .await;
    let props = &mapping[index.layout.first_index()]["mappings"]["properties"];
    assert_eq!(props[field::METADATA]["type"], "flat_object");
    assert_eq!(props[field::VERSION]["type"], "long");

    // Drift is reverted, and only the drifted part is rewritten.
    let template_path = format!("_index_template/{}", index.layout.template_name());
    let (_, mut current) = index
        .request(reqwest::Method::GET, &template_path, None)
        .await;
    let mut drifted = current["index_templates"][0]["index_template"].take();
    drifted["priority"] = json!(1);
    let (status, _) = index
        .request(reqwest::Method::PUT, &template_path, Some(drifted))
        .await;
    assert_eq!(status, 200);
    let repaired = install(&index.http, &endpoint, &index.layout, &settings)
        .await
        .unwrap();
    assert_eq!(
        (repaired.template, repaired.first_index, repaired.alias),
        (Change::Updated, Change::Unchanged, Change::Unchanged)
    );
    assert!(
        !install(&index.http, &endpoint, &index.layout, &settings)
            .await
            .unwrap()
            .changed()
    );
    index.remove().await;
}

#[tokio::test]
async fn an_alias_name_taken_by_a_concrete_index_is_refused_not_adopted() {
    let base = rig().search_url().to_owned();
    let name = unique("smoke-taken");
    let http = reqwest::Client::new();
    let created = http
        .put(format!("{base}/{name}"))
        .json(&json!({"settings": {"number_of_replicas": 0}}))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{:?}", created.text().await);
    let layout = IndexLayout::new(name.clone()).unwrap();
    let settings = IndexSettings {
        replicas: 0,
        ..IndexSettings::default()
    };
    let error = install(&http, &SearchEndpoint::new(&base), &layout, &settings)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, InstallError::AliasTakenByIndex { alias } if *alias == name),
        "{error}"
    );
    for path in [name.clone(), layout.template_name()] {
        let prefix = if path == name { "" } else { "_index_template/" };
        let _ = http.delete(format!("{base}/{prefix}{path}")).send().await;
    }
}

#[tokio::test]
async fn external_versions_refuse_older_writes() {
    let index = Index::install().await;
    let newer = document("t1", "version two", 2, json!({}));
    assert_eq!(index.bulk(std::slice::from_ref(&newer)).await[0].0, 201);

    // A replayed older or equal version is a conflict, and the document stays at version 2.
    for version in [1, 2] {
        let stale = SearchDocument {
            version,
            content: Some("stale".into()),
            ..newer.clone()
        };
        let (status, item) = index.bulk(&[stale]).await.remove(0);
        assert_eq!(status, 409, "version {version}: {item}");
        assert_eq!(item["error"]["type"], "version_conflict_engine_exception");
    }
    let (_, got) = index
        .request(
            reqwest::Method::GET,
            &format!("{}/_doc/{}", index.layout.alias(), newer.id),
            None,
        )
        .await;
    assert_eq!(got["_version"], 2);
    assert_eq!(got["_source"]["content"], "version two");

    // A tombstone with a higher version wins.
    let tombstone = SearchDocument {
        version: 3,
        deleted: true,
        deleted_at: Some(Timestamp::now()),
        content: None,
        ..newer.clone()
    };
    assert_eq!(index.bulk(&[tombstone]).await[0].0, 200);
    let (_, got) = index
        .request(
            reqwest::Method::GET,
            &format!("{}/_doc/{}", index.layout.alias(), newer.id),
            None,
        )
        .await;
    assert_eq!(got["_source"]["deleted"], true);
    index.remove().await;
}

#[tokio::test]
async fn metadata_and_term_filtered_queries() {
    let index = Index::install().await;
    let a1 = document(
        "tenant-a",
        "hello world",
        1,
        json!({"key1": "value1", "nested": {"flag": "on"}}),
    );
    let a2 = document("tenant-a", "hello again", 1, json!({"key1": "other"}));
    let b1 = document("tenant-b", "hello world", 1, json!({"key1": "value1"}));
    let gone = SearchDocument {
        deleted: true,
        ..document("tenant-a", "hello deleted", 1, json!({"key1": "value1"}))
    };
    // A strict mapping refuses a document with a field it does not know.
    let (status, item) = {
        let body = format!(
            "{}\n{}\n",
            json!({"index": {"_index": index.layout.alias(), "_id": Uuid::new_v4(), "version": 1, "version_type": "external"}}),
            json!({"id": Uuid::new_v4(), "tenantId": "t", "conversationId": Uuid::new_v4(), "version": 1, "deleted": false, "surprise": 1})
        );
        let r: Value = index
            .http
            .post(format!("{}/_bulk", index.base))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            r["items"][0]["index"]["status"].as_u64().unwrap(),
            r["items"][0]["index"].clone(),
        )
    };
    assert_eq!(status, 400, "{item}");
    assert_eq!(item["error"]["type"], "strict_dynamic_mapping_exception");

    for (status, item) in index
        .bulk(&[a1.clone(), a2.clone(), b1.clone(), gone.clone()])
        .await
    {
        assert_eq!(status, 201, "{item}");
    }
    let visible = |tenant: &str| json!([{"term": {field::TENANT_ID: tenant}}, {"term": {field::DELETED: false}}]);

    // flat_object: a metadata key, and a nested one by its dotted path.
    let mut filter = visible("tenant-a");
    filter
        .as_array_mut()
        .unwrap()
        .push(json!({"term": {"metadata.key1": "value1"}}));
    assert_eq!(
        index.search_ids(json!({"bool": {"filter": filter}})).await,
        [a1.id]
    );
    let mut nested = visible("tenant-a");
    nested
        .as_array_mut()
        .unwrap()
        .push(json!({"term": {"metadata.nested.flag": "on"}}));
    assert_eq!(
        index.search_ids(json!({"bool": {"filter": nested}})).await,
        [a1.id]
    );

    // Full text, filtered by tenant and hiding tombstones.
    let query = |tenant| json!({"bool": {"must": {"match": {field::CONTENT: "hello"}}, "filter": visible(tenant)}});
    let mut expected = vec![a1.id, a2.id];
    expected.sort();
    assert_eq!(index.search_ids(query("tenant-a")).await, expected);
    assert_eq!(index.search_ids(query("tenant-b")).await, [b1.id]);
    assert_eq!(
        index.search_ids(query("tenant-c")).await,
        Vec::<Uuid>::new()
    );
    index.remove().await;
}
