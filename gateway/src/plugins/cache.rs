//! Plugin answers kept for the TTL the plugin gives: a router's routes and
//! listings, an ACL mapper's principals and decisions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Answers kept at most, each cache; past it, expired answers go, then all.
pub const MAX_CACHED: usize = 65_536;

pub(crate) struct Cached<T> {
    answer: T,
    until: Instant,
    /// The plugin generation that gave the answer.
    generation: u64,
}

/// Answers with a TTL, keyed by a digest of who asked about what.
pub struct Cache<T> {
    pub(crate) entries: DashMap<Key, Cached<T>>,
    /// Bumped by `clear`: an answer from an older generation (a call that
    /// was under way during a reload) is never served.
    generation: AtomicU64,
}

impl<T: Clone> Default for Cache<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> Cache<T> {
    pub fn new() -> Self {
        Self { entries: DashMap::new(), generation: AtomicU64::new(0) }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn get(&self, key: &Key) -> Option<T> {
        let hit = self.entries.get(key)?;
        (Instant::now() < hit.until && hit.generation == self.generation()).then(|| hit.answer.clone())
    }

    /// Keeps `answer`, given by the plugin generation `generation` (read
    /// before the call), for `ttl_ms`.
    pub fn put(&self, key: Key, answer: T, ttl_ms: u32, generation: u64) {
        if ttl_ms == 0 || generation != self.generation() {
            return;
        }
        if self.entries.len() >= MAX_CACHED {
            let now = Instant::now();
            self.entries.retain(|_, c| now < c.until);
            if self.entries.len() >= MAX_CACHED {
                self.entries.clear();
            }
        }
        let until = Instant::now() + Duration::from_millis(u64::from(ttl_ms));
        self.entries.insert(key, Cached { answer, until, generation });
    }

    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
    }
}

/// The key of a cached answer: a SHA-256 of who asked and about what, so a
/// long client id costs the cache no more than a short one. Lengths go
/// first, so no choice of names (client ids may hold any character) makes
/// two askers share a key.
pub type Key = [u8; 32];

pub fn key(principal: &str, client_id: &str, what: &[&str]) -> Key {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [principal, client_id].iter().chain(what) {
        digest.update(&(part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    }
    let mut key = [0; 32];
    key.copy_from_slice(digest.finish().as_ref());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::router::Route;

    #[test]
    fn cache_keeps_answers_for_their_ttl_only() {
        let cache: Cache<Route> = Cache::new();
        cache.put(key("p", "c", &["t"]), Route::Routes, 60_000, 0);
        cache.put(key("p", "c", &["gone"]), Route::Routes, 0, 0);
        assert_eq!(cache.get(&key("p", "c", &["t"])), Some(Route::Routes));
        assert_eq!(cache.get(&key("p", "c", &["gone"])), None, "ttl 0 is never kept");
        assert_eq!(cache.get(&key("p", "x", &["t"])), None, "another client id is another answer");
        // Whatever the client id holds, it cannot pose as another asker.
        assert_ne!(key("ab", "c", &["t"]), key("a", "bc", &["t"]));
        assert_ne!(key("p", "c1:x", &["t"]), key("p", "c", &["1:xt"]));
        assert_ne!(key("p", "a\0b", &["t"]), key("p", "a", &["\0bt"]));
        assert_ne!(key("p", "c", &["ab", "t"]), key("p", "c", &["a", "bt"]));
    }

    #[test]
    fn an_answer_from_before_a_reload_is_never_served() {
        let cache: Cache<Route> = Cache::new();
        let k = key("p", "c", &["t"]);
        cache.put(k, Route::To(0, "old".into()), 60_000, cache.generation());
        // A call starts, the plugin is reloaded, then the call answers.
        let started = cache.generation();
        cache.clear();
        cache.put(k, Route::To(0, "stale".into()), 60_000, started);
        assert_eq!(cache.get(&k), None);
        cache.put(k, Route::To(0, "new".into()), 60_000, cache.generation());
        assert_eq!(cache.get(&k), Some(Route::To(0, "new".into())));
    }

    #[test]
    fn cache_stays_bounded() {
        let cache: Cache<Route> = Cache::new();
        for i in 0..MAX_CACHED + 10 {
            cache.put(key("p", "c", &[&i.to_string()]), Route::Unroutable, 60_000, 0);
        }
        assert!(cache.entries.len() <= MAX_CACHED);
    }
}
