//! The drift audit's decision: MongoDB and the index walked in the same id order, each document
//! put in one class. Pure (the walk hands it pages of both sides), so every rule is a table row.
//!
//! MongoDB is the truth. A document is
//! - **missing** when MongoDB has it live and the index has no document of that id;
//! - **stale** when the index holds a lower version than MongoDB;
//! - **resurrected** when the index shows it (not a tombstone) while MongoDB has it deleted;
//! - **orphan** when the index shows it and MongoDB has no document of that id at all.
//!
//! Tombstones on one side only are not drift: purges run on their own schedule on each side, and
//! a tombstone nobody sees hides nothing. An index version above MongoDB's is not drift either
//! (external versions only grow; a restored MongoDB is a different problem than drift).

use std::cmp::Ordering;

/// A document as one side holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub id: String,
    pub version: u64,
    pub deleted: bool,
}

/// How a document diverges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Drift {
    Missing,
    Stale,
    Resurrected,
    Orphan,
}

impl Drift {
    pub const ALL: [Self; 4] = [Self::Missing, Self::Stale, Self::Resurrected, Self::Orphan];

    /// The metric label and the word in reports.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Stale => "stale",
            Self::Resurrected => "resurrected",
            Self::Orphan => "orphan",
        }
    }
}

/// The drift of one id given what each side holds of it (`None`: no document of that id).
pub fn drift(stored: Option<&Held>, indexed: Option<&Held>) -> Option<Drift> {
    match (stored, indexed) {
        (Some(s), None) if !s.deleted => Some(Drift::Missing),
        (Some(s), Some(i)) if s.deleted && !i.deleted => Some(Drift::Resurrected),
        (Some(s), Some(i)) if i.version < s.version => Some(Drift::Stale),
        (None, Some(i)) if !i.deleted => Some(Drift::Orphan),
        _ => None,
    }
}

/// Every divergent id of two id-ordered walks, in id order. Each side must be sorted by id
/// (byte order) without repeats, as the walk reads them.
pub fn compare<'a>(
    stored: impl IntoIterator<Item = &'a Held>,
    indexed: impl IntoIterator<Item = &'a Held>,
) -> Vec<(String, Drift)> {
    let (mut s, mut i) = (
        stored.into_iter().peekable(),
        indexed.into_iter().peekable(),
    );
    let mut found = Vec::new();
    loop {
        let (here_s, here_i) = match (s.peek(), i.peek()) {
            (None, None) => break,
            (Some(a), Some(b)) => match a.id.cmp(&b.id) {
                Ordering::Less => (s.next(), None),
                Ordering::Greater => (None, i.next()),
                Ordering::Equal => (s.next(), i.next()),
            },
            (Some(_), None) => (s.next(), None),
            (None, Some(_)) => (None, i.next()),
        };
        if let Some(d) = drift(here_s, here_i) {
            let id = here_s.or(here_i).map(|h| h.id.clone()).unwrap_or_default();
            found.push((id, d));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(id: &str, version: u64, deleted: bool) -> Held {
        Held {
            id: id.into(),
            version,
            deleted,
        }
    }

    #[test]
    fn each_pair_of_sides_has_one_class() {
        let live = |v| Some(held("a", v, false));
        let gone = |v| Some(held("a", v, true));
        // (MongoDB, index, drift)
        let rows = [
            (live(2), live(2), None),
            (live(2), None, Some(Drift::Missing)),
            (gone(3), None, None),
            (live(3), live(2), Some(Drift::Stale)),
            (live(3), gone(2), Some(Drift::Stale)),
            (gone(3), gone(2), Some(Drift::Stale)),
            (gone(3), live(2), Some(Drift::Resurrected)),
            (gone(3), live(3), Some(Drift::Resurrected)),
            (gone(3), gone(3), None),
            (live(2), live(3), None),
            (None, live(1), Some(Drift::Orphan)),
            (None, gone(1), None),
            (None, None, None),
        ];
        for (stored, indexed, want) in rows {
            assert_eq!(
                drift(stored.as_ref(), indexed.as_ref()),
                want,
                "stored {stored:?}, indexed {indexed:?}"
            );
        }
    }

    #[test]
    fn two_ordered_walks_meet_on_every_id() {
        let stored = [
            held("a", 1, false),
            held("b", 2, false),
            held("d", 4, true),
            held("e", 1, false),
            held("g", 1, false),
        ];
        let indexed = [
            held("a", 1, false),
            held("c", 1, false),
            held("d", 3, false),
            held("e", 1, false),
            held("f", 1, true),
            held("h", 1, false),
        ];
        assert_eq!(
            compare(&stored, &indexed),
            [
                ("b".to_owned(), Drift::Missing),
                ("c".to_owned(), Drift::Orphan),
                ("d".to_owned(), Drift::Resurrected),
                ("g".to_owned(), Drift::Missing),
                ("h".to_owned(), Drift::Orphan),
            ]
        );
        assert!(
            compare(&stored, &stored).is_empty(),
            "a side against itself"
        );
        assert!(compare(&[], &[]).is_empty());
    }
}
