//! Admission: how many connections are served now, in all and per client address, and
//! which limit (if any) a new one is over.
//!
//! Invariant: an [`Admission`] holds its place in both counts for as long as it lives and
//! gives both back when dropped, however the connection ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::http::Limit;

/// The counts every connection takes a place in.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    /// Connections being served now (handshaking or open).
    active: AtomicUsize,
    /// Connections per client address. Touched on accept and on close only, never per
    /// message.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Counts {
    /// Connections being served now.
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

/// One connection's place in the counts.
#[derive(Debug)]
pub(crate) struct Admission {
    counts: Arc<Counts>,
    /// The client address, in canonical form (IPv4-mapped IPv6 as IPv4).
    ip: IpAddr,
}

impl Admission {
    /// Takes a place for a connection from `ip` and says which limit it is over, if any:
    /// `max` in all (503), `max_per_ip` from one address (429; 0 means no limit).
    pub(crate) fn take(
        counts: &Arc<Counts>,
        ip: IpAddr,
        max: usize,
        max_per_ip: usize,
    ) -> (Self, Limit) {
        let ip = ip.to_canonical();
        let active = counts.active.fetch_add(1, Ordering::Relaxed) + 1;
        let from_ip = {
            let mut m = counts.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(ip).or_insert(0);
            *n += 1;
            *n
        };
        let limit = if active > max {
            Limit::Total
        } else if max_per_ip > 0 && from_ip > max_per_ip {
            Limit::PerIp
        } else {
            Limit::None
        };
        (
            Admission {
                counts: counts.clone(),
                ip,
            },
            limit,
        )
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.counts.active.fetch_sub(1, Ordering::Relaxed);
        let mut m = self.counts.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limits_apply_and_places_come_back() {
        let counts = Arc::new(Counts::default());
        let (a, l) = Admission::take(&counts, ip("10.0.0.1"), 2, 1);
        assert_eq!(l, Limit::None);
        let (b, l) = Admission::take(&counts, ip("::ffff:10.0.0.1"), 2, 1);
        assert_eq!(l, Limit::PerIp, "IPv4-mapped counts as the same address");
        let (c, l) = Admission::take(&counts, ip("10.0.0.2"), 2, 1);
        assert_eq!(l, Limit::Total);
        assert_eq!(counts.active(), 3);
        drop((a, b, c));
        assert_eq!(counts.active(), 0);
        assert!(counts.per_ip.lock().unwrap().is_empty());
        let (_d, l) = Admission::take(&counts, ip("10.0.0.1"), 2, 0);
        assert_eq!(l, Limit::None);
    }
}
