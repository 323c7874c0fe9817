//! Ordered logs: each new entry takes the next slot from an atomic counter, so concurrent writers (two
//! replicas, say) never overwrite each other's entries, and a walk sees entries in the order they were
//! made. A head mark skips the empty prefix, so walking costs what is live, not all of history.

use std::ops::Range;

use crate::error::Error;
use crate::store::{Backing, Vault};

pub struct Log<'v, 'a, P: Backing> {
    vault: &'v Vault<'a, P>,
    name: &'static str,
}

impl<'v, 'a, P: Backing> Log<'v, 'a, P> {
    pub fn new(vault: &'v Vault<'a, P>, name: &'static str) -> Self {
        Log { vault, name }
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

    /// The slots that may hold entries: from the head mark to the last slot handed out.
    pub fn span(&self) -> Result<Range<u64>, Error> {
        let last = self.vault.platform.increment(&self.counter(), 0)? as u64;
        let head = self
            .vault
            .platform
            .get(&self.head())?
            .and_then(|v| String::from_utf8(v).ok()?.parse::<u64>().ok())
            .unwrap_or(1)
            .max(1);
        Ok(head..last + 1)
    }

    /// Marks every slot before `slot` as empty for good. Two walkers racing may set an older mark: that
    /// only makes a later walk longer.
    pub fn advance(&self, slot: u64, span: &Range<u64>) -> Result<(), Error> {
        if slot > span.start {
            self.vault
                .platform
                .set(&self.head(), slot.to_string().as_bytes())?;
        }
        Ok(())
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
    fn slots_are_handed_out_in_order_and_the_head_skips_what_is_gone() {
        let p = FakePlatform::new();
        let k = TokenKey::parse(&"42".repeat(32)).unwrap();
        let vault = Vault::new(&p, &k);
        let log = Log::new(&vault, "things");
        assert_eq!(log.span().unwrap(), 1..1);
        let slots: Vec<u64> = (0..3).map(|_| log.append().unwrap()).collect();
        assert_eq!(slots, [1, 2, 3]);
        for slot in &slots {
            vault.put(&log.key(*slot), slot, Lifetime::Forever).unwrap();
        }
        assert!(log.key(2) < log.key(10));
        let span = log.span().unwrap();
        assert_eq!(span, 1..4);
        p.delete(&log.key(1)).unwrap();
        log.advance(2, &span).unwrap();
        assert_eq!(log.span().unwrap(), 2..4);
    }
}
