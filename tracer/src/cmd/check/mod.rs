//! `droptrace check`: a static preflight that needs no eBPF. It reads the namespace's
//! forwarding sysctls and rulesets, the published ports and who listens on them, and reports
//! what would drop or reject traffic to each port, with the same cause names and fixes as
//! verdicts. Exit status 0 when healthy, 1 when something is found.
mod paths;

use std::collections::BTreeSet;

use serde::Serialize;

use crate::{
    attribute::{
        Cause, routes,
        rules::{self, Missing},
    },
    discover::PublishedPort,
    observe::{
        facts::Hook,
        state::{RuleRef, Snapshot, conntrack::Fill},
    },
    report::words,
};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Same names as verdicts: forwarding_disabled, missing_chain, firewall_reject, firewall_drop.
    pub cause: &'static str,
    pub port: Option<u16>,
    pub container: Option<String>,
    pub what: String,
    pub fix: String,
    /// How to make the fix stay, when droptrace knows (the same words as a verdict's).
    pub fix_persistent: Option<String>,
    /// The recorded change behind the finding, from the recorder's journal (with its age).
    pub culprit: Option<crate::observe::changes::ChangeRecord>,
    /// The finding, typed.
    #[serde(skip)]
    pub detail: Detail,
}

impl Detail {
    /// The verdict's diagnosis this finding stands for, to find its culprit by the same rule.
    pub fn why(&self) -> crate::attribute::Why {
        use crate::attribute::{Died, Why};
        match self {
            Detail::ForwardingOff { sysctl } => Why::ForwardingDisabled {
                sysctl: sysctl.clone(),
                still_off: true,
            },
            Detail::Untranslated(missing) => Why::MissingChain {
                missing: missing.clone(),
                died: Died::NoListener,
            },
            Detail::RouteLost { dst, bridge } => Why::RouteLost {
                dst: *dst,
                bridge: bridge.clone(),
                via: None,
            },
            Detail::RaIgnored { uplinks } => Why::RaIgnored {
                dst: std::net::Ipv6Addr::UNSPECIFIED.into(),
                uplinks: uplinks.clone(),
                listed: Vec::new(),
            },
            Detail::MtuBlackHole {
                uplink,
                bridge,
                rule,
            } => Why::PathMtu {
                len: 0,
                in_dev: (bridge.0.clone(), Some(bridge.1)),
                out_dev: Some((uplink.0.clone(), Some(uplink.1))),
                icmp_sent: false,
                icmp_blocked: Some((rule.clone(), None)),
            },
            Detail::BridgeNetfilterOff { bridge, setting } => Why::BridgeNetfilterOff {
                bridge: bridge.clone(),
                setting: setting.clone(),
            },
            Detail::ConntrackFull(fill) => Why::ConntrackFull {
                fill: *fill,
                stats: None,
                refused_since_start: None,
            },
            Detail::Blocked { hook, rule } => Why::Firewall {
                hook: *hook,
                blamed: None,
                reject: rule.verdict.eq_ignore_ascii_case("reject"),
                forwarding_also_off: false,
            },
        }
    }
}

/// What a finding found, with its data.
#[derive(Clone, Debug, PartialEq)]
pub enum Detail {
    /// This forwarding sysctl is 0.
    ForwardingOff { sysctl: String },
    /// The port's DNAT is missing, as a verdict would say.
    Untranslated(Missing),
    /// This rule (or policy) on `hook` stops the port's traffic.
    Blocked { hook: Hook, rule: RuleRef },
    /// The conntrack table is at its limit: every new connection is dropped.
    ConntrackFull(Fill),
    /// No interface holds the container address `dst` any more; it belongs on `bridge`.
    RouteLost {
        dst: std::net::IpAddr,
        bridge: routes::Bridge,
    },
    /// No IPv6 default route while these uplinks forward and ignore router advertisements.
    RaIgnored { uplinks: Vec<String> },
    /// `uplink`'s MTU is below `bridge`'s and `rule` drops the ICMP error that would say so.
    MtuBlackHole {
        uplink: (String, u32),
        bridge: (String, u32),
        rule: RuleRef,
    },
    /// Containers on `bridge` reach the port through its DNAT while bridged frames skip
    /// iptables (`setting` None: br_netfilter not loaded).
    BridgeNetfilterOff {
        bridge: String,
        setting: Option<String>,
    },
}

