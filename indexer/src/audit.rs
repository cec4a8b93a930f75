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
use std::collections::VecDeque;

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

/// One of the two sides of the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Stored,
    Indexed,
}

impl Side {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Stored => "MongoDB",
            Self::Indexed => "the index",
        }
    }
}

/// A page that does not continue its side in strictly ascending byte order: the walk cannot
/// pair the two sides, so it stops instead of reporting drift that is not there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} returned {after:?} after {before:?}: its id order is not byte order, so the audit cannot pair the two sides", side.as_str())]
pub struct OutOfOrder {
    pub side: Side,
    pub before: String,
    pub after: String,
}

#[derive(Debug, Default)]
struct Buffer {
    held: VecDeque<Held>,
    done: bool,
    last: Option<String>,
    seen: u64,
}

impl Buffer {
    fn feed(&mut self, side: Side, page: Vec<Held>, last_page: bool) -> Result<(), OutOfOrder> {
        for h in page {
            if let Some(before) = &self.last
                && h.id.as_bytes() <= before.as_bytes()
            {
                return Err(OutOfOrder {
                    side,
                    before: before.clone(),
                    after: h.id,
                });
            }
            self.last = Some(h.id.clone());
            self.seen += 1;
            self.held.push_back(h);
        }
        self.done = last_page;
        Ok(())
    }

    /// How far this side has shown everything it holds: `Some(None)` to its end,
    /// `Some(Some(id))` up to `id`, `None` not at all yet.
    fn bound(&self) -> Option<Option<&str>> {
        if self.done {
            Some(None)
        } else {
            self.last.as_deref().map(Some)
        }
    }
}

/// The streaming form of [`compare`]: each side is fed page by page in its id order, and every
/// id that both sides have shown far enough is decided and dropped, so memory holds about one
/// page per side whatever the collection's size.
#[derive(Debug, Default)]
pub struct Walk {
    stored: Buffer,
    indexed: Buffer,
}

impl Walk {
    pub fn new() -> Self {
        Self::default()
    }

    /// The side to read next before anything more can be decided; `None` when both are read to
    /// their end and decided.
    pub fn need(&self) -> Option<Side> {
        for (side, b) in [(Side::Stored, &self.stored), (Side::Indexed, &self.indexed)] {
            if b.held.is_empty() && !b.done {
                return Some(side);
            }
        }
        None
    }

    /// The next page of `side`; `last_page` when the side has nothing after it.
    pub fn feed(&mut self, side: Side, page: Vec<Held>, last_page: bool) -> Result<(), OutOfOrder> {
        match side {
            Side::Stored => self.stored.feed(side, page, last_page),
            Side::Indexed => self.indexed.feed(side, page, last_page),
        }
    }

    /// Decides every id both sides have shown far enough and returns the divergent ones, in id
    /// order.
    pub fn decide(&mut self) -> Vec<(String, Drift)> {
        let (Some(s), Some(i)) = (self.stored.bound(), self.indexed.bound()) else {
            return Vec::new();
        };
        let bound = match (s, i) {
            (Some(a), Some(b)) => Some(a.min(b).to_owned()),
            (Some(a), None) | (None, Some(a)) => Some(a.to_owned()),
            (None, None) => None,
        };
        let within = |b: &Buffer| {
            b.held
                .iter()
                .take_while(|h| bound.as_deref().is_none_or(|bound| h.id.as_str() <= bound))
                .count()
        };
        let (n_s, n_i) = (within(&self.stored), within(&self.indexed));
        let stored: Vec<Held> = self.stored.held.drain(..n_s).collect();
        let indexed: Vec<Held> = self.indexed.held.drain(..n_i).collect();
        compare(&stored, &indexed)
    }

    /// Documents read so far: (MongoDB, the index), tombstones included.
    pub fn seen(&self) -> (u64, u64) {
        (self.stored.seen, self.indexed.seen)
    }
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

    #[test]
    fn a_walk_fed_in_pages_finds_what_compare_finds() {
        let ids = |n: usize, step: usize| -> Vec<Held> {
            (0..n)
                .map(|k| held(&format!("{:04}", k * step), 1, false))
                .collect()
        };
        let stored = ids(40, 2); // 0000, 0002, …, 0078
        let mut indexed = ids(27, 3); // 0000, 0003, …, 0078
        indexed[5].version = 0; // 0015: not in MongoDB anyway
        let want = compare(&stored, &indexed);
        for (page_s, page_i) in [(1, 1), (3, 7), (7, 3), (50, 50), (40, 1)] {
            let mut walk = Walk::new();
            let (mut s, mut i) = (stored.chunks(page_s), indexed.chunks(page_i));
            let mut found = Vec::new();
            while let Some(side) = walk.need() {
                let chunks = match side {
                    Side::Stored => &mut s,
                    Side::Indexed => &mut i,
                };
                let page = chunks.next().map(<[Held]>::to_vec).unwrap_or_default();
                let last = chunks.len() == 0;
                walk.feed(side, page, last).unwrap();
                found.extend(walk.decide());
            }
            found.extend(walk.decide());
            assert_eq!(found, want, "pages of {page_s} and {page_i}");
            assert_eq!(walk.seen(), (40, 27));
        }
    }

    #[test]
    fn a_side_out_of_byte_order_stops_the_walk() {
        let mut walk = Walk::new();
        walk.feed(Side::Stored, vec![held("b", 1, false)], false)
            .unwrap();
        let error = walk
            .feed(Side::Stored, vec![held("a", 1, false)], false)
            .unwrap_err();
        assert_eq!(
            (error.side, error.before.as_str(), error.after.as_str()),
            (Side::Stored, "b", "a")
        );
        let error = walk
            .feed(
                Side::Indexed,
                vec![held("c", 1, false), held("c", 2, false)],
                true,
            )
            .unwrap_err();
        assert_eq!(error.side, Side::Indexed);
        assert!(error.to_string().contains("the index"), "{error}");
    }
}
