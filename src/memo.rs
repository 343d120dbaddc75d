//! Bounded memory of recent answers for the detectors on the request path (the rule set's clean
//! header values, the transformer's scores): one table per detector instance, dropped with it
//! on a model-set swap.
//!
//! Direct-mapped: an entry's slot comes from its hash and a new entry replaces whatever shared
//! the slot, so memory is constant and there is no eviction bookkeeping; a run of new entries
//! only costs their owners the uncached path. Slots are spread over shards, each behind its own
//! mutex, so threads rarely wait on each other. Callers hash and decide what a hit is: the
//! table only stores and hands back entries.

use std::sync::{Mutex, MutexGuard};

pub struct Memo<T> {
    shards: Vec<Mutex<Vec<Option<T>>>>,
    per_shard: usize,
}

impl<T: Clone> Memo<T> {
    /// A table of `shards * per_shard` slots (both at least 1).
    pub fn new(shards: usize, per_shard: usize) -> Memo<T> {
        let per_shard = per_shard.max(1);
        Memo {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(vec![None; per_shard]))
                .collect(),
            per_shard,
        }
    }
}

impl<T> Memo<T> {
    fn shard(&self, hash: u64) -> (MutexGuard<'_, Vec<Option<T>>>, usize) {
        let n = self.shards.len() as u64;
        let shard = &self.shards[(hash % n) as usize];
        let index = ((hash / n) % self.per_shard as u64) as usize;
        // A panic elsewhere while a shard was locked cannot leave a slot half-written (slots
        // are replaced whole), so a poisoned shard is still good to use.
        (shard.lock().unwrap_or_else(|p| p.into_inner()), index)
    }

    /// What `found` makes of the entry in `hash`'s slot, if there is one.
    pub fn find<R>(&self, hash: u64, found: impl FnOnce(&T) -> Option<R>) -> Option<R> {
        let (slots, index) = self.shard(hash);
        slots.get(index)?.as_ref().and_then(found)
    }

    /// Put `entry` in `hash`'s slot, replacing what was there.
    pub fn put(&self, hash: u64, entry: T) {
        let (mut slots, index) = self.shard(hash);
        if let Some(slot) = slots.get_mut(index) {
            *slot = Some(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_by_their_slot_and_replaced_by_later_ones() {
        let m: Memo<(u64, &str)> = Memo::new(4, 8);
        let hit = |h: u64| m.find(h, |e| (e.0 == h).then_some(e.1));
        assert_eq!(hit(5), None);
        m.put(5, (5, "five"));
        assert_eq!(hit(5), Some("five"));
        // 5 + 32 lands in the same slot of a 4 x 8 table: it replaces the entry for 5.
        m.put(37, (37, "thirty-seven"));
        assert_eq!(hit(5), None);
        assert_eq!(hit(37), Some("thirty-seven"));
        // Another slot is untouched.
        m.put(6, (6, "six"));
        assert_eq!(hit(37), Some("thirty-seven"));
    }
}
