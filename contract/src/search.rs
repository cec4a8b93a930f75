//! The search index: the document the indexer writes, the index layout, and the template body.
//!
//! Layout: alias `<alias>` (default `messages`) is the write alias of `<alias>-000001`, created from
//! the composable template `<alias>-template` matching `<alias>-*`. Documents are whole messages
//! keyed by message id and written with external versions; a delete is a versioned tombstone
//! (`deleted: true`) that the indexer purges after the tombstone horizon. Mappings are `strict`, and
//! `metadata` is one `flattened` (Elasticsearch) or `flat_object` (OpenSearch) field, so no tenant's
//! metadata keys can ever add to or break the shared mapping.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::dlq::ErrorClass;
use crate::event::MessageEvent;
use crate::time::Timestamp;

/// The alias unless configured otherwise.
pub const DEFAULT_ALIAS: &str = "messages";
/// Default tombstone horizon: must exceed topic retention (7 d) + segment roll + worst lag.
pub const DEFAULT_TOMBSTONE_HORIZON_DAYS: u32 = 21;
/// Bumped whenever the template body changes meaning; recorded in the template's `_meta`.
pub const TEMPLATE_SCHEMA_VERSION: u32 = 1;

/// Field names of the search document, for queries.
pub mod field {
    pub const ID: &str = "id";
    pub const TENANT_ID: &str = "tenantId";
    pub const CONVERSATION_ID: &str = "conversationId";
    pub const SENDER_ID: &str = "senderId";
    pub const CONTENT: &str = "content";
    pub const TIMESTAMP: &str = "timestamp";
    pub const UPDATED_AT: &str = "updatedAt";
    pub const DELETED_AT: &str = "deletedAt";
    pub const VERSION: &str = "version";
    pub const DELETED: &str = "deleted";
    pub const METADATA: &str = "metadata";
}

/// One message as the search engine holds it; `_id` is [`SearchDocument::id`] and the external
/// version is [`SearchDocument::version`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchDocument {
    pub id: Uuid,
    pub tenant_id: String,
    pub conversation_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Timestamp>,
    pub version: u64,
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

/// Why a decoded event cannot become a search document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotIndexable {
    #[error("event has no version, so it cannot be written with an external version")]
    MissingVersion,
    #[error("event has no {0}, which the search document requires")]
    MissingField(&'static str),
}

impl NotIndexable {
    pub fn error_class(&self) -> ErrorClass {
        match self {
            Self::MissingVersion => ErrorClass::MissingVersion,
            Self::MissingField(_) => ErrorClass::Undecodable,
        }
    }
}

impl SearchDocument {
    /// The whole document an event leaves in the index: the message for created/updated, a
    /// tombstone for deleted.
    pub fn from_event(event: &MessageEvent) -> Result<Self, NotIndexable> {
        Self::try_from(event.clone())
    }
}

impl TryFrom<MessageEvent> for SearchDocument {
    type Error = NotIndexable;

    /// As [`SearchDocument::from_event`], moving the event's strings and metadata instead of
    /// copying them: the indexer converts every record it reads.
    fn try_from(event: MessageEvent) -> Result<Self, NotIndexable> {
        let version = event.version().ok_or(NotIndexable::MissingVersion)?;
        let conversation_id = event
            .conversation_id()
            .ok_or(NotIndexable::MissingField(field::CONVERSATION_ID))?;
        Ok(match event {
            MessageEvent::Created(p) | MessageEvent::Updated(p) => Self {
                id: p.id,
                conversation_id,
                sender_id: Some(
                    p.sender_id
                        .ok_or(NotIndexable::MissingField(field::SENDER_ID))?,
                ),
                timestamp: Some(
                    p.timestamp
                        .ok_or(NotIndexable::MissingField(field::TIMESTAMP))?,
                ),
                tenant_id: p.tenant_id,
                content: Some(p.content),
                updated_at: p.updated_at,
                deleted_at: None,
                version,
                deleted: false,
                metadata: Some(p.metadata),
            },
            MessageEvent::Deleted(p) => Self {
                id: p.id,
                tenant_id: p.tenant_id,
                conversation_id,
                sender_id: None,
                content: None,
                timestamp: None,
                updated_at: None,
                deleted_at: Some(
                    p.deleted_at
                        .ok_or(NotIndexable::MissingField(field::DELETED_AT))?,
                ),
                version,
                deleted: true,
                metadata: None,
            },
        })
    }
}

