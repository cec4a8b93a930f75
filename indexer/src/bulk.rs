//! The body of a `_bulk` request: NDJSON, one `index` action and one whole document per item.
//!
//! Owns the wire shape of what the indexer writes: every item is a whole-document `index` with
//! `version_type: external` and the event's `version`, so a replay, duplicate or out-of-order
//! event can never regress a document (property 2), and a delete is the tombstone document that
//! `SearchDocument::from_event` builds, never a `delete` action (a versioned tombstone survives
//! `index.gc_deletes`; a delete's version is forgotten after it). It never sends anything,
//! never uses `update` (which takes no external version) and never writes to a concrete index:
//! only to the alias. One exception, not the consume loop's: the audit removes an *orphan* (a
//! document MongoDB has no record of, so no version to write) with a `delete` on the index where
//! it saw it, conditional on the sequence number it saw, so a write since then wins.

use pipeline_contract::search::{IndexLayout, SearchDocument};
use serde::Serialize;
use uuid::Uuid;

/// An encoded bulk body and the share of it each item takes, in the order of the documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkBody {
    pub body: Vec<u8>,
    /// Bytes of each item (action line, document line, both newlines); they sum to
    /// `body.len()`, which is what the batcher bounds.
    pub item_sizes: Vec<usize>,
}

#[derive(Serialize)]
struct Action<'a> {
    index: IndexMeta<'a>,
}

// A struct rather than `json!` so the keys keep this order on the wire whatever serde_json's
// features are.
#[derive(Serialize)]
struct IndexMeta<'a> {
    #[serde(rename = "_index")]
    index: &'a str,
    #[serde(rename = "_id")]
    id: &'a Uuid,
    version: u64,
    version_type: &'static str,
    /// Refuse to write when the alias is gone, instead of auto-creating a concrete index of that
    /// name with dynamic mappings: the 404 then trips the breaker as it should.
    require_alias: bool,
}

/// Appends one item (action line and document line, each ending in `\n`) to `out` and returns
/// how many bytes it added.
pub fn encode_item(layout: &IndexLayout, doc: &SearchDocument, out: &mut Vec<u8>) -> usize {
    let before = out.len();
    let action = Action {
        index: IndexMeta {
            index: layout.alias(),
            id: &doc.id,
            version: doc.version,
            version_type: "external",
            require_alias: true,
        },
    };
    // Both are plain data with string keys; serializing them into a Vec cannot fail.
    serde_json::to_writer(&mut *out, &action).expect("a bulk action always serializes");
    out.push(b'\n');
    serde_json::to_writer(&mut *out, doc).expect("a search document always serializes");
    out.push(b'\n');
    out.len() - before
}

#[derive(Serialize)]
struct DeleteAction<'a> {
    delete: DeleteMeta<'a>,
}

#[derive(Serialize)]
struct DeleteMeta<'a> {
    #[serde(rename = "_index")]
    index: &'a str,
    #[serde(rename = "_id")]
    id: &'a str,
    if_seq_no: i64,
    if_primary_term: i64,
}

/// Appends the delete of an orphan `id` in `index`, applied only while the document is still at
/// `seq_no` / `primary_term` (the audit's repair; see the module's note).
pub fn encode_orphan_delete(
    index: &str,
    id: &str,
    seq_no: i64,
    primary_term: i64,
    out: &mut Vec<u8>,
) {
    let action = DeleteAction {
        delete: DeleteMeta {
            index,
            id,
            if_seq_no: seq_no,
            if_primary_term: primary_term,
        },
    };
    serde_json::to_writer(&mut *out, &action).expect("a bulk action always serializes");
    out.push(b'\n');
}

