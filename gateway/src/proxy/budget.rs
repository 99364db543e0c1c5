//! A gateway-wide allowance of bytes, shared by every client connection: the
//! fetch answers asked for ahead ([`super::fetch`]), and the request buffers
//! set aside whole before their bytes have arrived ([`super::session`]). A
//! part taken is given back when its [`Held`] is dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct Budget {
    limit: usize,
    held: AtomicUsize,
    /// Told the bytes held after every change (a gauge).
    report: fn(usize),
}

impl Budget {
    pub fn new(limit: usize, report: fn(usize)) -> Arc<Self> {
        Arc::new(Self { limit, held: AtomicUsize::new(0), report })
    }

    /// `n` bytes of the budget, or `None` if they are not left.
    pub fn take(self: &Arc<Self>, n: usize) -> Option<Held> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|total| *total <= self.limit)
            })
            .ok()?;
        (self.report)(self.held());
        Some(Held { budget: self.clone(), n })
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// Part of a [`Budget`], given back when dropped.
#[derive(Debug)]
pub struct Held {
    budget: Arc<Budget>,
    n: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.n, Ordering::AcqRel);
        (self.budget.report)(self.budget.held());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_taken_is_given_back_when_dropped() {
        let budget = Budget::new(100, |_| {});
        let a = budget.take(60);
        assert!(a.is_some());
        assert!(budget.take(41).is_none(), "61 + 41 > 100");
        let b = budget.take(40);
        assert_eq!(budget.held(), 100);
        drop(a);
        assert_eq!(budget.held(), 40);
        assert!(budget.take(usize::MAX).is_none(), "no overflow");
        drop(b);
        assert_eq!(budget.held(), 0);
    }
}