/// What `check` knows besides the ruleset.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// Host ports a docker-proxy process listens on in the namespace.
    pub proxy_ports: BTreeSet<u16>,
    /// Host ports Podman's conmon holds with a listening socket in the namespace.
    pub conmon_ports: BTreeSet<u16>,
    /// A firewalld process runs in the namespace (or its nftables table exists).
    pub firewalld: bool,
    /// Prefix to run commands in the namespace (`ip netns exec NAME `).
    pub exec_prefix: String,
    /// The ports come from a rootless engine: no DNAT, no forwarding to check.
    pub rootless: bool,
}

pub(super) fn finding(
    cause: Cause,
    p: Option<&PublishedPort>,
    what: String,
    detail: Detail,
) -> Finding {
    Finding {
        kind: "finding",
        cause: cause.name(),
        port: p.map(|p| p.host_port),
        container: p.and_then(|p| p.container.clone()),
        what,
        fix: String::new(),
        fix_persistent: None,
        culprit: None,
        detail,
    }
}

/// Forwarding sysctls that are off for the families the published ports are DNATed in
/// (a container's address says which; unknown means IPv4, Docker's default), by the same rule
/// and with the same fix as a `forwarding_disabled` verdict.
fn forwarding_findings(snap: &Snapshot, published: &[PublishedPort], prefix: &str) -> Vec<Finding> {
    let families: BTreeSet<bool> = published
        .iter()
        .map(|p| p.container_ip.is_some_and(|ip| ip.is_ipv6()))
        .collect();
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for ipv6 in families {
        for iface in snap.interfaces.iter().filter(|i| *i != "lo") {
            let Some(key) = rules::forwarding_off(&snap.sysctls, ipv6, iface) else {
                continue;
            };
            if !seen.insert(key.clone()) {
                continue;
            }
            let global = rules::forwarding_keys(ipv6, iface).0 == key;
            let what = if global {
                format!(
                    "{key} = 0: traffic DNATed to containers cannot be forwarded; remote clients time out (the host itself still reaches the ports)"
                )
            } else {
                format!("{key} = 0: traffic arriving on {iface} for a container is not forwarded")
            };
            let (fix, persist) = words::sysctl_fix(prefix, &key, "1");
            let detail = Detail::ForwardingOff {
                sysctl: key.clone(),
            };
            out.push(Finding {
                fix,
                fix_persistent: Some(persist),
                ..finding(Cause::ForwardingDisabled, None, what, detail)
            });
        }
    }
    out
}

/// The conntrack table at its limit: new connections to every port are dropped, with the
/// same words and fix as a `conntrack_full` verdict.
fn conntrack_finding(snap: &Snapshot) -> Option<Finding> {
    let fill = Fill::of(&snap.sysctls).filter(Fill::full)?;
    let refused = snap
        .conntrack
        .map(|s| format!("; conntrack -S counts {} refused entries (drop)", s.drop))
        .unwrap_or_default();
    let what = format!(
        "the conntrack table is full: nf_conntrack_count = {} of nf_conntrack_max = {} (one limit for the whole host){refused}; conntrack drops the first packet of every new connection before any rule sees it",
        fill.count, fill.max
    );
    let (fix, keep) = words::conntrack_fix(fill.max);
    Some(Finding {
        fix,
        fix_persistent: Some(keep),
        ..finding(
            Cause::ConntrackFull,
            None,
            what,
            Detail::ConntrackFull(fill),
        )
    })
}

