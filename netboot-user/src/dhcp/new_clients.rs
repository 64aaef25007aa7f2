//! `[dhcp] new_clients_per_s`: pool allocations per second, at most. Both cores (DHCPv4 and
//! DHCPv6) count their allocations with one of these, so that a flood of invented clients
//! (random MACs, random DUIDs) cannot take a pool faster than the operator allows.

/// Allocations in the current second (Unix seconds, as the cores are told the time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NewClients {
    second: u64,
    count: u32,
}

impl NewClients {
    /// Whether one more allocation fits `limit` (0 = unlimited) in the second `now`.
    pub fn allowed(&mut self, now: u64, limit: u32) -> bool {
        if self.second != now {
            *self = NewClients { second: now, count: 0 };
        }
        limit == 0 || self.count < limit
    }

    /// Counts an allocation made after [`NewClients::allowed`].
    pub fn made(&mut self) {
        self.count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holds_the_limit_and_the_next_starts_again() {
        let mut n = NewClients::default();
        for _ in 0..2 {
            assert!(n.allowed(10, 2));
            n.made();
        }
        assert!(!n.allowed(10, 2));
        assert!(n.allowed(10, 0), "0 is unlimited");
        assert!(n.allowed(11, 2));
    }
}
