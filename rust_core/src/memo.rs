//! A process-wide memo of what is computed from public data, bounded in size.
//!
//! A process that simulates hundreds of meters meets the same few thousand public
//! keys over and over (X25519 keys agreed with by every neighbour of their owner,
//! Ed25519 keys of every message's sender). Parsing one costs a square root; the
//! memo keeps the result. It never holds a secret.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

/// Results by key; starts afresh once it holds `limit` of them.
pub struct Memo<K, V> {
    map: Mutex<HashMap<K, V>>,
    limit: usize,
}

impl<K: Eq + Hash, V: Copy> Memo<K, V> {
    /// An empty memo that keeps at most `limit` results.
    pub fn new(limit: usize) -> Self {
        Memo {
            map: Mutex::new(HashMap::new()),
            limit,
        }
    }

    /// The result for `key`, computed by `compute` (outside the lock) the first time.
    pub fn get_or_compute(&self, key: K, compute: impl FnOnce(&K) -> V) -> V {
        if let Some(found) = self.lock().get(&key) {
            return *found;
        }
        let value = compute(&key);
        let mut map = self.lock();
        if map.len() >= self.limit {
            map.clear();
        }
        map.insert(key, value);
        value
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, V>> {
        // A panic elsewhere cannot leave a half-written entry: keep going.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_once_and_starts_afresh_at_its_limit() {
        let memo = Memo::new(2);
        let calls = std::cell::Cell::new(0);
        let get = |k: u8| {
            memo.get_or_compute(k, |&k| {
                calls.set(calls.get() + 1);
                u32::from(k) * 10
            })
        };
        assert_eq!((get(1), get(1), get(2)), (10, 10, 20));
        assert_eq!(calls.get(), 2);
        assert_eq!(get(3), 30); // the third key clears the memo first
        assert_eq!(get(1), 10);
        assert_eq!(calls.get(), 4);
    }
}