/// A published port that is not translated, by the verdict's rule and in its words.
fn untranslated_finding(snap: &Snapshot, p: &PublishedPort, facts: &Facts) -> Option<Finding> {
    let port = p.host_port;
    let missing = rules::untranslated(snap, port)?;
    let mut what = format!(
        "port {port}/{} is published but not translated: {}",
        p.proto,
        words::missing(&missing, port, &p.proto)
    );
    if facts.firewalld && !snap.nat_chain_exists("DOCKER") {
        // Measured with Debian's own engines (cargo xtask vm --distro): firewalld 0.9.3 and
        // 1.3.3 flush dockerd's rules when they start, restart or reload after it; 2.3.1
        // leaves them; a dockerd that found firewalld on the bus at its start restores them.
        what.push_str("; firewalld runs here: firewalld 0.9 and 1.x remove the engine's nat rules whenever they start, restart or reload after the engine (2.3 leaves them; a dockerd that found firewalld when it started restores them); journalctl -u firewalld shows when it last did");
    }
    if facts.proxy_ports.contains(&port) {
        what.push_str(&format!(
            "; docker-proxy still answers on port {port}, so clients connect through it (losing their source address) until something in INPUT blocks the port"
        ));
    }
    if facts.conmon_ports.contains(&port) {
        what.push_str(&format!(
            "; conmon, which holds port {port} for Podman, still listens on it: clients connect, then wait for an answer that never comes (nothing is dropped)"
        ));
    }
    let (fix, keep) = words::missing_chain_fix(p.engine);
    Some(Finding {
        fix,
        fix_persistent: Some(keep),
        ..finding(
            Cause::MissingChain,
            Some(p),
            what,
            Detail::Untranslated(missing),
        )
    })
}

/// The port a published port's DNAT translates it to (the container's), None when no DNAT
/// translates it.
fn translated_port(snap: &Snapshot, p: &PublishedPort) -> Option<u16> {
    let dnats = snap.dnats_for(p.host_port);
    let first = dnats.first()?;
    Some(
        first
            .to
            .and_then(|(_, port)| port)
            .or(p.container_port)
            .unwrap_or(p.host_port),
    )
}

/// The checks, as a pure function of the state.
pub fn check(snap: &Snapshot, published: &[PublishedPort], facts: &Facts) -> Vec<Finding> {
    // A rootless engine's forwarder receives its ports on the host's input path: only what
    // blocks that path applies.
    let mut out = match facts.rootless {
        true => Vec::new(),
        false => forwarding_findings(snap, published, &facts.exec_prefix),
    };
    out.extend(conntrack_finding(snap));
    if !facts.rootless {
        out.extend(paths::ra_finding(snap, published, facts));
        out.extend(paths::mtu_finding(snap, facts));
    }
    for p in published {
        let port = p.host_port;
        if !facts.rootless {
            out.extend(untranslated_finding(snap, p, facts));
            out.extend(paths::route_finding(snap, p, facts));
            out.extend(paths::bridge_netfilter_finding(snap, p, facts));
        }
        let (hook, blockers) = rules::path_blockers(snap, port, translated_port(snap, p));
        for rule in blockers {
            if let Some(iso) = rules::isolation(&rule) {
                let what = format!(
                    "traffic to port {port} in {} meets Docker's own isolation rule {} (it drops by design what the engine does not publish)",
                    hook.name(),
                    rule.text
                );
                let ctr_port = translated_port(snap, p).unwrap_or(port);
                let host = snap
                    .addrs
                    .iter()
                    .find(|a| a.addr.is_ipv4() && !a.addr.is_loopback());
                let (fix, keep) = words::isolation_fix(&iso, host.map(|a| a.addr), port, ctr_port);
                out.push(Finding {
                    fix,
                    fix_persistent: Some(keep),
                    ..finding(
                        Cause::EngineIsolation,
                        Some(p),
                        what,
                        Detail::Blocked { hook, rule },
                    )
                });
                continue;
            }
            let cause = if rule.verdict == "REJECT" {
                Cause::FirewallReject
            } else {
                Cause::FirewallDrop
            };
            let mut what = format!(
                "traffic to port {port} in {} meets {}",
                hook.name(),
                rule.text
            );
            if let Some(engine) = rules::hidden_from(snap, &rule) {
                what.push_str(&format!(
                    "; it is in another iptables backend than the engine's rules ({engine}): `{engine} -L` does not list it"
                ));
            }
            let (fix, keep) = words::firewall_fix(&rule, &facts.exec_prefix, &p.proto, port);
            out.push(Finding {
                fix,
                fix_persistent: Some(keep),
                ..finding(cause, Some(p), what, Detail::Blocked { hook, rule })
            });
        }
    }
    out
}