/// Names derived from the alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexLayout {
    alias: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid index alias {alias:?}: {reason}")]
pub struct InvalidAlias {
    pub alias: String,
    pub reason: &'static str,
}

impl IndexLayout {
    /// Validates the alias against the engines' index-name rules (lowercase, no separators or
    /// wildcards, not starting with `-`, `_` or `+`, short enough for `<alias>-000001`).
    pub fn new(alias: impl Into<String>) -> Result<Self, InvalidAlias> {
        let alias = alias.into();
        let fail = |reason| {
            Err(InvalidAlias {
                alias: alias.clone(),
                reason,
            })
        };
        if alias.is_empty() {
            return fail("empty");
        }
        if alias.len() > 200 {
            return fail("longer than 200 bytes");
        }
        if alias.starts_with(['-', '_', '+', '.']) {
            return fail("starts with '-', '_', '+' or '.'");
        }
        if !alias.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        }) {
            return fail("only lowercase letters, digits, '-', '_' and '.' are allowed");
        }
        Ok(Self { alias })
    }

    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// The path that reads which indices the alias points at (404 when there is no such
    /// alias). Named on both sides, so the request is about the alias only: `_alias/<alias>`
    /// would be about every index, which a principal allowed on the pipeline's indices alone
    /// (OpenSearch's security plugin, Elasticsearch's index privileges) is refused with a 403.
    pub fn alias_lookup_path(&self) -> String {
        format!("{0}/_alias/{0}", self.alias)
    }

    pub fn template_name(&self) -> String {
        format!("{}-template", self.alias)
    }

    pub fn index_pattern(&self) -> String {
        format!("{}-*", self.alias)
    }

    pub fn first_index(&self) -> String {
        self.index_of(1)
    }

    /// The concrete index of `generation` (`<alias>-00000N`): the installer creates the first,
    /// each rebuild the next.
    pub fn index_of(&self, generation: u32) -> String {
        format!("{}-{generation:06}", self.alias)
    }

    /// The alias a rebuild writes the next generation through until the swap.
    pub fn staging_alias(&self) -> String {
        format!("{}-rebuild", self.alias)
    }

    /// The generation of a concrete index of this layout; `None` for any other name.
    pub fn generation_of(&self, index: &str) -> Option<u32> {
        let digits = index.strip_prefix(&self.alias)?.strip_prefix('-')?;
        (digits.len() >= 6 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    }
}

impl Default for IndexLayout {
    fn default() -> Self {
        Self {
            alias: DEFAULT_ALIAS.to_owned(),
        }
    }
}

/// Which search engine family answers, where the two differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    Elasticsearch,
    OpenSearch,
}

impl Distribution {
    /// The field type for free-form metadata.
    pub const fn metadata_field_type(self) -> &'static str {
        match self {
            Self::Elasticsearch => "flattened",
            Self::OpenSearch => "flat_object",
        }
    }
}

/// What `GET /` says about the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    pub distribution: Distribution,
    pub version: String,
    pub major: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsupportedEngine {
    #[error("the root endpoint did not report version.number")]
    NoVersion,
    #[error(
        "{distribution:?} {version} is not supported (need Elasticsearch 8/9 or OpenSearch 2/3)"
    )]
    Version {
        distribution: Distribution,
        version: String,
    },
}

