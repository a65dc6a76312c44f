//! The rules that decide a cause from the namespace's state, shared by the engine (one drop)
//! and by `check` (no drop yet): which forwarding sysctl is off, why a published port is not
//! translated, which rule dropped a packet on a hook.
use crate::observe::{
    facts::{DropFacts, Hook},
    state::{Dnat, PublishedHint, RuleRef, Snapshot, Sysctls},
};

/// The forwarding sysctls that govern traffic of a family arriving on `ifname`: the
/// family's global switch and the interface's own.
pub fn forwarding_keys(ipv6: bool, ifname: &str) -> (String, String) {
    if ipv6 {
        (
            "net.ipv6.conf.all.forwarding".to_string(),
            format!("net.ipv6.conf.{ifname}.forwarding"),
        )
    } else {
        (
            "net.ipv4.ip_forward".to_string(),
            format!("net.ipv4.conf.{ifname}.forwarding"),
        )
    }
}

/// The forwarding sysctl that is off for such traffic, the global switch first.
pub fn forwarding_off(sysctls: &Sysctls, ipv6: bool, ifname: &str) -> Option<String> {
    let (global, iface) = forwarding_keys(ipv6, ifname);
    [global, iface]
        .into_iter()
        .find(|k| sysctls.flag(k) == Some(false))
}

/// Why the DNAT of a published port does not translate its traffic.
#[derive(Clone, Debug, PartialEq)]
pub enum Missing {
    /// The nat chain DOCKER is gone, while Docker's filter rule still expects the container.
    NatChainGone(PublishedHint),
    /// DOCKER exists but holds no DNAT for the port; Docker's filter rule still expects it.
    NoDnatInChain(PublishedHint),
    /// The engine says the port is published, and no nat table has a DNAT for it.
    NoDnat,
    /// The DNAT rule exists, but nat PREROUTING no longer jumps to its chain.
    Unreached(Dnat),
    /// The DNAT exists and is reached, yet did not apply: a conntrack entry made before it
    /// may pin the old path. Only a drop shows this; `check` cannot.
    DidNotApply(Dnat),
}

/// Why `port`'s traffic is not translated, from the state alone: None when a reachable DNAT
/// exists (it may still not have applied, which only a drop can tell).
pub fn untranslated(now: &Snapshot, port: u16) -> Option<Missing> {
    let dnats = now.dnats_for(port);
    if let Some(first) = dnats.first() {
        return dnats
            .iter()
            .all(|n| !n.reachable)
            .then(|| Missing::Unreached(first.clone()));
    }
    let hint = now.published_hints(port).into_iter().next();
    Some(match hint {
        Some(h) if !now.nat_chain_exists("DOCKER") => Missing::NatChainGone(h),
        Some(h) => Missing::NoDnatInChain(h),
        None => Missing::NoDnat,
    })
}

/// How the rule that dropped a packet was chosen, strongest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum How {
    /// `--trace-rules` followed this packet to it.
    Traced,
    /// Its packet counter rose while the drops happened.
    CounterRose { from: u64, to: u64 },
    /// The one drop/reject rule on the hook that names the port.
    NamesPort,
    /// The REJECT rule on the hook, for a packet answered with an ICMP error or RST.
    TheReject,
    /// No rule's counter moved: the chain's policy.
    Policy,
    /// A drop rule on the hook, not confirmed by counters.
    Unconfirmed,
}

/// The rule or policy blamed for a drop, and how droptrace knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blamed {
    pub rule: RuleRef,
    pub how: How,
}

impl Blamed {
    pub fn rejects(&self) -> bool {
        self.rule.verdict == "REJECT"
    }
}

/// The rule that dropped it: the traced one; else one whose packet counter rose since the
/// start snapshot; else the one rule on that hook naming the port; else a REJECT if an answer
/// was sent; else the chain policy; else any candidate.
pub fn blame(
    hook: Hook,
    port: u16,
    now: &Snapshot,
    before: Option<&Snapshot>,
    d: &DropFacts,
) -> Option<Blamed> {
    if let Some((text, policy)) = &d.traced {
        let reject = text.to_lowercase().contains("reject");
        let rule = RuleRef {
            text: format!("nftables {text}"),
            verdict: if reject { "REJECT" } else { "DROP" }.into(),
            reject_with: None,
            packets: None,
            names_port: true,
            policy: *policy,
        };
        return Some(Blamed {
            rule,
            how: How::Traced,
        });
    }
    let candidates = now.blockers(hook, port);
    let found = |rule: &RuleRef, how| {
        Some(Blamed {
            rule: rule.clone(),
            how,
        })
    };
    if let Some(b) = before.and_then(|before| counter_rose(&candidates, before, hook, port)) {
        return Some(b);
    }
    let wants_reject = d.answered.is_some();
    if let Some(rule) = candidates
        .iter()
        .filter(|c| c.names_port && !c.policy)
        .find(|c| !wants_reject || c.verdict == "REJECT")
    {
        return found(rule, How::NamesPort);
    }
    if wants_reject && let Some(rule) = candidates.iter().find(|c| c.verdict == "REJECT") {
        return found(rule, How::TheReject);
    }
    if let Some(policy) = candidates.iter().find(|c| c.policy) {
        return found(policy, How::Policy);
    }
    candidates.first().and_then(|c| found(c, How::Unconfirmed))
}

/// The rule among `candidates` whose packet counter rose since `before`, one naming the port
/// first.
fn counter_rose(
    candidates: &[RuleRef],
    before: &Snapshot,
    hook: Hook,
    port: u16,
) -> Option<Blamed> {
    let old = before.blockers(hook, port);
    let mut moved: Vec<(&RuleRef, u64, u64)> = candidates
        .iter()
        .filter(|c| !c.policy)
        .filter_map(|c| {
            let now_n = c.packets?;
            let then_n = old
                .iter()
                .find(|o| o.text == c.text)
                .and_then(|o| o.packets)
                .unwrap_or(0);
            (now_n > then_n).then_some((c, then_n, now_n))
        })
        .collect();
    moved.sort_by_key(|(c, _, _)| !c.names_port);
    moved.first().map(|(rule, from, to)| Blamed {
        rule: (*rule).clone(),
        how: How::CounterRose {
            from: *from,
            to: *to,
        },
    })
}

/// The rules that name `port` and would stop its traffic on the path it takes, for `check`:
/// untranslated traffic meets INPUT (where an unconditional REJECT, firewalld's zone default,
/// stops it too); translated traffic meets FORWARD (where, without Docker's ACCEPT for the
/// container, the chain's DROP policy stops it).
pub fn path_blockers(now: &Snapshot, port: u16, translated: bool) -> (Hook, Vec<RuleRef>) {
    let hook = if translated {
        Hook::Forward
    } else {
        Hook::LocalIn
    };
    let all = now.blockers(hook, port);
    let pick = |keep: &dyn Fn(&RuleRef) -> bool| -> Vec<RuleRef> {
        all.iter().filter(|b| keep(b)).cloned().collect()
    };
    let mut out = pick(&|b| b.names_port && !b.policy);
    if !translated {
        out.extend(pick(&|b| {
            !b.names_port && !b.policy && b.verdict == "REJECT"
        }));
    } else if now.published_hints(port).is_empty() {
        out.extend(pick(&|b| b.policy));
    }
    (hook, out)
}
