//! The state of the watched namespace that explains drops: forwarding sysctls, local
//! addresses, and the firewall rulesets (iptables-nft, iptables-legacy, native nftables),
//! read without changing anything. `capture` does the I/O; everything else here is pure.
pub mod conntrack;
pub mod iptables;
#[cfg(test)]
mod layouts;
pub mod nft;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use serde::Serialize;

use crate::{discover::netns::Netns, observe::facts::Hook};

/// Sysctls that decide whether a published port can be forwarded, keyed by dotted name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sysctls {
    pub values: BTreeMap<String, String>,
}

impl Sysctls {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// "1" → true, "0" → false (rp_filter 2 counts as on).
    pub fn flag(&self, key: &str) -> Option<bool> {
        self.get(key).map(|v| v.trim() != "0")
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.values.insert(key.to_string(), value.to_string());
    }
}

/// A read-only snapshot of one network namespace.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub sysctls: Sysctls,
    /// Interface names of the namespace.
    pub interfaces: Vec<String>,
    pub local_addrs: Vec<IpAddr>,
    /// The same addresses with their interface and prefix: the connected subnets.
    pub addrs: Vec<IfAddr>,
    /// Each interface's MTU.
    pub mtus: BTreeMap<String, u32>,
    /// Interface names by ifindex.
    pub ifnames: BTreeMap<u32, String>,
    /// The interfaces IPv6 default routes leave by (None: /proc/net/ipv6_route unread). An
    /// expired router-advertisement route stays listed until the kernel's next cleanup.
    pub ipv6_defaults: Option<Vec<String>>,
    /// One entry per iptables backend that holds rules (iptables-nft, iptables-legacy).
    pub iptables: Vec<iptables::Ruleset>,
    pub nft: nft::Ruleset,
    /// `conntrack -S` of the namespace (None: the tool or the module is absent).
    pub conntrack: Option<conntrack::Stats>,
    /// What could not be read, said once in the output (a missing binary, a parse error).
    pub problems: Vec<String>,
}

/// An address on an interface, `ip addr`'s `172.17.0.1/16 dev docker0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub iface: String,
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IfAddr {
    /// Whether `ip` lies in this address's connected subnet.
    pub fn covers(&self, ip: &IpAddr) -> bool {
        subnet_contains(self.addr, self.prefix, ip)
    }
}

/// Whether `ip` lies in `net/prefix` (same family only).
pub fn subnet_contains(net: IpAddr, prefix: u8, ip: &IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) if prefix <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(n) & mask == u32::from(*a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) if prefix <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(n) & mask == u128::from(*a) & mask
        }
        _ => false,
    }
}

/// A DNAT for a published port found in the ruleset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dnat {
    /// `iptables-nft nat DOCKER rule 2` / `table ip docker chain … handle 7`
    pub location: String,
    pub table: String,
    pub chain: String,
    pub to: Option<(IpAddr, Option<u16>)>,
    /// The chain holding it is reached from nat PREROUTING.
    pub reachable: bool,
    pub packets: Option<u64>,
}

/// A container the filter rules say the port is published to (Docker's `DOCKER` filter chain
/// accepts `-d CONTAINER --dport PORT`): proof that a DNAT *should* exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedHint {
    pub container: Ipv4Addr,
    pub port: u16,
    pub location: String,
}

/// Where a rule sits, for the `rule` field and human output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRef {
    /// `iptables-nft filter DOCKER-USER rule 1: -p tcp -m tcp --dport 5000 -j DROP`
    pub text: String,
    pub verdict: String,
    pub reject_with: Option<String>,
    pub packets: Option<u64>,
    /// The rule names the watched port explicitly.
    pub names_port: bool,
    /// A chain policy rather than a rule.
    pub policy: bool,
}

fn ipt_family(backend: &str) -> &'static str {
    if backend.starts_with("ip6") {
        "ip6"
    } else {
        "ip"
    }
}

