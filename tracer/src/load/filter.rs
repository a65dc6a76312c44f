//! What the kernel side's first tests read: one byte per port (PORTS), one bit per address
//! slot (ADDRS), one byte per ignored drop reason (IGNORED). Arrays, because an array lookup
//! is a few instructions the verifier inlines where a hash lookup costs tens of nanoseconds,
//! and these run for every packet and every routing lookup of the host. Only the entries
//! that are set are written (the maps start zeroed).
use std::{collections::BTreeMap, net::IpAddr};

use tracer_common::{ADDR_WORDS, AddrPort, IGNORED_LEN, addr_bytes, addr_slot, port};

/// The arrays' set entries, by index.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub ports: BTreeMap<u32, u8>,
    pub addr_words: BTreeMap<u32, u64>,
}

impl Filter {
    /// `ports` watched on every address, `addr_ports` on one address each; `addrs` the
    /// addresses the routing hooks keep (containers and the namespace's own).
    pub fn new(ports: &[u16], addr_ports: &[AddrPort], addrs: &[[u8; 16]]) -> Self {
        let mut f = Filter::default();
        for p in ports.iter().filter(|p| **p != 0) {
            *f.ports.entry(*p as u32).or_default() |= port::ANY;
        }
        for pair in addr_ports.iter().filter(|p| p.port != 0) {
            *f.ports.entry(pair.port as u32).or_default() |= port::ADDR;
        }
        for addr in addrs {
            let slot = addr_slot(addr);
            debug_assert!(slot / 64 < ADDR_WORDS);
            *f.addr_words.entry(slot / 64).or_default() |= 1u64 << (slot % 64);
        }
        f
    }

    /// The addresses the routing hooks keep: every watched pair's address and `local`.
    pub fn route_addrs(addr_ports: &[AddrPort], local: &[IpAddr]) -> Vec<[u8; 16]> {
        let mut out: Vec<[u8; 16]> = addr_ports.iter().map(|p| p.addr).collect();
        out.extend(local.iter().map(|ip| addr_bytes(*ip)));
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// IGNORED's set entries; a reason past IGNORED_LEN cannot be ignored in the kernel (the
/// caller says so).
pub fn ignored(reasons: &[u32]) -> (Vec<u32>, Vec<u32>) {
    reasons.iter().partition(|r| **r < IGNORED_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{AF_INET, AF_INET6};

    fn pair(ip: &str, p: u16) -> AddrPort {
        let ip: IpAddr = ip.parse().unwrap();
        AddrPort {
            addr: addr_bytes(ip),
            family: if ip.is_ipv4() { AF_INET } else { AF_INET6 },
            _pad: 0,
            port: p,
        }
    }

    #[test]
    fn a_port_watched_everywhere_and_on_one_address_has_both_bits() {
        let f = Filter::new(
            &[5000, 0],
            &[pair("172.17.0.2", 5000), pair("::1", 80)],
            &[],
        );
        assert_eq!(f.ports.get(&5000), Some(&(port::ANY | port::ADDR)));
        assert_eq!(f.ports.get(&80), Some(&port::ADDR));
        assert_eq!(f.ports.get(&0), None, "port 0 is never watched");
        assert_eq!(f.ports.len(), 2);
    }

    #[test]
    fn each_kept_address_sets_its_slot_and_nothing_else() {
        let local: Vec<IpAddr> = vec!["198.51.100.1".parse().unwrap()];
        let pairs = [pair("172.17.0.2", 5000), pair("172.17.0.2", 5001)];
        let addrs = Filter::route_addrs(&pairs, &local);
        assert_eq!(
            addrs.len(),
            2,
            "one container address, one local: {addrs:?}"
        );
        let f = Filter::new(&[], &pairs, &addrs);
        let bits: u32 = f.addr_words.values().map(|w| w.count_ones()).sum();
        assert_eq!(bits, 2);
        for a in &addrs {
            let slot = addr_slot(a);
            assert_ne!(f.addr_words[&(slot / 64)] & (1 << (slot % 64)), 0);
        }
        // Neighbours in the container subnet land in other slots.
        let next = addr_bytes("172.17.0.3".parse().unwrap());
        let slot = addr_slot(&next);
        assert_eq!(
            f.addr_words.get(&(slot / 64)).copied().unwrap_or(0) & (1 << (slot % 64)),
            0
        );
    }

    #[test]
    fn reasons_past_the_array_are_split_out() {
        let (kept, dropped) = ignored(&[2, 1023, 1024, u32::MAX]);
        assert_eq!(kept, vec![2, 1023]);
        assert_eq!(dropped, vec![1024, u32::MAX]);
    }
}
