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
    /// Its packet counter rose while the drops happened (the only one that did, or the only
    /// one of those that names the packet's port).
    CounterRose { from: u64, to: u64 },
    /// The one drop/reject rule on the hook that names the port.
    NamesPort,
    /// The REJECT rule on the hook, for a packet answered with an ICMP error or RST.
    TheReject,
    /// No rule's counter moved: the chain's policy.
    Policy,
    /// The REJECT rule on the hook, for a packet with no answer: the kernel's ICMP rate limit
    /// suppressed its error (the policy's counter did not move, so the policy did not drop
    /// it).
    RateLimited,
    /// A drop rule on the hook, not confirmed by counters.
    Unconfirmed,
    /// Several rules could have dropped it and nothing tells them apart: `rule` is one of
    /// them, `also` the others. Nothing is blamed; all are listed.
    Ambiguous { also: Vec<RuleRef> },
}

/// The rule or policy blamed for a drop, and how droptrace knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blamed {
    pub rule: RuleRef,
    pub how: How,
    /// The engine's iptables backend, when the rule sits in the other one: that backend's
    /// listing (`iptables -L` on most hosts) does not show it (moby/libnetwork#2331).
    pub hidden_from: Option<String>,
}

impl Blamed {
    pub fn rejects(&self) -> bool {
        self.rule.verdict == "REJECT"
    }

    pub fn is_ambiguous(&self) -> bool {
        matches!(self.how, How::Ambiguous { .. })
    }

    fn of(rule: &RuleRef, how: How) -> Option<Blamed> {
        Some(Blamed {
            rule: rule.clone(),
            how,
            hidden_from: None,
        })
    }

    /// One rule if there is one; several are ambiguous.
    fn one_of(rules: &[&RuleRef], how: How) -> Option<Blamed> {
        match rules {
            [] => None,
            [one] => Blamed::of(one, how),
            [first, rest @ ..] => Blamed::of(
                first,
                How::Ambiguous {
                    also: rest.iter().map(|r| (*r).clone()).collect(),
                },
            ),
        }
    }
}

/// Docker's own isolation rules (Docker 28+), which drop by design: they are never "a rule
/// to remove", and each has Docker's own remedy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// raw PREROUTING `-d CONTAINER ! -i BRIDGE -j DROP` (nftables: `raw-PREROUTING`, "DROP
    /// DIRECT ACCESS"): a packet routed straight to a container's address from outside its
    /// bridge (moby#49792).
    DirectAccess { bridge: String },
    /// The per-bridge final DROP in DOCKER `! -i BRIDGE -o BRIDGE -j DROP` (nftables:
    /// `filter-forward-in__BRIDGE`, "UNPUBLISHED PORT DROP"): a container port not published.
    Unpublished { bridge: String },
}

/// Whether `rule` is one of Docker's isolation rules, by its place and shape.
pub fn isolation(rule: &RuleRef) -> Option<Isolation> {
    if rule.policy || !rule.verdict.eq_ignore_ascii_case("drop") {
        return None;
    }
    let t = rule.text.as_str();
    // iptables: `iptables-nft raw PREROUTING rule 1: -d 172.17.0.2/32 ! -i docker0 -j DROP`,
    // `iptables-nft filter DOCKER rule 2: ! -i docker0 -o docker0 -j DROP`.
    if let Some((place, spec)) = t.split_once(": ") {
        let words: Vec<&str> = spec.split_whitespace().collect();
        match words.as_slice() {
            ["-d", _, "!", "-i", bridge, "-j", "DROP"] if place.contains(" raw PREROUTING ") => {
                return Some(Isolation::DirectAccess {
                    bridge: bridge.to_string(),
                });
            }
            ["!", "-i", a, "-o", b, "-j", "DROP"]
                if a == b && place.contains(" filter DOCKER ") =>
            {
                return Some(Isolation::Unpublished {
                    bridge: a.to_string(),
                });
            }
            _ => {}
        }
    }
    // nftables (Docker 29): table ip docker-bridges, chains raw-PREROUTING and
    // filter-forward-in__BRIDGE.
    if t.contains("docker-bridges") {
        if let Some(rest) = t.split("chain filter-forward-in__").nth(1) {
            let bridge = rest.split_whitespace().next().unwrap_or_default();
            return Some(Isolation::Unpublished {
                bridge: bridge.to_string(),
            });
        }
        if t.contains("chain raw-PREROUTING")
            && let Some(rest) = t.split("iifname != ").nth(1)
        {
            // Rendered `iifname != docker0` or, as nft lists it, `iifname != "docker0"`.
            let bridge = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .trim_matches('"');
            return Some(Isolation::DirectAccess {
                bridge: bridge.to_string(),
            });
        }
    }
    None
}