impl Snapshot {
    pub fn is_local(&self, addr: &IpAddr) -> bool {
        self.local_addrs.contains(addr) || addr.is_loopback()
    }

    /// Every DNAT in the nat tables (and native nft) that may apply to TCP/UDP `port`.
    pub fn dnats_for(&self, port: u16) -> Vec<Dnat> {
        let mut out = Vec::new();
        for rs in &self.iptables {
            let Some(nat) = rs.table("nat") else { continue };
            for chain in &nat.chains {
                for rule in &chain.rules {
                    if rule.target.as_deref() == Some("DNAT") && rule.names_dport(port) {
                        out.push(Dnat {
                            location: format!(
                                "{} {} nat {} rule {}",
                                rs.backend,
                                ipt_family(&rs.backend),
                                chain.name,
                                rule.number
                            ),
                            table: "nat".into(),
                            chain: chain.name.clone(),
                            to: rule.dnat_target(),
                            reachable: nat.reachable("PREROUTING", &chain.name),
                            packets: Some(rule.packets),
                        });
                    }
                }
            }
        }
        for rule in self.nft.native_rules() {
            if rule.verdict.as_deref() == Some("dnat") && rule.names_dport(port) {
                let reachable = self
                    .nft
                    .chains
                    .iter()
                    .filter(|c| {
                        c.family == rule.family
                            && c.table == rule.table
                            && c.hook.as_deref() == Some("prerouting")
                    })
                    .any(|base| self.nft.reachable_from(base).contains(&rule.chain));
                out.push(Dnat {
                    location: rule.location(),
                    table: rule.table.clone(),
                    chain: rule.chain.clone(),
                    to: rule
                        .dnat_to
                        .as_ref()
                        .and_then(|(a, p)| a.parse().ok().map(|a| (a, *p))),
                    reachable,
                    packets: rule.packets,
                });
            }
        }
        out
    }

    /// Docker's filter rules that accept forwarded traffic to a container on `port`
    /// (iptables `DOCKER` chain; Docker 29's nftables `filter-forward-in__*` chains).
    pub fn published_hints(&self, port: u16) -> Vec<PublishedHint> {
        let mut out = Vec::new();
        for rule in self.nft.native_rules() {
            if rule.verdict.as_deref() == Some("accept")
                && rule.names_dport(port)
                && let Some(container) = rule.daddr.as_deref().and_then(|a| a.parse().ok())
            {
                out.push(PublishedHint {
                    container,
                    port,
                    location: rule.location(),
                });
            }
        }
        for rs in &self.iptables {
            let Some(filter) = rs.table("filter") else {
                continue;
            };
            let Some(docker) = filter.chain("DOCKER") else {
                continue;
            };
            for rule in &docker.rules {
                if rule.target.as_deref() != Some("ACCEPT") || !rule.names_dport(port) {
                    continue;
                }
                let Some(dst) = rule.dst.as_deref() else {
                    continue;
                };
                let Ok(container) = dst.trim_end_matches("/32").parse() else {
                    continue;
                };
                out.push(PublishedHint {
                    container,
                    port,
                    location: format!("{} filter DOCKER rule {}", rs.backend, rule.number),
                });
            }
        }
        out
    }

    /// Whether nat chain `chain` exists in any iptables backend (or, for Docker 29's
    /// nftables backend, whether its `docker-bridges` table has its DNAT chain).
    pub fn nat_chain_exists(&self, chain: &str) -> bool {
        let ipt = self
            .iptables
            .iter()
            .any(|rs| rs.table("nat").and_then(|t| t.chain(chain)).is_some());
        let nft = chain == "DOCKER"
            && self
                .nft
                .chains
                .iter()
                .any(|c| c.table == "docker-bridges" && c.name == "nat-prerouting-and-output");
        ipt || nft
    }

