//! How many client connections Causeway holds: in all, and per client address.
//! A connection over either limit is closed as soon as it is accepted, before
//! a byte is read or a TLS handshake started. An IPv6 client counts by its
//! /64 network, since one host commonly holds a whole /64 and could otherwise
//! take a fresh address for every connection.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

/// The address a connection counts against: IPv4 as it is (IPv4-mapped IPv6
/// too), IPv6 by its /64 network.
fn counted_as(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
    }
}

/// The connections open now, by address.
#[derive(Debug)]
pub struct Limits {
    max_total: usize,
    max_per_ip: Option<usize>,
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
        if self.limits.max_per_ip.is_some() {
            if let dashmap::Entry::Occupied(mut e) = self.limits.per_ip.entry(self.ip) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }
}

impl Limits {
    pub fn new(max_total: usize, max_per_ip: Option<usize>) -> Arc<Self> {
        Arc::new(Self { max_total, max_per_ip, total: AtomicUsize::new(0), per_ip: DashMap::new() })
    }

    /// A place for a connection from `ip`, or which limit it is over.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, &'static str> {
        let ip = counted_as(ip);
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err("max_connections");
        }
        if let Some(max) = self.max_per_ip {
            let mut n = self.per_ip.entry(ip).or_insert(0);
            if *n >= max {
                drop(n);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err("max_connections_per_ip");
            }
            *n += 1;
        }
        Ok(Admitted { limits: self.clone(), ip })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_and_given_back() {
        let limits = Limits::new(3, Some(2));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = limits.admit(a).expect("a1");
        let _a2 = limits.admit(a).expect("a2");
        assert_eq!(limits.admit(a).err(), Some("max_connections_per_ip"));
        let _b1 = limits.admit(b).expect("b1");
        assert_eq!(limits.admit(b).err(), Some("max_connections"));
        drop(a1);
        let b2 = limits.admit(b);
        assert!(b2.is_ok(), "a closed connection frees its place");
        assert_eq!(limits.total.load(Ordering::Acquire), 3);
    }

    #[test]
    fn an_ipv6_network_counts_as_one_address() {
        let limits = Limits::new(10, Some(2));
        let host = |last: u16| IpAddr::from([0x2001, 0xdb8, 1, 2, 0, 0, 0, last]);
        let _a = limits.admit(host(1)).expect("a");
        let _b = limits.admit(host(2)).expect("b");
        assert_eq!(limits.admit(host(3)).err(), Some("max_connections_per_ip"), "same /64");
        let other = IpAddr::from([0x2001, 0xdb8, 1, 3, 0, 0, 0, 1]);
        assert!(limits.admit(other).is_ok(), "another /64");
        // IPv4 clients seen through a dual-stack socket count as themselves.
        let mapped: IpAddr = "::ffff:10.0.0.9".parse().expect("an address");
        let v4: IpAddr = [10, 0, 0, 9].into();
        let _m = limits.admit(mapped).expect("mapped");
        let _v = limits.admit(v4).expect("v4");
        assert_eq!(limits.admit(v4).err(), Some("max_connections_per_ip"));
    }

    #[test]
    fn no_per_address_limit_keeps_no_table() {
        let limits = Limits::new(10, None);
        let held: Vec<_> = (0..10).map(|_| limits.admit([1, 2, 3, 4].into()).expect("admit")).collect();
        assert!(limits.per_ip.is_empty());
        assert!(limits.admit([1, 2, 3, 4].into()).is_err());
        drop(held);
        assert_eq!(limits.total.load(Ordering::Acquire), 0);
    }
}
