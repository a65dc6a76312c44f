//! Where a container's address should be routed, and whether it still is: the bridge that
//! carries it (the engine's own masquerade rule names the bridge and its subnet) and the
//! connected route its address gives. A network manager that takes the bridge over removes
//! both (moby#40217, systemd#28626); DNATed packets then leave by another interface or find
//! no route at all.
use std::net::IpAddr;

use crate::observe::state::{Snapshot, subnet_contains};

/// The bridge a container address belongs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bridge {
    pub name: String,
    /// The engine's subnet for it (`172.17.0.0/16`), when a rule names it.
    pub subnet: Option<(IpAddr, u8)>,
    /// Where droptrace learned it: `iptables-nft nat POSTROUTING rule 1` or `interface name`.
    pub source: String,
}

impl Bridge {
    /// The gateway address engines give a bridge: the subnet's first host (Docker, Podman).
    pub fn gateway(&self) -> Option<(IpAddr, u8)> {
        match self.subnet? {
            (IpAddr::V4(net), len) if len < 31 => {
                Some((IpAddr::V4((u32::from(net) + 1).into()), len))
            }
            _ => None,
        }
    }
}

/// The interface whose connected subnet holds `dst`, if any: the route the kernel would use.
pub fn connected<'a>(now: &'a Snapshot, dst: &IpAddr) -> Option<&'a str> {
    now.addrs
        .iter()
        .find(|a| a.covers(dst))
        .map(|a| a.iface.as_str())
}

pub use crate::discover::netns::is_bridge;

/// The bridge that carries container address `dst`: the engine's MASQUERADE rule for its
/// subnet (`-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE`, Docker's, in every release), else
/// the one bridge-like interface that has no IPv4 address left.
pub fn bridge_for(now: &Snapshot, dst: &IpAddr) -> Option<Bridge> {
    for rs in &now.iptables {
        let Some(chain) = rs.table("nat").and_then(|t| t.chain("POSTROUTING")) else {
            continue;
        };
        for rule in chain
            .rules
            .iter()
            .filter(|r| r.target.as_deref() == Some("MASQUERADE"))
        {
            // A leading "" so a flag at the start has a word before it, like one after `!`.
            let words: Vec<&str> = std::iter::once("")
                .chain(rule.spec.split_whitespace())
                .collect();
            let arg = |flag: &str, negated: bool| {
                words.windows(3).find_map(|w| match negated {
                    true => (w[0] == "!" && w[1] == flag).then_some(w[2]),
                    false => (w[1] == flag && w[0] != "!").then_some(w[2]),
                })
            };
            let subnet = arg("-s", false).and_then(parse_subnet);
            let (Some((net, len)), Some(name)) = (subnet, arg("-o", true)) else {
                continue;
            };
            if subnet_contains(net, len, dst) {
                return Some(Bridge {
                    name: name.to_string(),
                    subnet: Some((net, len)),
                    source: format!("{} nat POSTROUTING rule {}", rs.backend, rule.number),
                });
            }
        }
    }
    let bare: Vec<&String> = now
        .interfaces
        .iter()
        .filter(|i| is_bridge(i))
        .filter(|i| !now.addrs.iter().any(|a| &a.iface == *i && a.addr.is_ipv4()))
        .collect();
    match bare.as_slice() {
        [one] => Some(Bridge {
            name: one.to_string(),
            subnet: None,
            source: "interface name".into(),
        }),
        _ => None,
    }
}

fn parse_subnet(text: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = text.split_once('/').unwrap_or((text, "32"));
    Some((addr.parse().ok()?, len.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::state::{IfAddr, iptables};

    const DOCKER: &str = include_str!("../observe/state/testdata/iptables-legacy-save-docker.txt");

    fn snap(addrs: &[(&str, &str, u8)]) -> Snapshot {
        Snapshot {
            interfaces: vec!["lo".into(), "eth-ext".into(), "docker0".into()],
            addrs: addrs
                .iter()
                .map(|(i, a, p)| IfAddr {
                    iface: i.to_string(),
                    addr: a.parse().unwrap(),
                    prefix: *p,
                })
                .collect(),
            iptables: vec![iptables::parse("iptables-legacy", DOCKER)],
            ..Snapshot::default()
        }
    }

    #[test]
    fn dockers_masquerade_rule_names_the_bridge_and_its_subnet() {
        let s = snap(&[("eth-ext", "198.51.100.1", 24)]);
        let ctr: IpAddr = "172.17.0.2".parse().unwrap();
        let b = bridge_for(&s, &ctr).expect("the bridge");
        assert_eq!(b.name, "docker0");
        assert_eq!(b.gateway(), Some(("172.17.0.1".parse().unwrap(), 16)));
        assert!(b.source.contains("nat POSTROUTING rule"), "{}", b.source);
        assert_eq!(connected(&s, &ctr), None, "its connected route is gone");
        let healthy = snap(&[("docker0", "172.17.0.1", 16)]);
        assert_eq!(connected(&healthy, &ctr), Some("docker0"));
    }

    #[test]
    fn without_rules_the_one_bare_bridge_is_the_answer() {
        let mut s = snap(&[("eth-ext", "198.51.100.1", 24)]);
        s.iptables.clear();
        let b = bridge_for(&s, &"10.88.0.2".parse().unwrap()).unwrap();
        assert_eq!((b.name.as_str(), b.subnet), ("docker0", None));
        s.interfaces.push("br-1a2b".into());
        assert_eq!(
            bridge_for(&s, &"10.88.0.2".parse().unwrap()),
            None,
            "two: unknown which"
        );
    }
}