impl EngineInfo {
    /// Reads the body of `GET /`. OpenSearch says `version.distribution: "opensearch"`;
    /// Elasticsearch has no such field.
    pub fn from_root(body: &Value) -> Result<Self, UnsupportedEngine> {
        let version = &body["version"];
        let number = version["number"]
            .as_str()
            .ok_or(UnsupportedEngine::NoVersion)?;
        let distribution = match version["distribution"].as_str() {
            Some("opensearch") => Distribution::OpenSearch,
            _ => Distribution::Elasticsearch,
        };
        let major: u32 = number
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .ok_or(UnsupportedEngine::NoVersion)?;
        let supported = match distribution {
            Distribution::Elasticsearch => (8..=9).contains(&major),
            // flat_object arrived in OpenSearch 2.7.
            Distribution::OpenSearch => {
                let minor: u32 = number
                    .split('.')
                    .nth(1)
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(0);
                (major == 2 && minor >= 7) || major == 3
            }
        };
        if !supported {
            return Err(UnsupportedEngine::Version {
                distribution,
                version: number.to_owned(),
            });
        }
        Ok(Self {
            distribution,
            version: number.to_owned(),
            major,
        })
    }
}

/// Index settings the template sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSettings {
    pub shards: u32,
    pub replicas: u32,
    /// e.g. `1s`; the search freshness floor.
    pub refresh_interval: String,
    /// `index.gc_deletes`; `None` keeps the engine's default (60 s). Tests set it low.
    pub gc_deletes: Option<String>,
    /// Who installs the layout: recorded in the template's `_meta` and, through the template's
    /// mappings, in every index made from it, so that only its owner ever deletes them.
    pub owner: Option<Owner>,
}

impl Default for IndexSettings {
    fn default() -> Self {
        Self {
            shards: 1,
            replicas: 1,
            refresh_interval: "1s".into(),
            gc_deletes: None,
            owner: None,
        }
    }
}

/// The owner of an index layout: a MessagePipeline, by uid (what is compared) and by
/// `namespace/name` (for the humans reading `_meta`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub uid: String,
    pub name: String,
}

/// The `_meta` key that holds the owner's uid, in the template and in each index's mappings.
pub const OWNER_UID: &str = "owner-uid";
/// The `_meta` key that holds the owner's `namespace/name`.
pub const OWNER_NAME: &str = "owner";

/// The owner uid an index's mappings or a template's `_meta` records (`None`: none recorded).
pub fn owner_uid(meta: &Value) -> Option<&str> {
    meta.get(OWNER_UID).and_then(Value::as_str)
}

/// The composable index template body for `PUT _index_template/<layout.template_name()>`.
///
/// Settings are written as the engines return them (nested under `index`, values as strings) so
/// that [`template_matches`] can compare what is installed with what is wanted.
pub fn index_template(
    layout: &IndexLayout,
    distribution: Distribution,
    settings: &IndexSettings,
) -> Value {
    let mut index = json!({
        "number_of_shards": settings.shards.to_string(),
        "number_of_replicas": settings.replicas.to_string(),
        "refresh_interval": settings.refresh_interval,
    });
    if let Some(gc) = &settings.gc_deletes {
        index["gc_deletes"] = json!(gc);
    }
    let keyword = json!({"type": "keyword"});
    let date = json!({"type": "date"});
    let mut meta = json!({
        "managed-by": "message-pipeline",
        "schema-version": TEMPLATE_SCHEMA_VERSION,
    });
    let mut template = json!({
        "index_patterns": [layout.index_pattern()],
        "priority": 200,
        "template": {
            "settings": {"index": index},
            "mappings": {
                "dynamic": "strict",
                "properties": {
                    field::ID: keyword,
                    field::TENANT_ID: keyword,
                    field::CONVERSATION_ID: keyword,
                    field::SENDER_ID: keyword,
                    field::CONTENT: {"type": "text"},
                    field::TIMESTAMP: date,
                    field::UPDATED_AT: date,
                    field::DELETED_AT: date,
                    field::VERSION: {"type": "long"},
                    field::DELETED: {"type": "boolean"},
                    field::METADATA: {"type": distribution.metadata_field_type()},
                }
            }
        }
    });
    if let Some(owner) = &settings.owner {
        let mark = json!({OWNER_UID: owner.uid, OWNER_NAME: owner.name});
        template["template"]["mappings"]["_meta"] = mark.clone();
        if let (Some(meta), Value::Object(mark)) = (meta.as_object_mut(), mark) {
            meta.extend(mark);
        }
    }
    template["_meta"] = meta;
    template
}

