//! The namespace's connection-tracking table: how full it is (the `nf_conntrack_*` sysctls)
//! and what conntrack itself refused (`conntrack -S`, the kernel's per-CPU statistics of the
//! namespace). A full table drops new connections in PRE_ROUTING/OUTPUT before any rule sees
//! them, and no rule's counter moves: these numbers are the only evidence.
use serde::Serialize;

use super::Sysctls;

/// The sysctls read for it (under /proc/sys/net/netfilter/). `count` and `buckets` are the
/// namespace's own; `max` is one limit for the whole host, writable only in the initial
/// namespace, compared against each namespace's own count.
pub const SYSCTLS: [&str; 5] = [
    "nf_conntrack_count",
    "nf_conntrack_max",
    "nf_conntrack_buckets",
    "nf_conntrack_tcp_be_liberal",
    "nf_conntrack_tcp_loose",
];

/// `conntrack -S`, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// New entries refused (the table full and nothing to evict, or an insert that failed).
    pub drop: u64,
    /// Entries evicted to make room for a new one.
    pub early_drop: u64,
    pub insert_failed: u64,
    /// Packets conntrack could not place in a flow (INVALID).
    pub invalid: u64,
}

/// Parses `conntrack -S`: one line per CPU, `cpu=0 found=0 invalid=3 … drop=5 early_drop=0 …`.
/// Unknown fields are ignored; None when no line has a `cpu=` field (not this tool's output).
pub fn parse_stats(text: &str) -> Option<Stats> {
    let mut stats = Stats::default();
    let mut cpus = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace().filter_map(|f| f.split_once('='));
        if !matches!(fields.next(), Some(("cpu", _))) {
            continue;
        }
        cpus += 1;
        for (key, value) in fields {
            let Ok(n) = value.parse::<u64>() else {
                continue;
            };
            let slot = match key {
                "drop" => &mut stats.drop,
                "early_drop" => &mut stats.early_drop,
                "insert_failed" => &mut stats.insert_failed,
                "invalid" => &mut stats.invalid,
                _ => continue,
            };
            *slot = slot.saturating_add(n);
        }
    }
    (cpus > 0).then_some(stats)
}

/// The table's fill, from the snapshot's sysctls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fill {
    pub count: u64,
    pub max: u64,
    pub buckets: Option<u64>,
}

impl Fill {
    pub fn of(sysctls: &Sysctls) -> Option<Fill> {
        let num = |k: &str| {
            sysctls
                .get(&format!("net.netfilter.{k}"))?
                .trim()
                .parse()
                .ok()
        };
        Some(Fill {
            count: num("nf_conntrack_count")?,
            max: num("nf_conntrack_max")?,
            buckets: num("nf_conntrack_buckets"),
        })
    }

    /// At the limit: the kernel refuses a new entry once count reaches max (and none can be
    /// evicted). A margin of 1/64 covers entries that expired between the drop and the read.
    pub fn full(&self) -> bool {
        self.max > 0 && self.count + self.max / 64 >= self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ip netns exec dtlab-… conntrack -S` in the lab's host namespace after its table was
    /// filled to nf_conntrack_max and a client's SYNs were refused (tests/conntrack.rs makes
    /// that state; conntrack-tools 1.4.7, Linux 6.18).
    const FULL: &str = include_str!("testdata/conntrack-S-table-full.txt");

    #[test]
    fn real_statistics_are_summed_over_cpus() {
        let s = parse_stats(FULL).expect("conntrack -S output");
        assert!(s.drop > 0, "{s:?}");
        let per_cpu_drops: u64 = FULL
            .lines()
            .filter_map(|l| l.split_whitespace().find_map(|f| f.strip_prefix("drop=")))
            .map(|n| n.parse::<u64>().unwrap())
            .sum();
        assert_eq!(s.drop, per_cpu_drops);
    }

    #[test]
    fn other_text_is_not_statistics() {
        assert_eq!(parse_stats(""), None);
        assert_eq!(
            parse_stats("conntrack v1.4.7 (conntrack-tools): Operation failed"),
            None
        );
        let s = parse_stats("cpu=0 drop=x early_drop=2 new_field=9\n").unwrap();
        assert_eq!((s.drop, s.early_drop), (0, 2));
    }

    #[test]
    fn full_means_at_the_limit() {
        let mut sysctls = Sysctls::default();
        sysctls.set("net.netfilter.nf_conntrack_count", "128");
        sysctls.set("net.netfilter.nf_conntrack_max", "128");
        assert!(Fill::of(&sysctls).unwrap().full());
        sysctls.set("net.netfilter.nf_conntrack_count", "20");
        assert!(!Fill::of(&sysctls).unwrap().full());
        sysctls.set("net.netfilter.nf_conntrack_max", "0");
        assert!(!Fill::of(&sysctls).unwrap().full(), "0 is no limit");
    }
}
