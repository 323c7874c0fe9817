//! Ordered logs: each new entry takes the next slot from an atomic counter, so concurrent writers (two
//! replicas, say) never overwrite each other's entries, and a walk sees entries in the order they were
//! made. A head mark skips the empty prefix, so walking costs what is live, not all of history.

use std::borrow::Cow;
use std::ops::Range;

use crate::error::Error;
use crate::store::{Backing, Vault};

pub struct Log<'v, 'a, P: Backing> {
    vault: &'v Vault<'a, P>,
    name: Cow<'static, str>,
}

impl<'v, 'a, P: Backing> Log<'v, 'a, P> {
    /// The log called `name`: one of [`crate::keys::logs`], or one of a family (a patient's, say).
    pub fn new(vault: &'v Vault<'a, P>, name: impl Into<Cow<'static, str>>) -> Self {
        Log {
            vault,
            name: name.into(),
        }
    }

    fn counter(&self) -> String {
        format!("{}:n", self.name)
    }

    fn head(&self) -> String {
        format!("{}:head", self.name)
    }

    /// The key of a slot's entry; zero-padded, so keys sort as slots do.
    pub fn key(&self, slot: u64) -> String {
        format!("{}:{slot:012}", self.name)
    }

    /// A fresh slot for a new entry (slots start at 1).
    pub fn append(&self) -> Result<u64, Error> {
        Ok(self.vault.platform.increment(&self.counter(), 1)? as u64)
    }

    /// `n` fresh slots at once (one store write), for a writer that will fill them soon; those it
    /// leaves empty are holes like any other.
    pub fn reserve(&self, n: u64) -> Result<Range<u64>, Error> {
        let last = self.vault.platform.increment(&self.counter(), n as i64)? as u64;
        Ok(last + 1 - n..last + 1)
    }

    /// Starts a walk over the slots that may hold entries: from the head mark to the last slot handed out.
    pub fn walk(&self) -> Result<Walk, Error> {
        let last = self.vault.platform.increment(&self.counter(), 0)? as u64;
        let stored = self
            .vault
            .platform
            .get(&self.head())?
            .and_then(|v| String::from_utf8(v).ok())
            .unwrap_or_default();
        let mark = HeadMark::parse(&stored);
        let dead_below = match mark.issued {
            Some((end, at)) if self.vault.now() - at >= WRITE_GRACE_SECS => end,
            _ => 0,
        };
        Ok(Walk {
            span: mark.head..(last + 1).max(mark.head),
            next: mark.head,
            blocked: false,
            dead_below,
            stored,
        })
    }

    /// Ends a walk: moves the head past the leading slots it found empty for good, and notes which
    /// slots had been handed out by now, so that a later walk may skip their holes.
    pub fn finish(&self, walk: Walk) -> Result<(), Error> {
        let now = self.vault.now();
        let old = HeadMark::parse(&walk.stored);
        let issued = match old.issued {
            Some((_, at)) if now - at < WRITE_GRACE_SECS => old.issued,
            _ => Some((walk.span.end, now)),
        };
        let mark = HeadMark {
            head: walk.next,
            issued,
        };
        // Two walkers racing may store an older mark: that only makes a later walk longer.
        if mark.head != old.head
            || old
                .issued
                .is_none_or(|(_, at)| now - at >= WRITE_GRACE_SECS)
        {
            self.vault
                .platform
                .set(&self.head(), mark.to_string().as_bytes())?;
        }
        Ok(())
    }
}

/// How long a writer may take between taking a slot and writing its entry: a few store writes, each
/// of which may wait up to 10 s for a busy store, or (the audit trail) slots reserved up to 10 s
/// before use. A hole older than this is empty for good; a younger one may be an entry on its way.
pub const WRITE_GRACE_SECS: i64 = 60;

/// The head key's value: `{head}` or `{head} {end} {at}`, where every slot below `end` had been handed
/// out at `at` (Unix seconds).
struct HeadMark {
    head: u64,
    issued: Option<(u64, i64)>,
}