/// The pids of processes named `comm` in network namespace `netns_inode`, from /proc.
fn processes_named(comm: &str, netns_inode: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if name.trim() != comm {
            continue;
        }
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .and_then(|l| {
                l.to_string_lossy()
                    .trim_start_matches("net:[")
                    .trim_end_matches(']')
                    .parse::<u32>()
                    .ok()
            });
        if ns == Some(netns_inode) {
            out.push(pid);
        }
    }
    out
}

/// Host ports a `docker-proxy` in network namespace `netns_inode` listens on, from /proc.
pub fn docker_proxy_ports(netns_inode: u32) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for pid in processes_named("docker-proxy", netns_inode) {
        let args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = args
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if let Some(i) = args.iter().position(|a| a == "-host-port")
            && let Some(port) = args.get(i + 1).and_then(|p| p.parse().ok())
        {
            ports.insert(port);
        }
    }
    ports
}

/// TCP ports a `conmon` in network namespace `netns_inode` listens on: rootful Podman holds
/// each published port open with a listening socket in conmon (measured with 4.3.1 and
/// 5.4.2), which accepts connections and never answers them once the DNAT is gone.
pub fn conmon_ports(netns_inode: u32) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for pid in processes_named("conmon", netns_inode) {
        let sockets = crate::discover::socket_inodes(&pid);
        for table in ["tcp", "tcp6"] {
            let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}"));
            ports.extend(
                listening(&text.unwrap_or_default())
                    .filter(|(_, inode)| sockets.contains(inode))
                    .map(|(port, _)| port),
            );
        }
    }
    ports
}

/// (local port, socket inode) of each LISTEN socket in a /proc/net/tcp table.
fn listening(table: &str) -> impl Iterator<Item = (u16, u64)> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
        if *state != "0A" {
            return None;
        }
        let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
        Some((port, inode.parse().ok()?))
    })
}

