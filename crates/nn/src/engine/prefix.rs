//! The engine's prefix store: KV caches of finished prompt prefills, keyed by their prompt tokens, so a new
//! prompt that starts the same way (a chat template's system turn, a task's instructions shared by a GRPO
//! group) copies those rows instead of running them through the model again. Bounded by bytes, least recently
//! used out first. Generic over the cache type; the engine decides what is worth storing and reusing.

/// One stored prompt and the cache of exactly its positions.
struct Entry<C> {
    tokens: Vec<u32>,
    cache: C,
    bytes: usize,
    last_used: u64,
}

pub(crate) struct PrefixStore<C> {
    entries: Vec<Entry<C>>,
    budget: usize,
    used: usize,
    /// Ticks on every hit and insert; an entry's `last_used` orders eviction.
    clock: u64,
}

/// How many leading tokens `a` and `b` share.
pub(crate) fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<C> PrefixStore<C> {
    /// A store of at most `budget` bytes of caches; 0 keeps nothing.
    pub(crate) fn new(budget: usize) -> PrefixStore<C> {
        PrefixStore { entries: Vec::new(), budget, used: 0, clock: 0 }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// Whether a cache of `bytes` fits the budget at all.
    pub(crate) fn fits(&self, bytes: usize) -> bool {
        bytes > 0 && bytes <= self.budget
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.used
    }

    /// The stored prompt sharing the longest prefix with `prompt`, and that length capped at `limit`; the most
    /// recently used wins a tie. `None` when nothing shares a token.
    pub(crate) fn longest(&self, prompt: &[u32], limit: usize) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize, u64)> = None;
        for (i, e) in self.entries.iter().enumerate() {
            let n = common_prefix(&e.tokens, prompt).min(limit);
            if n > 0 && best.is_none_or(|(_, m, used)| n > m || (n == m && e.last_used > used)) {
                best = Some((i, n, e.last_used));
            }
        }
        best.map(|(i, n, _)| (i, n))
    }

    /// The cache of entry `index` (from [`PrefixStore::longest`]), which now counts as just used.
    pub(crate) fn hit(&mut self, index: usize) -> &C {
        self.clock += 1;
        let entry = &mut self.entries[index];
        entry.last_used = self.clock;
        &entry.cache
    }

    /// Whether storing `tokens` at `bytes` would add anything: it fits, and no stored prompt starts with it
    /// (that one already offers every prefix this one would).
    pub(crate) fn wants(&self, tokens: &[u32], bytes: usize) -> bool {
        self.fits(bytes) && !self.entries.iter().any(|e| e.tokens.starts_with(tokens))
    }

    /// Stores `cache` (exactly the positions of `tokens`, `bytes` large). Stored prompts that are prefixes of
    /// `tokens` go (the new entry offers all they did), then the least recently used until it fits.
    pub(crate) fn insert(&mut self, tokens: Vec<u32>, cache: C, bytes: usize) {
        if !self.wants(&tokens, bytes) {
            return;
        }
        let mut freed = 0;
        self.entries.retain(|e| {
            let superseded = tokens.starts_with(&e.tokens);
            if superseded {
                freed += e.bytes;
            }
            !superseded
        });
        self.used -= freed;
        while self.used + bytes > self.budget {
            let Some(oldest) = self.entries.iter().enumerate().min_by_key(|(_, e)| e.last_used).map(|(i, _)| i) else {
                break;
            };
            self.used -= self.entries.swap_remove(oldest).bytes;
        }
        self.clock += 1;
        self.used += bytes;
        self.entries.push(Entry { tokens, cache, bytes, last_used: self.clock });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Caches are just labels here; a token costs 10 bytes.
    fn put(store: &mut PrefixStore<&'static str>, tokens: &[u32], label: &'static str) {
        store.insert(tokens.to_vec(), label, tokens.len() * 10);
    }

    fn found(store: &mut PrefixStore<&'static str>, prompt: &[u32]) -> Option<(&'static str, usize)> {
        let (i, n) = store.longest(prompt, prompt.len() - 1)?;
        Some((*store.hit(i), n))
    }

    #[test]
    fn the_longest_shared_prefix_wins_and_is_capped() {
        let mut store = PrefixStore::new(1000);
        put(&mut store, &[1, 2, 3, 4], "a");
        put(&mut store, &[1, 2, 3, 9, 9], "b");
        put(&mut store, &[7, 8], "c");
        assert_eq!(found(&mut store, &[1, 2, 3, 9, 5]), Some(("b", 4)));
        assert_eq!(found(&mut store, &[1, 2, 3, 4, 5]), Some(("a", 4)));
        // The same prompt again: one token is always left to run.
        assert_eq!(found(&mut store, &[1, 2, 3, 4]), Some(("a", 3)));
        assert_eq!(found(&mut store, &[5, 6]), None);
        // A tie goes to the most recently used.
        assert_eq!(found(&mut store, &[1, 2, 3, 0]), Some(("a", 3)));
        found(&mut store, &[1, 2, 3, 9, 0]);
        assert_eq!(found(&mut store, &[1, 2, 3, 0]), Some(("b", 3)));
    }

    #[test]
    fn eviction_keeps_the_budget_and_drops_the_least_recently_used() {
        let mut store = PrefixStore::new(100);
        put(&mut store, &[1, 1, 1, 1], "a");
        put(&mut store, &[2, 2, 2, 2], "b");
        put(&mut store, &[3, 3, 3, 3], "c");
        // 120 > 100: the oldest, `a`, went.
        assert_eq!(store.len(), 2);
        assert_eq!(store.bytes(), 80);
        assert_eq!(found(&mut store, &[1, 1, 1, 1, 5]), None);
        // `b` used now, so `c` is the oldest when `d` comes.
        assert!(found(&mut store, &[2, 2, 2, 7]).is_some());
        put(&mut store, &[4, 4, 4, 4, 4, 4], "d");
        assert_eq!((store.len(), store.bytes()), (2, 100));
        assert_eq!(found(&mut store, &[3, 3, 3, 3, 3]), None);
        assert_eq!(found(&mut store, &[2, 2, 2, 2, 2]), Some(("b", 4)));
        // Larger than the whole budget: not stored, nothing evicted.
        put(&mut store, &[5; 11], "e");
        assert_eq!((store.len(), store.bytes()), (2, 100));
    }

    #[test]
    fn a_longer_prompt_replaces_its_prefixes_and_a_covered_one_is_not_stored() {
        let mut store = PrefixStore::new(1000);
        put(&mut store, &[1, 2, 3], "short");
        put(&mut store, &[1, 2, 3, 4, 5], "long");
        assert_eq!((store.len(), store.bytes()), (1, 50));
        assert!(!store.wants(&[1, 2, 3, 4], 40));
        put(&mut store, &[1, 2, 3, 4], "covered");
        assert_eq!((store.len(), store.bytes()), (1, 50));
        assert_eq!(found(&mut store, &[1, 2, 9]), Some(("long", 2)));
    }

    #[test]
    fn a_zero_budget_stores_nothing() {
        let mut store = PrefixStore::new(0);
        assert!(!store.enabled());
        put(&mut store, &[1, 2, 3], "a");
        assert_eq!((store.len(), store.bytes()), (0, 0));
        assert_eq!(found(&mut store, &[1, 2, 3, 4]), None);
    }
}
