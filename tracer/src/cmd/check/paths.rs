//! The findings about the paths a published port's packets take: the route to the container,
//! the route back to IPv6 clients, the path MTU, and bridged replies. Each is the state a
//! verdict of the same cause rests on, in the verdict's words and with its fix.
use super::{Detail, Facts, Finding, finding};
use crate::{
    attribute::{self, BRIDGE_NF_IPTABLES, Cause, routes, rules},
    discover::PublishedPort,
    observe::state::{
        Snapshot,
        iptables::{Rule, Table},
    },
    report::words,
};

/// A published port whose container address no interface's subnet holds: the bridge lost its
/// address (and connected route), as a `route_lost` verdict would say.
pub(super) fn route_finding(snap: &Snapshot, p: &PublishedPort, facts: &Facts) -> Option<Finding> {
    let dst = snap
        .dnats_for(p.host_port)
        .into_iter()
        .find_map(|d| d.to.map(|(a, _)| a))
        .or(p.container_ip)
        .filter(|a| a.is_ipv4() && !snap.is_local(a))?;
    if snap.addrs.is_empty() || routes::connected(snap, &dst).is_some() {
        return None;
    }
    let bridge = routes::bridge_for(snap, &dst)?;
    let what = format!(
        "port {}/{} is DNATed to {dst}, but {} has no IPv4 address: its connected route is gone, so the kernel routes {dst} elsewhere or nowhere (a network manager that takes the bridge over does this)",
        p.host_port, p.proto, bridge.name
    );
    let (fix, keep) = words::route_fix(&facts.exec_prefix, &bridge, p.engine);
    Some(Finding {
        fix,
        fix_persistent: Some(keep),
        ..finding(
            Cause::RouteLost,
            Some(p),
            what,
            Detail::RouteLost { dst, bridge },
        )
    })
}

/// Ports published over IPv6 while the host has no IPv6 default route and its uplinks ignore
/// router advertisements (forwarding = 1, accept_ra = 1): replies to IPv6 clients beyond the
/// local network find no route, as a `route_lost` verdict would say. A static route, or one
/// an advertisement still renews, makes no finding.
pub(super) fn ra_finding(
    snap: &Snapshot,
    published: &[PublishedPort],
    facts: &Facts,
) -> Option<Finding> {
    let v6: Vec<String> = published
        .iter()
        .filter(|p| {
            p.container_ip.is_some_and(|a| a.is_ipv6())
                || snap
                    .dnats_for(p.host_port)
                    .iter()
                    .any(|d| d.to.is_some_and(|(a, _)| a.is_ipv6()))
        })
        .map(|p| format!("{}/{}", p.host_port, p.proto))
        .collect();
    let uplinks = attribute::ra_ignoring_uplinks(snap);
    let no_default = snap.ipv6_defaults.as_ref().is_some_and(Vec::is_empty);
    if v6.is_empty() || uplinks.is_empty() || !no_default {
        return None;
    }
    let what = format!(
        "port(s) {} are published over IPv6, but the host has no IPv6 default route: {} forward IPv6 with accept_ra = 1, so the kernel ignores their router advertisements (turning forwarding on removed the advertised route); replies to IPv6 clients beyond the local network find no route (docker/for-linux#844)",
        v6.join(", "),
        uplinks.join(", ")
    );
    let (fix, keep) = words::accept_ra_fix(&facts.exec_prefix, &uplinks);
    Some(Finding {
        fix,
        fix_persistent: Some(keep),
        ..finding(Cause::RouteLost, None, what, Detail::RaIgnored { uplinks })
    })
}

/// An uplink whose MTU is below the engine's bridge while OUTPUT drops the "fragmentation
/// needed" error: a path MTU black hole for every response larger than the uplink allows.
/// A smaller MTU alone is no finding: the kernel tells the sender, which adapts.
pub(super) fn mtu_finding(snap: &Snapshot, facts: &Facts) -> Option<Finding> {
    let (rule, _) = rules::icmp_too_big_blocker(snap, None, false)?;
    let is_uplink = |i: &str| i != "lo" && !routes::is_bridge(i) && !i.starts_with("veth");
    let bridge = snap
        .mtus
        .iter()
        .filter(|(i, _)| routes::is_bridge(i))
        .max_by_key(|(_, m)| **m)?;
    let uplink = snap
        .mtus
        .iter()
        .filter(|(i, m)| is_uplink(i) && *m < bridge.1)
        .min_by_key(|(_, m)| **m)?;
    let what = format!(
        "a path MTU black hole: {} has an MTU of {} while {} has {}, and {} drops the ICMP \"fragmentation needed\" that tells a container to send smaller packets: responses larger than {} bytes are dropped at ip_forward and clients hang after the first bytes",
        uplink.0, uplink.1, bridge.0, bridge.1, rule.text, uplink.1
    );
    let (fix, keep) = words::mtu_fix(&facts.exec_prefix, Some(*uplink.1), Some(&rule));
    let detail = Detail::MtuBlackHole {
        uplink: (uplink.0.clone(), *uplink.1),
        bridge: (bridge.0.clone(), *bridge.1),
        rule,
    };
    Some(Finding {
        fix,
        fix_persistent: Some(keep),
        ..finding(Cause::PathMtu, None, what, detail)
    })
}