/// The whole `_bulk` body for `docs`, written to the alias of `layout`.
pub fn encode(layout: &IndexLayout, docs: &[SearchDocument]) -> BulkBody {
    let mut body = Vec::new();
    let item_sizes = docs
        .iter()
        .map(|doc| encode_item(layout, doc, &mut body))
        .collect();
    BulkBody { body, item_sizes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline_contract::Timestamp;
    use serde_json::{Map, json};

    const ID: &str = "0b9b5e4a-55b8-4c1e-9d2f-3a6f1c2d4e5f";
    const CONVERSATION: &str = "6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";
    const SENDER: &str = "11111111-2222-4333-8444-555555555555";

    fn message(version: u64) -> SearchDocument {
        SearchDocument {
            id: ID.parse().unwrap(),
            tenant_id: "tenant-a".into(),
            conversation_id: CONVERSATION.parse().unwrap(),
            sender_id: Some(SENDER.parse().unwrap()),
            content: Some("hello".into()),
            timestamp: Some("2026-11-27T05:00:00.000Z".parse::<Timestamp>().unwrap()),
            updated_at: None,
            deleted_at: None,
            version,
            deleted: false,
            metadata: Some(Map::new()),
        }
    }

    fn tombstone(version: u64) -> SearchDocument {
        SearchDocument {
            id: ID.parse().unwrap(),
            tenant_id: "tenant-a".into(),
            conversation_id: CONVERSATION.parse().unwrap(),
            sender_id: None,
            content: None,
            timestamp: None,
            updated_at: None,
            deleted_at: Some("2026-11-27T05:01:00.000Z".parse().unwrap()),
            version,
            deleted: true,
            metadata: None,
        }
    }

    fn lines(body: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(body).unwrap();
        assert!(text.ends_with('\n'), "NDJSON needs a final newline");
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn items_are_external_version_index_actions_with_whole_documents() {
        let action = |v: u64| {
            format!(
                r#"{{"index":{{"_index":"chat","_id":"{ID}","version":{v},"version_type":"external","require_alias":true}}}}"#
            )
        };
        let cases: Vec<(SearchDocument, Vec<String>)> = vec![
            (
                message(1),
                vec![
                    action(1),
                    format!(
                        r#"{{"id":"{ID}","tenantId":"tenant-a","conversationId":"{CONVERSATION}","senderId":"{SENDER}","content":"hello","timestamp":"2026-11-27T05:00:00.000Z","version":1,"deleted":false,"metadata":{{}}}}"#
                    ),
                ],
            ),
            (
                tombstone(4),
                vec![
                    action(4),
                    format!(
                        r#"{{"id":"{ID}","tenantId":"tenant-a","conversationId":"{CONVERSATION}","deletedAt":"2026-11-27T05:01:00.000Z","version":4,"deleted":true}}"#
                    ),
                ],
            ),
        ];
        let layout = IndexLayout::new("chat").unwrap();
        for (doc, expected) in cases {
            let encoded = encode(&layout, std::slice::from_ref(&doc));
            assert_eq!(lines(&encoded.body), expected, "{doc:?}");
            assert_eq!(encoded.item_sizes, [encoded.body.len()]);
        }
    }

    #[test]
    fn item_sizes_add_up_to_the_body() {
        let layout = IndexLayout::default();
        let mut tagged = message(2);
        tagged.metadata = Some(json!({"k": "v"}).as_object().unwrap().clone());
        let docs = [message(1), tagged, tombstone(3)];
        let encoded = encode(&layout, &docs);
        assert_eq!(encoded.item_sizes.len(), 3);
        assert_eq!(encoded.item_sizes.iter().sum::<usize>(), encoded.body.len());
        assert_eq!(lines(&encoded.body).len(), 6);
        // Each item's share is exactly what encoding it alone produces.
        for (doc, size) in docs.iter().zip(&encoded.item_sizes) {
            let mut alone = Vec::new();
            assert_eq!(encode_item(&layout, doc, &mut alone), *size);
            assert_eq!(alone.len(), *size);
        }
        let first = &lines(&encoded.body)[0];
        assert!(first.contains(r#""_index":"messages""#), "{first}");
    }

    #[test]
    fn empty_input_is_an_empty_body() {
        let encoded = encode(&IndexLayout::default(), &[]);
        assert!(encoded.body.is_empty() && encoded.item_sizes.is_empty());
    }

    #[test]
    fn an_orphan_delete_names_the_index_and_the_sequence_number_seen() {
        let mut out = Vec::new();
        encode_orphan_delete("m-000001", "a", 7, 2, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"delete\":{\"_index\":\"m-000001\",\"_id\":\"a\",\"if_seq_no\":7,\"if_primary_term\":2}}\n"
        );
    }
}