/// Whether an installed template (the `index_template` object of `GET _index_template/<name>`)
/// is the wanted one. Settings are compared after flattening (`{"index": {"a": 1}}` and
/// `{"index.a": "1"}` are the same setting); everything else must be equal, so any drift, even
/// an added field, shows.
/// Whether an index's mappings are what the template's say (key order aside): an index created
/// from an older template (a release that changed it) has other mappings, and only a rebuild
/// gives it the new ones.
///
/// The mappings' `_meta` (the owner's mark) is not a mapping: an index made before the mark
/// existed is not outdated for lacking it.
pub fn mapping_matches(template_mappings: &Value, index_mappings: &Value) -> bool {
    let without_meta = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("_meta");
        }
        normalized(&v)
    };
    without_meta(template_mappings) == without_meta(index_mappings)
}

pub fn template_matches(installed: &Value, wanted: &Value) -> bool {
    let part = |v: &Value, key: &str| v.get(key).cloned().unwrap_or(Value::Null);
    let settings = |v: &Value| flatten_settings(&v["template"]["settings"]);
    let template_rest = |v: &Value| {
        let mut t = v["template"].as_object().cloned().unwrap_or_default();
        t.remove("settings");
        t.retain(|_, v| !is_empty(v));
        t
    };
    ["index_patterns", "priority", "_meta", "composed_of"]
        .iter()
        .all(|k| normalized(&part(installed, k)) == normalized(&part(wanted, k)))
        && settings(installed) == settings(wanted)
        && template_rest(installed) == template_rest(wanted)
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Absent and empty are the same (`composed_of: []` is what engines return for "none").
fn normalized(v: &Value) -> Value {
    if is_empty(v) { Value::Null } else { v.clone() }
}

fn flatten_settings(settings: &Value) -> Map<String, Value> {
    fn walk(prefix: &str, value: &Value, out: &mut Map<String, Value>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            Value::Null => {}
            Value::String(s) => {
                out.insert(prefix.to_owned(), Value::String(s.clone()));
            }
            other => {
                out.insert(prefix.to_owned(), Value::String(other.to_string()));
            }
        }
    }
    let mut out = Map::new();
    walk("", settings, &mut out);
    // `"index.x"` and `"x"` name the same index setting.
    out.into_iter()
        .map(|(k, v)| {
            if k.starts_with("index.") {
                (k, v)
            } else {
                (format!("index.{k}"), v)
            }
        })
        .collect()
}

#[cfg(test)]
mod generation_tests {
    use super::{IndexLayout, mapping_matches};
    use serde_json::json;

    #[test]
    fn an_index_matches_its_template_whatever_the_key_order_and_not_with_another_field() {
        let template = json!({"dynamic": "strict", "properties": {"id": {"type": "keyword"}, "version": {"type": "long"}}});
        let same = json!({"properties": {"version": {"type": "long"}, "id": {"type": "keyword"}}, "dynamic": "strict"});
        assert!(mapping_matches(&template, &same));
        let mut grown = same.clone();
        grown["properties"]["legacy"] = json!({"type": "keyword"});
        assert!(!mapping_matches(&template, &grown));
        let mut retyped = same;
        retyped["properties"]["version"] = json!({"type": "integer"});
        assert!(!mapping_matches(&template, &retyped));
    }

