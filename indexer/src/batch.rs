//! The batch accumulator: when a bulk request is full or has waited long enough.
//!
//! Owns the three bounds (count, encoded bytes, linger since the first item) and the halving of
//! a batch the engine refused as too large (413). It never encodes, sends, reads a clock (`now`
//! is injected) or decides what happens to a single document that is still too large alone:
//! that is `classify`'s call.

use std::time::{Duration, Instant};

/// `INDEXER_BATCH_MAX_COUNT`, `INDEXER_BATCH_MAX_BYTES`, `INDEXER_BATCH_LINGER_MS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Items per bulk request; 0 is read as 1.
    pub max_count: usize,
    /// Sum of the items' encoded sizes (action line + document line); keep it well under the
    /// engine's `http.max_content_length` (100 MiB by default).
    pub max_bytes: usize,
    /// How long the first item may wait for company.
    pub linger: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_count: 1_000,
            max_bytes: 5 * 1024 * 1024,
            linger: Duration::from_millis(200),
        }
    }
}

impl BatchLimits {
    /// The bounds of one of `lanes` batches in flight at once: an equal share of `max_count`
    /// (at least one item each; 0 lanes count as 1), the same bytes and linger.
    pub fn shared_by(self, lanes: usize) -> Self {
        Self {
            max_count: self.max_count.max(1).div_ceil(lanes.max(1)),
            ..self
        }
    }
}

/// Items waiting to go out in one bulk request, in the order they were pushed.
#[derive(Debug, Clone)]
pub struct Batch<T> {
    limits: BatchLimits,
    items: Vec<T>,
    bytes: usize,
    first_at: Option<Instant>,
}

impl<T> Batch<T> {
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            limits,
            items: Vec::new(),
            bytes: 0,
            first_at: None,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The sum of the encoded sizes pushed so far.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether an item of `encoded_bytes` can join without the batch passing `max_bytes`. An
    /// empty batch takes anything: an item bigger than the bound goes out alone, and the engine
    /// decides whether it is too large.
    pub fn fits(&self, encoded_bytes: usize) -> bool {
        self.is_empty() || self.bytes.saturating_add(encoded_bytes) <= self.limits.max_bytes
    }

    /// Adds an item; `true` means the batch is full and must be flushed now.
    ///
    /// Never refuses: to keep a batch under `max_bytes`, call [`Batch::fits`] first and flush
    /// when it says no.
    #[must_use = "a full batch must be flushed"]
    pub fn push(&mut self, item: T, encoded_bytes: usize, now: Instant) -> bool {
        self.first_at = self.first_at.or(Some(now));
        self.items.push(item);
        self.bytes = self.bytes.saturating_add(encoded_bytes);
        self.is_full()
    }

    fn is_full(&self) -> bool {
        self.at_max_count() || self.bytes >= self.limits.max_bytes
    }

    /// Whether it holds `max_count` items (0 read as 1).
    pub fn at_max_count(&self) -> bool {
        self.items.len() >= self.limits.max_count.max(1)
    }

    /// When the linger of the first item runs out; `None` while empty. The consumer loop sleeps
    /// until then at most.
    pub fn deadline(&self) -> Option<Instant> {
        self.first_at.map(|first| first + self.limits.linger)
    }

    /// Whether the batch should be flushed at `now`: it is full, or its first item has waited
    /// `linger`. An empty batch is never due.
    pub fn is_due(&self, now: Instant) -> bool {
        !self.is_empty() && (self.is_full() || self.deadline().is_some_and(|d| now >= d))
    }

    /// Empties the batch and returns its items in push order; the linger restarts with the next
    /// push.
    pub fn take(&mut self) -> Vec<T> {
        self.bytes = 0;
        self.first_at = None;
        std::mem::take(&mut self.items)
    }
}

