//! Pairs a drop with what the kernel answered the same flow just before it: REJECT sends its
//! ICMP error (or RST) microseconds before the packet is freed, on the same CPU.
use std::{collections::VecDeque, net::IpAddr};

use super::facts::{Answer, DropFacts};

/// Answers older than this are not the answer to a drop.
pub const ANSWER_WINDOW_NS: u64 = 50_000_000;
/// How many recent answers are kept (a storm of rejects replaces them quickly; only the last
/// few microseconds matter).
const KEPT: usize = 256;

pub type Flow = (IpAddr, u16, IpAddr, u16);

/// The kernel's last KEPT answers, in order, and the newest of each flow among them: a
/// storm's drop finds its answer in one lookup.
#[derive(Default)]
pub struct Answers {
    recent: VecDeque<(Flow, u64)>,
    newest: foldhash::HashMap<Flow, (u64, Answer)>,
}

impl Answers {
    pub fn remember(&mut self, flow: Flow, ktime_ns: u64, answer: Answer) {
        if self.recent.len() >= KEPT
            && let Some((old, at)) = self.recent.pop_front()
            && self.newest.get(&old).is_some_and(|(t, _)| *t == at)
        {
            self.newest.remove(&old);
        }
        self.recent.push_back((flow, ktime_ns));
        self.newest.insert(flow, (ktime_ns, answer));
    }

    /// The newest answer to this drop's flow within the window before it.
    pub fn to_drop(&self, d: &DropFacts, ktime_ns: u64) -> Option<Answer> {
        self.to_flow(&(d.src, d.sport, d.dst, d.dport), ktime_ns)
    }

    pub fn to_flow(&self, flow: &Flow, ktime_ns: u64) -> Option<Answer> {
        self.newest
            .get(flow)
            .filter(|(at, _)| ktime_ns.saturating_sub(*at) < ANSWER_WINDOW_NS)
            .map(|(_, a)| *a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drop_of(sport: u16) -> DropFacts {
        DropFacts {
            reason: "NETFILTER_DROP".into(),
            inferred: None,
            function: None,
            location: "nf_hook_slow+0x9c".into(),
            ipv6: false,
            proto: "tcp".into(),
            src: "198.51.100.2".parse().unwrap(),
            sport,
            dst: "198.51.100.1".parse().unwrap(),
            dport: 5000,
            ifname: "eth0".into(),
            dnat: None,
            orig_dst: None,
            orig_dport: None,
            answered: None,
            nf_hook: None,
            traced: None,
            route: None,
            tcp_flags: 0x02,
            len: 60,
            routing_answer: None,
        }
    }

    fn flow(sport: u16) -> Flow {
        let d = drop_of(sport);
        (d.src, d.sport, d.dst, d.dport)
    }

    #[test]
    fn the_newest_answer_to_the_same_flow_within_the_window_is_the_one() {
        let mut a = Answers::default();
        let t = 10 * ANSWER_WINDOW_NS;
        a.remember(flow(40000), t - 2 * ANSWER_WINDOW_NS, Answer::Rst);
        a.remember(flow(40001), t - 10, Answer::Rst);
        assert_eq!(a.to_drop(&drop_of(40000), t), None, "too old");
        a.remember(flow(40000), t - 1000, Answer::icmp(false, 3, 13));
        a.remember(flow(40000), t - 500, Answer::icmp(false, 3, 10));
        assert_eq!(
            a.to_drop(&drop_of(40000), t),
            Some(Answer::icmp(false, 3, 10))
        );
        assert_eq!(a.to_drop(&drop_of(40002), t), None, "another flow");
    }

    #[test]
    fn only_the_last_answers_are_kept() {
        let mut a = Answers::default();
        for i in 0..(KEPT as u16 + 10) {
            a.remember(flow(i), 1, Answer::Rst);
        }
        assert_eq!(a.recent.len(), KEPT);
        assert_eq!(a.to_drop(&drop_of(0), 2), None, "the oldest were let go");
        assert_eq!(a.to_drop(&drop_of(KEPT as u16 + 9), 2), Some(Answer::Rst));
    }
}