/// A port whose DNAT also applies to packets from the container bridge (Docker without its
/// userland proxy: no `! -i docker0`), while bridged frames skip iptables: containers that
/// reach it through the host get replies that are never un-NATed.
pub(super) fn bridge_netfilter_finding(
    snap: &Snapshot,
    p: &PublishedPort,
    facts: &Facts,
) -> Option<Finding> {
    let setting = snap.sysctls.get(BRIDGE_NF_IPTABLES).map(str::to_string);
    if setting.as_deref() == Some("1") {
        return None;
    }
    let bridge = hairpin_bridge(snap, p.host_port)?;
    let state = match &setting {
        Some(v) => format!("net.bridge.bridge-nf-call-iptables = {v}"),
        None => "br_netfilter is not loaded".to_string(),
    };
    let what = format!(
        "port {}/{} is DNATed for containers on {bridge} too (its DNAT has no `! -i {bridge}`), but {state}: a container's connection to it through the host gets replies that cross {bridge} without conntrack, never un-NATed (moby#23358)",
        p.host_port, p.proto
    );
    let (fix, keep) = words::bridge_nf_fix(&facts.exec_prefix);
    Some(Finding {
        fix,
        fix_persistent: Some(keep),
        ..finding(
            Cause::BridgeNetfilterOff,
            Some(p),
            what,
            Detail::BridgeNetfilterOff { bridge, setting },
        )
    })
}

/// Whether the containers' own connections to the port are masqueraded before its DNAT, so
/// the replies come back through the host, not across the bridge: netavark's way (a rule
/// before the DNAT, `-s 10.88.0.0/16 … --dport P -j NETAVARK-HOSTPORT-SETMARK`, a chain
/// that marks, and a MASQUERADE on that mark). Docker's own hairpin MASQUERADE covers a
/// container reaching itself only.
fn masqueraded_hairpin(nat: &Table, before: &[Rule], dport: &str) -> bool {
    let marks = |chain: &str| {
        nat.chain(chain)
            .is_some_and(|c| c.rules.iter().any(|r| r.target.as_deref() == Some("MARK")))
    };
    let marked = before.iter().any(|r| {
        format!("{} ", r.spec).contains(dport)
            && r.spec.contains("-s ")
            && r.target.as_deref().is_some_and(marks)
    });
    let masq_on_mark = nat
        .chains
        .iter()
        .flat_map(|c| &c.rules)
        .any(|r| r.target.as_deref() == Some("MASQUERADE") && r.spec.contains("--mark"));
    marked && masq_on_mark
}

/// The bridge whose containers a DNAT of `port` also translates: an IPv4 nat rule for the port
/// with no `! -i` and no `-i BRIDGE -j RETURN` before it in its chain. The bridge is the one
/// holding the DNAT's destination.
fn hairpin_bridge(snap: &Snapshot, port: u16) -> Option<String> {
    let dport = format!("--dport {port} ");
    for rs in snap
        .iptables
        .iter()
        .filter(|rs| rs.backend.starts_with("iptables"))
    {
        let Some(nat) = rs.table("nat") else { continue };
        for chain in &nat.chains {
            for (i, rule) in chain.rules.iter().enumerate() {
                let spec = format!("{} ", rule.spec);
                let dnat = rule.target.as_deref() == Some("DNAT") && spec.contains(&dport);
                if !dnat || spec.contains("! -i ") {
                    continue;
                }
                let returned = chain.rules[..i]
                    .iter()
                    .any(|r| r.target.as_deref() == Some("RETURN") && r.spec.contains("-i "));
                if masqueraded_hairpin(nat, &chain.rules[..i], &dport) {
                    continue;
                }
                let to = snap
                    .dnats_for(port)
                    .into_iter()
                    .find_map(|d| d.to.map(|(a, _)| a));
                let bridge = to.and_then(|a| routes::connected(snap, &a).map(str::to_string));
                if !returned && let Some(b) = bridge.filter(|b| routes::is_bridge(b)) {
                    return Some(b);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::state::{IfAddr, iptables};

    fn snapshot(fixture: &str, bridge: &str, gateway: &str) -> Snapshot {
        Snapshot {
            iptables: vec![iptables::parse("iptables-nft", fixture)],
            addrs: vec![IfAddr {
                iface: bridge.into(),
                addr: gateway.parse().unwrap(),
                prefix: 16,
            }],
            ..Snapshot::default()
        }
    }

    #[test]
    fn netavarks_marked_hairpin_is_not_a_bridge_netfilter_problem() {
        // Real netavark 1.4 rules (testdata/README.md): its DNAT has no `! -i podman0`, but
        // the containers' own connections are marked and masqueraded first.
        let text = include_str!(
            "../../observe/state/testdata/netavark14-iptables-nft-save-forward-drop.txt"
        );
        let snap = snapshot(text, "podman0", "10.88.0.1");
        assert_eq!(hairpin_bridge(&snap, 5001), None);
        // The same DNAT without the marking rules is one.
        let unmarked: String = text
            .lines()
            .filter(|l| !l.contains("-j NETAVARK-HOSTPORT-SETMARK"))
            .map(|l| format!("{l}\n"))
            .collect();
        let snap = snapshot(&unmarked, "podman0", "10.88.0.1");
        assert_eq!(hairpin_bridge(&snap, 5001).as_deref(), Some("podman0"));
    }
}