/// Whether firewalld runs in (or has written its table into) the namespace.
pub fn firewalld_present(snap: &Snapshot, netns_inode: u32) -> bool {
    if snap.nft.chains.iter().any(|c| c.table == "firewalld") {
        return true;
    }
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten().any(|e| {
                let pid = e.file_name().to_string_lossy().into_owned();
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let is_fw = String::from_utf8_lossy(&cmd).contains("firewalld");
                let ns = std::fs::read_link(format!("/proc/{pid}/ns/net"))
                    .map(|l| l.to_string_lossy().contains(&format!("[{netns_inode}]")))
                    .unwrap_or(false);
                is_fw && ns
            })
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::state::{Sysctls, iptables};

    const DOCKER: &str =
        include_str!("../../observe/state/testdata/iptables-legacy-save-docker.txt");

    fn published() -> Vec<PublishedPort> {
        vec![PublishedPort::docker_web()]
    }

    fn snap(rules: &str, forward: &str) -> Snapshot {
        let mut sysctls = Sysctls::default();
        sysctls.set("net.ipv4.ip_forward", forward);
        Snapshot {
            sysctls,
            interfaces: vec!["lo".into(), "eth0".into()],
            iptables: vec![iptables::parse("iptables-legacy", rules)],
            ..Snapshot::default()
        }
    }

    #[test]
    fn healthy_docker_host_has_no_finding() {
        assert!(check(&snap(DOCKER, "1"), &published(), &Facts::default()).is_empty());
    }

    #[test]
    fn forwarding_off_is_found() {
        let f = check(&snap(DOCKER, "0"), &published(), &Facts::default());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].cause, "forwarding_disabled");
    }

    #[test]
    fn missing_nat_chain_behind_docker_proxy_is_found_and_explained() {
        let filter_only = DOCKER.split("*nat").next().unwrap();
        let facts = Facts {
            proxy_ports: [5000].into(),
            ..Facts::default()
        };
        let f = check(&snap(filter_only, "1"), &published(), &facts);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].cause, "missing_chain");
        assert!(
            matches!(&f[0].detail, Detail::Untranslated(Missing::NatChainGone(h)) if h.port == 5000),
            "{:?}",
            f[0].detail
        );
        // The verdict's words: a drop on this host would be explained the same way.
        assert!(
            f[0].what.contains("the nat chain DOCKER is gone"),
            "{}",
            f[0].what
        );
        assert_eq!((f[0].fix.clone(), f[0].fix_persistent.clone()), {
            let (fix, keep) = words::missing_chain_fix(Some("docker"));
            (fix, Some(keep))
        });
        assert_eq!(f[0].container.as_deref(), Some("web"));
        assert!(
            f[0].what.contains("docker-proxy still answers"),
            "{}",
            f[0].what
        );
    }

    #[test]
    fn a_drop_rule_naming_the_port_is_found() {
        let rules = DOCKER.replace(
            "[0:0] -A DOCKER-USER -j RETURN",
            "[0:0] -A DOCKER-USER -p tcp -m tcp --dport 5000 -j DROP\n[0:0] -A DOCKER-USER -j RETURN",
        );
        let f = check(&snap(&rules, "1"), &published(), &Facts::default());
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].cause, "firewall_drop");
        let Detail::Blocked { hook, rule } = &f[0].detail else {
            panic!("{:?}", f[0].detail)
        };
        assert_eq!(*hook, Hook::Forward);
        assert!(rule.text.contains("DOCKER-USER rule 1") && !rule.policy);
        assert!(f[0].what.contains("DOCKER-USER rule 1"));
        assert_eq!(
            f[0].fix,
            format!(
                "remove or narrow the rule {}: iptables-legacy -t filter -D DOCKER-USER -p tcp -m tcp --dport 5000 -j DROP",
                rule.text
            )
        );
    }

    #[test]
    fn forwarding_findings_use_the_verdicts_rule_and_words_in_both_families() {
        let mut s = snap(DOCKER, "1");
        s.sysctls.set("net.ipv6.conf.all.forwarding", "0");
        // IPv4 containers only (Docker's default): IPv6 forwarding off is normal there.
        assert!(check(&s, &published(), &Facts::default()).is_empty());
        let mut v6 = published();
        v6[0].container_ip = Some("fd00::2".parse().unwrap());
        let facts = Facts {
            exec_prefix: "ip netns exec host ".into(),
            ..Facts::default()
        };
        let f = check(&s, &v6, &facts);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].cause, "forwarding_disabled");
        assert_eq!(
            f[0].detail,
            Detail::ForwardingOff {
                sysctl: "net.ipv6.conf.all.forwarding".into()
            }
        );
        let (fix, persist) =
            words::sysctl_fix("ip netns exec host ", "net.ipv6.conf.all.forwarding", "1");
        assert_eq!(
            (f[0].fix.clone(), f[0].fix_persistent.clone()),
            (fix, Some(persist))
        );
    }

    #[test]
    fn one_interfaces_forwarding_off_is_named_once() {
        let mut s = snap(DOCKER, "1");
        s.sysctls.set("net.ipv4.conf.eth0.forwarding", "0");
        let f = check(&s, &published(), &Facts::default());
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].fix, "sysctl -w net.ipv4.conf.eth0.forwarding=1");
    }
}