    /// Drop/reject rules and DROP policies on the path of `hook` that may apply to `port`:
    /// (iptables: the built-in chain of that name in every table and what it jumps to;
    /// nft: the base chains on that hook in native tables and what they jump to).
    pub fn blockers(&self, hook: Hook, port: u16) -> Vec<RuleRef> {
        let (ipt_chain, nft_hook) = match hook {
            Hook::PreRouting => ("PREROUTING", "prerouting"),
            Hook::LocalIn => ("INPUT", "input"),
            Hook::Forward => ("FORWARD", "forward"),
            Hook::LocalOut => ("OUTPUT", "output"),
            Hook::PostRouting => ("POSTROUTING", "postrouting"),
            Hook::Routing | Hook::Socket => return Vec::new(),
        };
        let mut out = Vec::new();
        for rs in &self.iptables {
            let fam = ipt_family(&rs.backend);
            for table in &rs.tables {
                if table.chain(ipt_chain).is_none() {
                    continue;
                }
                for chain in table.reachable_chains(ipt_chain) {
                    for rule in chain
                        .rules
                        .iter()
                        .filter(|r| r.is_terminal_drop() && r.may_match_dport(port))
                    {
                        out.push(RuleRef {
                            text: format!(
                                "{} {fam} {} {} rule {}: {}",
                                rs.backend, table.name, chain.name, rule.number, rule.spec
                            ),
                            verdict: rule.target.clone().unwrap_or_default(),
                            reject_with: rule.reject_with.clone(),
                            packets: Some(rule.packets),
                            names_port: rule.names_dport(port),
                            policy: false,
                        });
                    }
                }
                if let Some(base) = table.chain(ipt_chain)
                    && base.policy.as_deref() == Some("DROP")
                {
                    out.push(RuleRef {
                        text: format!(
                            "{} {fam} {} {} policy DROP (no rule accepted the packet)",
                            rs.backend, table.name, ipt_chain
                        ),
                        verdict: "DROP".into(),
                        reject_with: None,
                        // The chain's counters in `iptables-save -c` are its policy's.
                        packets: Some(base.packets),
                        names_port: false,
                        policy: true,
                    });
                }
            }
        }
        for base in self.nft.native_base_chains(nft_hook) {
            let reachable = self.nft.reachable_from(base);
            for rule in self.nft.native_rules().filter(|r| {
                r.family == base.family
                    && r.table == base.table
                    && reachable.contains(&r.chain)
                    && r.is_terminal_drop()
                    && r.may_match_dport(port)
            }) {
                out.push(RuleRef {
                    text: format!("nftables {}: {}", rule.location(), rule.text),
                    verdict: rule.verdict.clone().unwrap_or_default().to_uppercase(),
                    reject_with: rule.reject_with.clone(),
                    packets: rule.packets,
                    names_port: rule.names_dport(port),
                    policy: false,
                });
            }
            if base.policy.as_deref() == Some("drop") {
                out.push(RuleRef {
                    text: format!(
                        "nftables table {} {} chain {} policy drop",
                        base.family, base.table, base.name
                    ),
                    verdict: "DROP".into(),
                    reject_with: None,
                    packets: None,
                    names_port: false,
                    policy: true,
                });
            }
        }
        out
    }
}

/// Runs a read-only tool inside the namespace (see `Netns::tool_output`). None when the tool
/// is missing or fails; the reason goes to `problems`.
fn run_in(ns: &Netns, args: &[&str], problems: &mut Vec<String>) -> Option<String> {
    match ns.tool_output(args) {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let missing = err.contains("No such file") || o.status.code() == Some(127);
            problems.push(if missing {
                format!(
                    "{} is not installed: install it for rule-level evidence",
                    args[0]
                )
            } else {
                format!("`{}` failed: {}", args.join(" "), err.trim())
            });
            None
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            problems.push(format!("`{}` {e}: its evidence is missing", args.join(" ")));
            None
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            problems.push(format!(
                "{} is not installed: install it for rule-level evidence",
                args[0]
            ));
            None
        }
        Err(e) => {
            problems.push(format!(
                "cannot run `{}` in the namespace: {e}",
                args.join(" ")
            ));
            None
        }
    }
}