/// The rules on `hook` that may have dropped a packet of `d` for watched `port`: DNAT has
/// rewritten the destination port by the time FORWARD, LOCAL_IN and the later PREROUTING
/// chains see it, so rules naming either the published or the translated port count; a rule
/// "names the port" when it names either.
fn candidates(hook: Hook, port: u16, now: &Snapshot, d: &DropFacts) -> Vec<RuleRef> {
    let translated = (d.dnat == Some(true)).then_some(d.dport);
    blockers_for(now, hook, port, translated)
}

/// The blockers on `hook` for `port`, and for the port DNAT translated it to: one list, a
/// rule naming either "naming the port".
fn blockers_for(now: &Snapshot, hook: Hook, port: u16, translated: Option<u16>) -> Vec<RuleRef> {
    let mut all = now.blockers(hook, port);
    if let Some(to) = translated.filter(|to| *to != port) {
        for r in now.blockers(hook, to) {
            match all.iter_mut().find(|a| a.text == r.text) {
                Some(known) => known.names_port |= r.names_port,
                None => all.push(r),
            }
        }
    }
    all
}

/// The rule that dropped it: the traced one; else the one whose packet counter rose since
/// the start snapshot (of several, the one naming the port); else the one rule on that hook
/// naming the port; else a REJECT if an answer was sent; else the chain policy; else the one
/// candidate. Where several remain, they are all listed as ambiguous.
pub fn blame(
    hook: Hook,
    port: u16,
    now: &Snapshot,
    before: Option<&Snapshot>,
    d: &DropFacts,
) -> Option<Blamed> {
    blame_rule(hook, port, now, before, d).map(|mut b| {
        b.hidden_from = hidden_from(now, &b.rule);
        b
    })
}

/// `iptables-nft` of `iptables-nft ip filter FORWARD rule 1: …`: the backend holding a rule
/// (None for nftables rules and for the ones `--trace-rules` named).
fn backend_of(rule: &RuleRef) -> Option<&str> {
    let first = rule.text.split_whitespace().next()?;
    (first.starts_with("iptables-") || first.starts_with("ip6tables-")).then_some(first)
}

/// `iptables` of `iptables-nft`, `ip6tables` of `ip6tables-legacy`.
fn family(backend: &str) -> &str {
    backend.split('-').next().unwrap_or_default()
}

/// The backend of `family` (`iptables`, `ip6tables`) the engine writes: the one holding its
/// nat chain or a DNAT (Docker's `DOCKER`, netavark's `NETAVARK-*`).
pub fn engine_backend<'a>(now: &'a Snapshot, family_name: &str) -> Option<&'a str> {
    now.iptables
        .iter()
        .filter(|rs| family(&rs.backend) == family_name)
        .find(|rs| {
            rs.tables.iter().flat_map(|t| &t.chains).any(|c| {
                c.name == "DOCKER"
                    || c.name.starts_with("NETAVARK")
                    || c.rules.iter().any(|r| r.target.as_deref() == Some("DNAT"))
            })
        })
        .map(|rs| rs.backend.as_str())
}

/// The engine's backend, when `rule` lives in the other backend of the same family.
pub fn hidden_from(now: &Snapshot, rule: &RuleRef) -> Option<String> {
    let theirs = backend_of(rule)?;
    let engine = engine_backend(now, family(theirs))?;
    (engine != theirs).then(|| engine.to_string())
}