/// Halves a batch the engine answered with 413, keeping order so the first half holds the
/// earlier offsets. The first half gets the odd item. A single item cannot be split (the second
/// half is empty); `classify` dead-letters it instead of sending it again.
pub fn split_for_413<T>(mut items: Vec<T>) -> (Vec<T>, Vec<T>) {
    let second = items.split_off(items.len().div_ceil(2));
    (items, second)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BatchLimits = BatchLimits {
        max_count: 3,
        max_bytes: 100,
        linger: Duration::from_millis(50),
    };

    #[test]
    fn push_says_when_to_flush() {
        // (pushes as (encoded bytes, ms after start), expected flush flag of each push)
        type Pushes = Vec<(usize, u64)>;
        let cases: Vec<(&str, Pushes, Vec<bool>)> = vec![
            (
                "count bound",
                vec![(1, 0), (1, 0), (1, 0)],
                vec![false, false, true],
            ),
            (
                "bytes bound reached exactly",
                vec![(60, 0), (40, 0)],
                vec![false, true],
            ),
            (
                "bytes bound passed by one oversized item",
                vec![(150, 0)],
                vec![true],
            ),
            (
                "linger does not make push flush",
                vec![(1, 0), (1, 500)],
                vec![false, false],
            ),
        ];
        for (name, pushes, expected) in cases {
            let start = Instant::now();
            let mut b = Batch::new(LIMITS);
            let got: Vec<bool> = pushes
                .iter()
                .enumerate()
                .map(|(i, (bytes, ms))| b.push(i, *bytes, start + Duration::from_millis(*ms)))
                .collect();
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn fits_keeps_batches_under_max_bytes() {
        let now = Instant::now();
        let cases: Vec<(Vec<usize>, usize, bool)> = vec![
            // (sizes already in the batch, size of the next item, fits)
            (vec![], 1_000, true),
            (vec![60], 40, true),
            (vec![60], 41, false),
            (vec![99], 1, true),
            (vec![100], 0, true),
        ];
        for (sizes, next, fits) in cases {
            let mut b = Batch::new(BatchLimits {
                max_count: 100,
                ..LIMITS
            });
            for s in &sizes {
                let _ = b.push((), *s, now);
            }
            assert_eq!(b.fits(next), fits, "{sizes:?} + {next}");
        }
    }

    #[test]
    fn due_after_linger_since_the_first_item() {
        let start = Instant::now();
        let ms = |m| start + Duration::from_millis(m);
        // (pushes at ms, asked at ms, due)
        let cases: Vec<(Vec<u64>, u64, bool)> = vec![
            (vec![], 1_000, false),
            (vec![0], 49, false),
            (vec![0], 50, true),
            (vec![10], 59, false),
            (vec![10, 40], 60, true),
            (vec![0, 0, 0], 0, true),
        ];
        for (pushes, asked, due) in cases {
            let mut b = Batch::new(LIMITS);
            for at in &pushes {
                let _ = b.push((), 1, ms(*at));
            }
            assert_eq!(b.is_due(ms(asked)), due, "{pushes:?} asked at {asked}");
        }
    }

    #[test]
    fn take_empties_and_restarts_the_linger() {
        let start = Instant::now();
        let ms = |m| start + Duration::from_millis(m);
        let mut b = Batch::new(LIMITS);
        let _ = b.push("a", 10, ms(0));
        let _ = b.push("b", 20, ms(5));
        assert_eq!((b.len(), b.bytes(), b.deadline()), (2, 30, Some(ms(50))));
        assert_eq!(b.take(), ["a", "b"]);
        assert!(b.is_empty() && b.bytes() == 0 && b.deadline().is_none());
        assert!(!b.is_due(ms(1_000)));
        let _ = b.push("c", 1, ms(1_000));
        assert!(!b.is_due(ms(1_049)));
        assert!(b.is_due(ms(1_050)));
    }

    #[test]
    fn split_halves_in_order() {
        let cases: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = vec![
            (vec![], vec![], vec![]),
            (vec![1], vec![1], vec![]),
            (vec![1, 2], vec![1], vec![2]),
            (vec![1, 2, 3], vec![1, 2], vec![3]),
            (vec![1, 2, 3, 4], vec![1, 2], vec![3, 4]),
        ];
        for (items, first, second) in cases {
            assert_eq!(split_for_413(items.clone()), (first, second), "{items:?}");
        }
    }

    #[test]
    fn lanes_share_the_count_and_keep_the_rest() {
        // (max_count, lanes, records per lane)
        let cases = [
            (6000, 4, 1500),
            (6000, 1, 6000),
            (6000, 0, 6000),
            (10, 4, 3),
            (0, 4, 1),
            (5, 8, 1),
        ];
        for (max_count, lanes, per_lane) in cases {
            let limits = BatchLimits {
                max_count,
                ..BatchLimits::default()
            };
            let shared = limits.shared_by(lanes);
            assert_eq!(shared.max_count, per_lane, "{max_count} over {lanes}");
            assert_eq!(
                (shared.max_bytes, shared.linger),
                (limits.max_bytes, limits.linger)
            );
        }
    }
}