/// Reads the sysctls that matter, from inside the namespace (/proc/sys/net is per-namespace
/// for the reading thread).
pub fn read_sysctls(ns: &Netns) -> (Sysctls, Vec<String>) {
    ns.run_in(|| {
        let mut s = Sysctls::default();
        let read = |path: &str| {
            std::fs::read_to_string(format!("/proc/sys/{path}"))
                .ok()
                .map(|v| v.trim().to_string())
        };
        let mut ifaces: Vec<String> = std::fs::read_dir("/proc/sys/net/ipv4/conf")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        ifaces.sort();
        for key in [
            "net/ipv4/ip_forward",
            "net/bridge/bridge-nf-call-iptables",
            "net/bridge/bridge-nf-call-ip6tables",
        ] {
            if let Some(v) = read(key) {
                s.set(&key.replace('/', "."), &v);
            }
        }
        for leaf in conntrack::SYSCTLS {
            if let Some(v) = read(&format!("net/netfilter/{leaf}")) {
                s.set(&format!("net.netfilter.{leaf}"), &v);
            }
        }
        for iface in &ifaces {
            for leaf in ["forwarding", "rp_filter"] {
                let key = format!("net/ipv4/conf/{iface}/{leaf}");
                if let Some(v) = read(&key) {
                    s.set(&format!("net.ipv4.conf.{iface}.{leaf}"), &v);
                }
            }
            for leaf in ["forwarding", "accept_ra"] {
                if let Some(v) = read(&format!("net/ipv6/conf/{iface}/{leaf}")) {
                    s.set(&format!("net.ipv6.conf.{iface}.{leaf}"), &v);
                }
            }
        }
        let names = ifaces
            .into_iter()
            .filter(|i| i != "all" && i != "default")
            .collect();
        (s, names)
    })
    .unwrap_or_default()
}

/// The interfaces of the namespace's usable IPv6 default routes (up, not a reject route).
pub fn read_ipv6_defaults(ns: &Netns) -> Option<Vec<String>> {
    ns.run_in(|| {
        // thread-self: /proc/self/net is the main thread's namespace, not this thread's.
        let text = std::fs::read_to_string("/proc/thread-self/net/ipv6_route").ok()?;
        Some(parse_ipv6_defaults(&text))
    })
    .ok()
    .flatten()
}

/// /proc/net/ipv6_route: dst dst_len src src_len nexthop metric refcnt use flags dev.
fn parse_ipv6_defaults(text: &str) -> Vec<String> {
    const RTF_UP: u32 = 0x1;
    const RTF_REJECT: u32 = 0x200;
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(8)?, 16).ok()?;
            let default = f[0].bytes().all(|b| b == b'0') && f[1] == "00";
            let usable = flags & RTF_UP != 0 && flags & RTF_REJECT == 0 && f[9] != "lo";
            (default && usable).then(|| f[9].to_string())
        })
        .collect()
}

/// `ip -j addr show`: each interface's name by its index.
fn parse_ip_ifnames(text: &str) -> BTreeMap<u32, String> {
    let Ok(serde_json::Value::Array(links)) = serde_json::from_str::<serde_json::Value>(text)
    else {
        return BTreeMap::new();
    };
    links
        .iter()
        .filter_map(|l| {
            let index = u32::try_from(l["ifindex"].as_u64()?).ok()?;
            Some((index, l["ifname"].as_str()?.to_string()))
        })
        .collect()
}

/// `ip -j addr show`: each interface's MTU.
fn parse_ip_mtus(text: &str) -> BTreeMap<String, u32> {
    let Ok(serde_json::Value::Array(links)) = serde_json::from_str::<serde_json::Value>(text)
    else {
        return BTreeMap::new();
    };
    links
        .iter()
        .filter_map(|l| {
            let mtu = u32::try_from(l["mtu"].as_u64()?).ok()?;
            Some((l["ifname"].as_str()?.to_string(), mtu))
        })
        .collect()
}