/// The OUTPUT rule that drops the ICMP errors path MTU discovery needs ("fragmentation
/// needed", IPv6's "packet too big"), with the packets it had counted at the start, if any.
/// A rule for all ICMP counts; one for another type does not.
pub fn icmp_too_big_blocker(
    now: &Snapshot,
    before: Option<&Snapshot>,
    ipv6: bool,
) -> Option<(RuleRef, Option<u64>)> {
    let (family, proto, types) = match ipv6 {
        false => ("iptables", "icmp", ["3/4", "3", "fragmentation-needed"]),
        true => ("ip6tables", "ipv6-icmp", ["2", "packet-too-big", "2/0"]),
    };
    let blocking = |snap: &Snapshot| -> Option<(String, u64, RuleRef)> {
        for rs in snap
            .iptables
            .iter()
            .filter(|rs| rs.backend.starts_with(family))
        {
            let Some(chain) = rs.table("filter").and_then(|t| t.chain("OUTPUT")) else {
                continue;
            };
            for r in &chain.rules {
                let drops = matches!(r.target.as_deref(), Some("DROP" | "REJECT"));
                let icmp = r.proto.as_deref() == Some(proto);
                let after =
                    |flag: &str| r.spec.split_whitespace().skip_while(|w| *w != flag).nth(1);
                let kind = after("--icmp-type").or_else(|| after("--icmpv6-type"));
                if drops && icmp && kind.is_none_or(|k| types.contains(&k)) {
                    let text = format!(
                        "{} {} filter OUTPUT rule {}: {}",
                        rs.backend,
                        if ipv6 { "ip6" } else { "ip" },
                        r.number,
                        r.spec
                    );
                    let rule = RuleRef {
                        text: text.clone(),
                        verdict: r.target.clone().unwrap_or_default(),
                        reject_with: r.reject_with.clone(),
                        packets: Some(r.packets),
                        names_port: false,
                        policy: false,
                    };
                    return Some((text, r.packets, rule));
                }
            }
        }
        None
    };
    let (text, _, rule) = blocking(now)?;
    let then = before
        .and_then(blocking)
        .filter(|(t, _, _)| *t == text)
        .map(|(_, n, _)| n);
    Some((rule, then))
}

/// The command that deletes `rule` exactly: `iptables-legacy -t filter -D FORWARD -p tcp …`
/// for an iptables rule, `nft delete rule inet t c handle 7` for an nftables one. None for a
/// policy or a rule whose text droptrace did not write.
pub fn delete_command(rule: &RuleRef) -> Option<String> {
    if rule.policy {
        return None;
    }
    let (place, spec) = rule.text.split_once(": ")?;
    let words: Vec<&str> = place.split_whitespace().collect();
    match words.as_slice() {
        [backend, _family, table, chain, "rule", _] if backend_of(rule).is_some() => {
            Some(format!("{backend} -t {table} -D {chain} {spec}"))
        }
        [
            "nftables",
            "table",
            family,
            table,
            "chain",
            chain,
            "handle",
            handle,
        ] => Some(format!(
            "nft delete rule {family} {table} {chain} handle {handle}"
        )),
        _ => None,
    }
}

fn blame_rule(
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
        return Blamed::of(&rule, How::Traced);
    }
    let all = candidates(hook, port, now, d);
    let old = before.map(|b| candidates(hook, port, b, d));
    if let Some(b) = old.as_ref().and_then(|old| counter_rose(&all, old)) {
        return Some(b);
    }
    // A policy whose counter was read before and has not moved did not drop it.
    let idle = |p: &RuleRef| {
        let then = old
            .iter()
            .flatten()
            .find(|o| o.text == p.text)
            .and_then(|o| o.packets);
        matches!((then, p.packets), (Some(a), Some(b)) if a == b)
    };
    let candidates = all;
    let wants_reject = d.answered.is_some();
    let naming: Vec<&RuleRef> = candidates
        .iter()
        .filter(|c| c.names_port && !c.policy)
        .filter(|c| !wants_reject || c.verdict == "REJECT")
        .collect();
    if !naming.is_empty() {
        return Blamed::one_of(&naming, How::NamesPort);
    }
    if wants_reject && let Some(rule) = candidates.iter().find(|c| c.verdict == "REJECT") {
        return Blamed::of(rule, How::TheReject);
    }
    if let Some(policy) = candidates.iter().find(|c| c.policy && !idle(c)) {
        return Blamed::of(policy, How::Policy);
    }
    // No answer, no policy that moved, a REJECT on the hook: the reject whose ICMP error the
    // kernel's rate limit suppressed (net.ipv4.icmp_ratelimit), not a second cause.
    if let Some(rule) = candidates.iter().find(|c| c.verdict == "REJECT") {
        return Blamed::of(rule, How::RateLimited);
    }
    let rules: Vec<&RuleRef> = candidates.iter().filter(|c| !c.policy).collect();
    Blamed::one_of(&rules, How::Unconfirmed)
}

