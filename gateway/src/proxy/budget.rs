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
    /// Told every change of the bytes held (a gauge's increments, so that
    /// concurrent changes add up whatever their order).
    report: fn(i64),
}

impl Budget {
    pub fn new(limit: usize, report: fn(i64)) -> Arc<Self> {
        Arc::new(Self { limit, held: AtomicUsize::new(0), report })
    }

    /// `n` bytes of the budget, or `None` if they are not left.
    pub fn take(self: &Arc<Self>, n: usize) -> Option<Held> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|total| *total <= self.limit)
            })
            .ok()?;
        (self.report)(i64::try_from(n).unwrap_or(i64::MAX));
        Some(Held { budget: self.clone(), n })
    }

    /// `n` bytes, if they are at most `1/parts` of the budget and left.
    pub fn take_share(self: &Arc<Self>, n: usize, parts: usize) -> Option<Held> {
        if n > self.limit / parts.max(1) {
            return None;
        }
        self.take(n)
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
        (self.budget.report)(-i64::try_from(self.n).unwrap_or(i64::MAX));
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

    #[test]
    fn a_share_is_at_most_its_part_of_the_budget() {
        let budget = Budget::new(160, |_| {});
        assert!(budget.take_share(11, 16).is_none(), "160 / 16 = 10");
        let a = budget.take_share(10, 16);
        assert!(a.is_some());
        assert_eq!(budget.held(), 10);
    }
}