    #[test]
    fn generations_name_concrete_indices_and_back() {
        let layout = IndexLayout::new("messages").unwrap();
        assert_eq!(layout.index_of(1), layout.first_index());
        assert_eq!(layout.index_of(12), "messages-000012");
        for (index, want) in [
            ("messages-000001", Some(1)),
            ("messages-000012", Some(12)),
            ("messages-1000000", Some(1_000_000)),
            ("messages-00001", None),
            ("messages-template", None),
            ("messages-00000x", None),
            ("other-000001", None),
            ("messages000001", None),
        ] {
            assert_eq!(layout.generation_of(index), want, "{index}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{DeletedPayload, MessagePayload};

    fn payload() -> MessagePayload {
        MessagePayload {
            id: Uuid::new_v4(),
            conversation_id: Some(Uuid::new_v4()),
            sender_id: Some(Uuid::new_v4()),
            content: "hi".into(),
            tenant_id: "t".into(),
            timestamp: Some(Timestamp::now()),
            updated_at: None,
            metadata: Map::new(),
            version: Some(1),
        }
    }

    #[test]
    fn created_and_updated_become_whole_documents() {
        let p = payload();
        for event in [
            MessageEvent::Created(p.clone()),
            MessageEvent::Updated(p.clone()),
        ] {
            let doc = SearchDocument::from_event(&event).unwrap();
            assert_eq!(doc.id, p.id);
            assert_eq!(doc.content.as_deref(), Some("hi"));
            assert_eq!(doc.version, 1);
            assert!(!doc.deleted);
            assert_eq!(doc.metadata, Some(Map::new()));
        }
    }

    #[test]
    fn deleted_becomes_a_versioned_tombstone() {
        let p = payload();
        let event = MessageEvent::Deleted(DeletedPayload {
            id: p.id,
            conversation_id: p.conversation_id,
            tenant_id: "t".into(),
            version: Some(4),
            deleted_at: Some(Timestamp::now()),
        });
        let doc = SearchDocument::from_event(&event).unwrap();
        assert!(doc.deleted);
        assert_eq!(doc.version, 4);
        assert_eq!(doc.content, None);
        let json = serde_json::to_value(&doc).unwrap();
        // Sorted: serde_json keeps insertion order when another crate enables `preserve_order`.
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "conversationId",
                "deleted",
                "deletedAt",
                "id",
                "tenantId",
                "version"
            ]
        );
    }

    #[test]
    fn events_the_index_cannot_take_are_classified() {
        let cases: Vec<(MessagePayload, NotIndexable, ErrorClass)> = vec![
            (
                MessagePayload {
                    version: None,
                    ..payload()
                },
                NotIndexable::MissingVersion,
                ErrorClass::MissingVersion,
            ),
            (
                MessagePayload {
                    conversation_id: None,
                    ..payload()
                },
                NotIndexable::MissingField(field::CONVERSATION_ID),
                ErrorClass::Undecodable,
            ),
            (
                MessagePayload {
                    sender_id: None,
                    ..payload()
                },
                NotIndexable::MissingField(field::SENDER_ID),
                ErrorClass::Undecodable,
            ),
            (
                MessagePayload {
                    timestamp: None,
                    ..payload()
                },
                NotIndexable::MissingField(field::TIMESTAMP),
                ErrorClass::Undecodable,
            ),
        ];
        for (p, err, class) in cases {
            let got = SearchDocument::from_event(&MessageEvent::Updated(p)).unwrap_err();
            assert_eq!(got, err);
            assert_eq!(got.error_class(), class);
        }
    }

    #[test]
    fn alias_validation() {
        for ok in ["messages", "tenant.messages-2", "a"] {
            assert!(IndexLayout::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Messages",
            "-x",
            "_x",
            "a b",
            "a*",
            "a,b",
            "a/b",
            &"x".repeat(201),
        ] {
            assert!(IndexLayout::new(bad).is_err(), "{bad}");
        }
        let l = IndexLayout::new("chat").unwrap();
        assert_eq!(
            (l.template_name(), l.index_pattern(), l.first_index()),
            (
                "chat-template".into(),
                "chat-*".into(),
                "chat-000001".into()
            )
        );
    }

    #[test]
    fn engine_detection() {
        let cases = [
            (
                json!({"version": {"number": "2.19.1", "distribution": "opensearch"}}),
                Ok(Distribution::OpenSearch),
            ),
            (
                json!({"version": {"number": "3.0.0", "distribution": "opensearch"}}),
                Ok(Distribution::OpenSearch),
            ),
            (
                json!({"version": {"number": "8.15.0"}}),
                Ok(Distribution::Elasticsearch),
            ),
            (
                json!({"version": {"number": "9.1.2", "build_flavor": "default"}}),
                Ok(Distribution::Elasticsearch),
            ),
            (json!({"version": {"number": "7.17.0"}}), Err(())),
            (
                json!({"version": {"number": "2.5.0", "distribution": "opensearch"}}),
                Err(()),
            ),
            (
                json!({"version": {"number": "1.3.0", "distribution": "opensearch"}}),
                Err(()),
            ),
            (json!({"name": "x"}), Err(())),
        ];
        for (body, expected) in cases {
            let got = EngineInfo::from_root(&body)
                .map(|i| i.distribution)
                .map_err(|_| ());
            assert_eq!(got, expected, "{body}");
        }
    }

    #[test]
    fn template_picks_the_metadata_type_per_engine() {
        let l = IndexLayout::default();
        let s = IndexSettings::default();
        let es = index_template(&l, Distribution::Elasticsearch, &s);
        let os = index_template(&l, Distribution::OpenSearch, &s);
        assert_eq!(
            es["template"]["mappings"]["properties"]["metadata"]["type"],
            "flattened"
        );
        assert_eq!(
            os["template"]["mappings"]["properties"]["metadata"]["type"],
            "flat_object"
        );
        assert_eq!(os["index_patterns"], json!(["messages-*"]));
        assert_eq!(os["template"]["mappings"]["dynamic"], "strict");
    }

    #[test]
    fn template_comparison_normalizes_settings_and_sees_drift() {
        let l = IndexLayout::default();
        let wanted = index_template(&l, Distribution::OpenSearch, &IndexSettings::default());
        assert!(template_matches(&wanted, &wanted));

        // What an engine returns: numbers as strings, maybe flattened keys, empty composed_of.
        let mut returned = wanted.clone();
        returned["composed_of"] = json!([]);
        returned["template"]["settings"] = json!({"index.number_of_shards": 1, "index": {"number_of_replicas": "1", "refresh_interval": "1s"}});
        assert!(template_matches(&returned, &wanted));

        type Drift = Box<dyn Fn(&mut Value)>;
        let drifts: Vec<Drift> = vec![
            Box::new(|t| t["template"]["settings"]["index"]["number_of_shards"] = json!("3")),
            Box::new(|t| t["template"]["settings"]["index"]["codec"] = json!("best_compression")),
            Box::new(|t| {
                t["template"]["mappings"]["properties"]["content"] = json!({"type": "keyword"})
            }),
            Box::new(|t| {
                t["template"]["mappings"]["properties"]["extra"] = json!({"type": "keyword"})
            }),
            Box::new(|t| t["priority"] = json!(100)),
            Box::new(|t| t["index_patterns"] = json!(["messages-*", "other-*"])),
            Box::new(|t| t["_meta"]["schema-version"] = json!(0)),
            Box::new(|t| t["template"]["aliases"] = json!({"x": {}})),
        ];
        for (i, drift) in drifts.iter().enumerate() {
            let mut t = wanted.clone();
            drift(&mut t);
            assert!(!template_matches(&t, &wanted), "drift {i} not seen");
        }
    }
}