/// The rule among `candidates` whose packet counter rose since `old`: the only one, or the
/// only one naming the port; ambiguous when several remain.
fn counter_rose(candidates: &[RuleRef], old: &[RuleRef]) -> Option<Blamed> {
    let moved: Vec<(&RuleRef, u64, u64)> = candidates
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
    let naming: Vec<_> = moved.iter().filter(|(c, _, _)| c.names_port).collect();
    let pick: Vec<&(&RuleRef, u64, u64)> = if naming.is_empty() {
        moved.iter().collect()
    } else {
        naming
    };
    match pick.as_slice() {
        [] => None,
        [(rule, from, to)] => Blamed::of(
            rule,
            How::CounterRose {
                from: *from,
                to: *to,
            },
        ),
        several => {
            let rules: Vec<&RuleRef> = several.iter().map(|(r, _, _)| *r).collect();
            Blamed::one_of(&rules, How::Unconfirmed)
        }
    }
}

/// The rules that name `port` and would stop its traffic on the path it takes, for `check`:
/// untranslated traffic meets INPUT (where an unconditional REJECT, firewalld's zone default,
/// stops it too); traffic translated to `to_port` meets FORWARD, whose rules see the
/// container's port (and where, without the engine's ACCEPT for the container, the chain's
/// DROP policy stops it).
pub fn path_blockers(now: &Snapshot, port: u16, to_port: Option<u16>) -> (Hook, Vec<RuleRef>) {
    let hook = if to_port.is_some() {
        Hook::Forward
    } else {
        Hook::LocalIn
    };
    let all = blockers_for(now, hook, port, to_port);
    let pick = |keep: &dyn Fn(&RuleRef) -> bool| -> Vec<RuleRef> {
        all.iter().filter(|b| keep(b)).cloned().collect()
    };
    let mut out = pick(&|b| b.names_port && !b.policy);
    if to_port.is_none() {
        out.extend(pick(&|b| {
            !b.names_port && !b.policy && b.verdict == "REJECT"
        }));
    } else if now.published_hints(port).is_empty() {
        // No ACCEPT for the port: Docker's per-bridge DROP for unpublished ports (28+) takes
        // it before the policy would.
        let isolating = pick(&|b| matches!(isolation(b), Some(Isolation::Unpublished { .. })));
        match isolating.is_empty() {
            true => out.extend(pick(&|b| b.policy)),
            false => out.extend(isolating),
        }
    }
    (hook, out)
}

#[cfg(test)]
mod delete_tests {
    use super::*;

    fn rule(text: &str, policy: bool) -> RuleRef {
        RuleRef {
            text: text.into(),
            verdict: "DROP".into(),
            reject_with: None,
            packets: None,
            names_port: true,
            policy,
        }
    }

    #[test]
    fn the_exact_delete_command_of_each_kind_of_rule() {
        let ipt = rule(
            "iptables-legacy ip filter FORWARD rule 1: -p tcp -m tcp --dport 5000 -j DROP",
            false,
        );
        assert_eq!(
            delete_command(&ipt).as_deref(),
            Some("iptables-legacy -t filter -D FORWARD -p tcp -m tcp --dport 5000 -j DROP")
        );
        let nft = rule(
            "nftables table inet blocker chain forward_block handle 3: tcp dport 5000 counter drop",
            false,
        );
        assert_eq!(
            delete_command(&nft).as_deref(),
            Some("nft delete rule inet blocker forward_block handle 3")
        );
        let policy = rule("iptables-nft ip filter FORWARD policy DROP", true);
        assert_eq!(delete_command(&policy), None);
    }
}