/// `ip -j addr show`: every address with its interface and prefix.
fn parse_ip_addr_json(text: &str) -> Vec<IfAddr> {
    let Ok(serde_json::Value::Array(links)) = serde_json::from_str::<serde_json::Value>(text)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for link in &links {
        let iface = link["ifname"].as_str().unwrap_or_default();
        for a in link["addr_info"].as_array().into_iter().flatten() {
            let addr: Option<IpAddr> = a["local"].as_str().and_then(|s| s.parse().ok());
            // Without a prefix (never seen from iproute2), the address alone: a host route.
            let prefix = a["prefixlen"].as_u64().and_then(|p| u8::try_from(p).ok());
            if let Some(addr) = addr {
                let prefix = prefix.unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
                out.push(IfAddr {
                    iface: iface.to_string(),
                    addr,
                    prefix,
                });
            }
        }
    }
    out
}

/// Takes a snapshot of the namespace. Never fails: what cannot be read is in `problems`.
pub fn capture(ns: &Netns) -> Snapshot {
    // The tools run at once, each on a thread of its own: they spend their time starting
    // (fork, exec, dynamic linking), and one after the other they were most of the time
    // to the first verdict.
    const TOOLS: [&[&str]; 7] = [
        &["ip", "-j", "addr", "show"],
        &["iptables-nft-save", "-c"],
        &["iptables-legacy-save", "-c"],
        &["ip6tables-nft-save", "-c"],
        &["ip6tables-legacy-save", "-c"],
        &["nft", "-j", "list", "ruleset"],
        &["conntrack", "-S"],
    ];
    let (outputs, ((sysctls, interfaces), ipv6_defaults)) = std::thread::scope(|scope| {
        let runs: Vec<_> = TOOLS
            .iter()
            .map(|args| {
                scope.spawn(move || {
                    let mut problems = Vec::new();
                    (run_in(ns, args, &mut problems), problems)
                })
            })
            .collect();
        let defaults = scope.spawn(|| read_ipv6_defaults(ns));
        let sysctls = (read_sysctls(ns), defaults.join().ok().flatten());
        let outputs: Vec<(Option<String>, Vec<String>)> = runs
            .into_iter()
            .map(|r| {
                r.join()
                    .unwrap_or((None, vec!["a tool's reader failed".into()]))
            })
            .collect();
        (outputs, sysctls)
    });
    let mut snap = Snapshot {
        sysctls,
        interfaces,
        ipv6_defaults,
        ..Snapshot::default()
    };
    let mut outputs = outputs.into_iter();
    let mut next = || outputs.next().unwrap_or_default();
    let (addrs, problems) = next();
    snap.problems.extend(problems);
    if let Some(text) = addrs {
        snap.addrs = parse_ip_addr_json(&text);
        snap.mtus = parse_ip_mtus(&text);
        snap.ifnames = parse_ip_ifnames(&text);
        snap.local_addrs = snap.addrs.iter().map(|a| a.addr).collect();
    }
    for backend in [
        "iptables-nft",
        "iptables-legacy",
        "ip6tables-nft",
        "ip6tables-legacy",
    ] {
        let (text, problems) = next();
        if let Some(text) = text {
            let rs = iptables::parse(backend, &text);
            if !rs.is_empty() {
                snap.iptables.push(rs);
            }
        } else {
            // A tool that ran and failed says so (iptables-legacy-save without CAP_NET_RAW);
            // only the main backend's absence is worth a note.
            snap.problems.extend(
                problems
                    .into_iter()
                    .filter(|p| backend == "iptables-nft" || !p.contains("is not installed")),
            );
        }
    }
    let (nft_text, problems) = next();
    snap.problems.extend(problems);
    if let Some(text) = nft_text {
        match nft::parse(&text) {
            Ok(rs) => snap.nft = rs,
            Err(e) => snap.problems.push(e),
        }
    }
    // Without the tool or the conntrack module there are no statistics to read: the
    // conntrack_full verdict then rests on the table's fill alone, nothing to say.
    let (stats, _) = next();
    snap.conntrack = stats.as_deref().and_then(conntrack::parse_stats);
    snap
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docker_snapshot() -> Snapshot {
        Snapshot {
            iptables: vec![iptables::parse(
                "iptables-nft",
                include_str!("testdata/iptables-nft-save-docker-user-drop.txt"),
            )],
            nft: nft::parse(include_str!("testdata/nft-list-ruleset-blocker.json")).unwrap(),
            local_addrs: vec![
                "198.51.100.1".parse().unwrap(),
                "172.17.0.1".parse().unwrap(),
            ],
            ..Snapshot::default()
        }
    }

    #[test]
    fn ipv6_default_routes_are_read_without_the_kernels_reject_route() {
        let text = include_str!("testdata/proc-net-ipv6_route.txt");
        assert_eq!(parse_ipv6_defaults(text), vec!["eth0".to_string()]);
        let without: String = text
            .lines()
            .filter(|l| !l.contains("fd000000000000000000000000000001"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(
            parse_ipv6_defaults(&without).is_empty(),
            "only the reject route is left"
        );
    }

    #[test]
    fn docker_dnat_is_found_and_reachable() {
        let snap = docker_snapshot();
        let dnats = snap.dnats_for(5000);
        assert_eq!(dnats.len(), 1, "{dnats:#?}");
        assert!(dnats[0].reachable);
        assert_eq!(dnats[0].location, "iptables-nft ip nat DOCKER rule 2");
        assert!(snap.dnats_for(5001).is_empty());
        assert!(snap.nat_chain_exists("DOCKER"));
    }

    #[test]
    fn docker_filter_rule_proves_the_port_is_published() {
        let hints = docker_snapshot().published_hints(5000);
        assert_eq!(hints.len(), 1);
        assert_eq!(hints[0].container, Ipv4Addr::new(172, 17, 0, 2));
    }

    #[test]
    fn forward_blockers_include_rules_nft_tables_and_the_policy() {
        let snap = docker_snapshot();
        let blockers = snap.blockers(Hook::Forward, 5000);
        let texts: Vec<&str> = blockers.iter().map(|b| b.text.as_str()).collect();
        assert!(
            texts
                .iter()
                .any(|t| t.contains("filter DOCKER-USER rule 1")),
            "{texts:#?}"
        );
        assert!(
            texts
                .iter()
                .any(|t| t.contains("table inet blocker chain forward_block handle 2"))
        );
        assert!(texts.iter().any(|t| t.contains("FORWARD policy DROP")));
        // Docker's isolation DROP only matches -o docker0 from another bridge: still a
        // candidate by port, but it does not name the port.
        let iso = blockers
            .iter()
            .find(|b| b.text.contains("DOCKER-ISOLATION-STAGE-2"))
            .unwrap();
        assert!(!iso.names_port);
        let input = snap.blockers(Hook::LocalIn, 5000);
        assert!(
            input
                .iter()
                .any(|b| b.text.contains("input_block") && b.verdict == "REJECT")
        );
    }

    #[test]
    fn ip_json_addresses() {
        let text = r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1"}]},
            {"ifindex":2,"ifname":"eth-ext","addr_info":[{"family":"inet","local":"198.51.100.1"},{"family":"inet6","local":"2001:db8:1::1"}]}]"#;
        let addrs = parse_ip_addr_json(text);
        assert_eq!(addrs.len(), 3);
        // iproute2 gives each its prefix: the connected subnet.
        let real = r#"[{"ifindex":3,"ifname":"docker0","addr_info":[{"family":"inet","local":"172.17.0.1","prefixlen":16,"scope":"global"}]}]"#;
        let docker0 = &parse_ip_addr_json(real)[0];
        assert_eq!((docker0.iface.as_str(), docker0.prefix), ("docker0", 16));
        assert!(docker0.covers(&"172.17.200.9".parse().unwrap()));
        assert!(!docker0.covers(&"172.18.0.2".parse().unwrap()));
        assert!(parse_ip_addr_json("garbage").is_empty());
    }
}