impl HeadMark {
    fn parse(text: &str) -> HeadMark {
        let mut parts = text.split(' ');
        let head = parts
            .next()
            .and_then(|h| h.parse::<u64>().ok())
            .unwrap_or(1)
            .max(1);
        let issued = parts
            .next()
            .and_then(|e| e.parse().ok())
            .zip(parts.next().and_then(|t| t.parse().ok()));
        HeadMark { head, issued }
    }
}

impl std::fmt::Display for HeadMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.issued {
            Some((end, at)) => write!(f, "{} {end} {at}", self.head),
            None => write!(f, "{}", self.head),
        }
    }
}

/// One pass over a log, oldest slot first. The walker reports what it found in each slot, in order, and
/// the head moves past the leading slots that are empty for good: entries the walk removed, and holes
/// old enough that no writer can still be filling them. A young hole (an entry on its way, or one taken
/// back moments ago) stops the head, never the walk.
pub struct Walk {
    pub span: Range<u64>,
    next: u64,
    blocked: bool,
    dead_below: u64,
    stored: String,
}

impl Walk {
    /// The walk keeps the entry in the slot it is at: the head stops there.
    pub fn kept(&mut self) {
        self.blocked = true;
    }

    /// The walk removed the entry in `slot`.
    pub fn removed(&mut self, slot: u64) {
        self.pass(slot, true);
    }

    /// `slot` holds no entry: taken back by its owner, or not yet written by the writer that took it.
    pub fn hole(&mut self, slot: u64) {
        self.pass(slot, slot < self.dead_below);
    }

    fn pass(&mut self, slot: u64, empty_for_good: bool) {
        if !self.blocked && slot == self.next && empty_for_good {
            self.next = slot + 1;
        } else {
            self.blocked = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::TokenKey;
    use crate::ports::KeyValue;
    use crate::store::Lifetime;
    use crate::testing::FakePlatform;

    #[test]
    fn the_head_skips_removed_entries_at_once_and_holes_only_once_no_writer_can_fill_them() {
        let p = FakePlatform::new();
        let k = TokenKey::parse(&"42".repeat(32)).unwrap();
        let vault = Vault::new(&p, &k);
        let log = Log::new(&vault, "things");
        assert_eq!(log.walk().unwrap().span, 1..1);
        let slots: Vec<u64> = (0..4).map(|_| log.append().unwrap()).collect();
        assert_eq!(slots, [1, 2, 3, 4]);
        // Slot 2's writer has its slot but has not written its entry yet.
        for slot in [1, 3, 4] {
            vault.put(&log.key(slot), &slot, Lifetime::Forever).unwrap();
        }
        assert!(log.key(2) < log.key(10));

        let walk_removing = |removable: &[u64]| {
            let mut walk = log.walk().unwrap();
            for slot in walk.span.clone() {
                if vault.get::<u64>(&log.key(slot)).unwrap().is_none() {
                    walk.hole(slot);
                } else if removable.contains(&slot) {
                    p.delete(&log.key(slot)).unwrap();
                    walk.removed(slot);
                } else {
                    walk.kept();
                }
            }
            log.finish(walk).unwrap();
            log.walk().unwrap().span
        };
        // The removed entry goes behind the head; the young hole stops it, though 3 is removed too.
        assert_eq!(walk_removing(&[1, 3]), 2..5);
        // The late writer fills its slot: nothing was skipped.
        vault.put(&log.key(2), &2u64, Lifetime::Forever).unwrap();
        assert_eq!(walk_removing(&[]), 2..5);
        assert_eq!(
            walk_removing(&[2]),
            3..5,
            "3 is a hole now, and still young"
        );
        // A writer that took a slot and died: once the grace has passed, its hole is skipped.
        p.advance(std::time::Duration::from_secs(WRITE_GRACE_SECS as u64 + 1));
        assert_eq!(walk_removing(&[]), 4..5);
    }
}
