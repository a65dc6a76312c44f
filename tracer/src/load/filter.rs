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
    /// ADDRS: the watched containers' addresses.
    pub addr_words: BTreeMap<u32, u64>,
    /// LOCAL_ADDRS: the namespace's own addresses.
    pub local_words: BTreeMap<u32, u64>,
}

impl Filter {
    /// `ports` watched on every address, `addr_ports` on one address each (the containers'
    /// among them); `local` the namespace's own addresses.
    pub fn new(ports: &[u16], addr_ports: &[AddrPort], local: &[IpAddr]) -> Self {
        let mut f = Filter::default();
        for p in ports.iter().filter(|p| **p != 0) {
            *f.ports.entry(*p as u32).or_default() |= port::ANY;
        }
        for pair in addr_ports.iter().filter(|p| p.port != 0) {
            *f.ports.entry(pair.port as u32).or_default() |= port::ADDR;
        }
        for pair in addr_ports {
            set(&mut f.addr_words, &pair.addr);
        }
        for ip in local {
            set(&mut f.local_words, &addr_bytes(*ip));
        }
        f
    }
}

/// Sets `addr`'s slot bit in a bitmap of u64 words.
fn set(words: &mut BTreeMap<u32, u64>, addr: &[u8; 16]) {
    let slot = addr_slot(addr);
    debug_assert!(slot / 64 < ADDR_WORDS);
    *words.entry(slot / 64).or_default() |= 1u64 << (slot % 64);
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
        let f = Filter::new(&[], &pairs, &local);
        let count = |w: &BTreeMap<u32, u64>| w.values().map(|w| w.count_ones()).sum::<u32>();
        assert_eq!(count(&f.addr_words), 1, "one container address: {f:?}");
        assert_eq!(count(&f.local_words), 1, "one local address: {f:?}");
        let has = |w: &BTreeMap<u32, u64>, a: &[u8; 16]| {
            let slot = addr_slot(a);
            w.get(&(slot / 64)).copied().unwrap_or(0) & (1 << (slot % 64)) != 0
        };
        assert!(has(&f.addr_words, &pairs[0].addr));
        assert!(has(&f.local_words, &addr_bytes(local[0])));
        assert!(!has(&f.addr_words, &addr_bytes(local[0])));
        // Neighbours in the container subnet land in other slots.
        assert!(!has(
            &f.addr_words,
            &addr_bytes("172.17.0.3".parse().unwrap())
        ));
    }

    #[test]
    fn reasons_past_the_array_are_split_out() {
        let (kept, dropped) = ignored(&[2, 1023, 1024, u32::MAX]);
        assert_eq!(kept, vec![2, 1023]);
        assert_eq!(dropped, vec![1024, u32::MAX]);
    }
}
