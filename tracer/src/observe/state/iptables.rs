//! `iptables-save -c` text (iptables-nft and iptables-legacy print the same format) → tables,
//! chains, numbered rules with their packet counters.
use std::net::IpAddr;

/// One backend's ruleset as `iptables-save -c` printed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// `iptables-nft`, `iptables-legacy` (ip6tables-* likewise).
    pub backend: String,
    pub tables: Vec<Table>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub chains: Vec<Chain>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// `ACCEPT`/`DROP` for a built-in chain; None for a user chain (`-`).
    pub policy: Option<String>,
    pub packets: u64,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// 1-based position in its chain, as `iptables -L --line-numbers` shows it.
    pub number: usize,
    /// The rule's arguments after `-A CHAIN`, as printed.
    pub spec: String,
    pub packets: u64,
    pub bytes: u64,
    /// `-j`/`-g` target: ACCEPT, DROP, REJECT, DNAT, a chain name…
    pub target: Option<String>,
    pub goto: bool,
    pub proto: Option<String>,
    /// `--dport N` or `--dport A:B` (inclusive), with `!` recorded.
    pub dport: Option<(u16, u16)>,
    pub dport_negated: bool,
    /// `-d ADDR[/LEN]`
    pub dst: Option<String>,
    /// `--to-destination ADDR[:PORT]` of a DNAT.
    pub to_destination: Option<String>,
    /// `--reject-with TYPE` of a REJECT.
    pub reject_with: Option<String>,
}

impl Rule {
    /// Whether the rule's port match can match destination port `port` (no port match = yes).
    pub fn may_match_dport(&self, port: u16) -> bool {
        match self.dport {
            None => true,
            Some((lo, hi)) => (lo <= port && port <= hi) != self.dport_negated,
        }
    }

    /// Matches this port explicitly (not just "no port match").
    pub fn names_dport(&self, port: u16) -> bool {
        self.dport.is_some() && self.may_match_dport(port)
    }

    pub fn is_terminal_drop(&self) -> bool {
        matches!(self.target.as_deref(), Some("DROP") | Some("REJECT"))
    }

    /// Container address:port of a DNAT.
    pub fn dnat_target(&self) -> Option<(IpAddr, Option<u16>)> {
        let to = self.to_destination.as_deref()?;
        // `172.17.0.2:5000`, `172.17.0.2`, `[fd00::2]:5000` (ip6tables), `fd00::2`; ranges
        // (`a-b`, `p-q`) by their first.
        let (addr, port) = match to.strip_prefix('[').and_then(|t| t.split_once(']')) {
            Some((a, rest)) => (a, rest.strip_prefix(':')),
            None if to.matches(':').count() == 1 => {
                let (a, p) = to.split_once(':')?;
                (a, Some(p))
            }
            None => (to, None),
        };
        let port = port.and_then(|p| p.split('-').next()?.parse().ok());
        Some((addr.split('-').next()?.parse().ok()?, port))
    }
}

impl Ruleset {
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    pub fn is_empty(&self) -> bool {
        self.tables
            .iter()
            .all(|t| t.chains.iter().all(|c| c.rules.is_empty()))
    }
}

impl Table {
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// Rules anywhere in the table that jump (or goto) `chain`, as (from chain, rule).
    pub fn jumps_to<'a>(
        &'a self,
        chain: &'a str,
    ) -> impl Iterator<Item = (&'a Chain, &'a Rule)> + 'a {
        self.chains.iter().flat_map(move |c| {
            c.rules
                .iter()
                .filter(move |r| r.target.as_deref() == Some(chain))
                .map(move |r| (c, r))
        })
    }

    /// Whether `chain` is reachable from the built-in chain `from` through jumps/gotos.
    pub fn reachable(&self, from: &str, chain: &str) -> bool {
        let mut seen = vec![from.to_string()];
        let mut i = 0;
        while i < seen.len() {
            if seen[i] == chain {
                return true;
            }
            if let Some(c) = self.chain(&seen[i].clone()) {
                for r in &c.rules {
                    if let Some(t) = &r.target
                        && self.chain(t).is_some()
                        && !seen.contains(t)
                    {
                        seen.push(t.clone());
                    }
                }
            }
            i += 1;
        }
        false
    }

    /// Chains reachable from `from`, `from` first.
    pub fn reachable_chains(&self, from: &str) -> Vec<&Chain> {
        self.chains
            .iter()
            .filter(|c| c.name == from || self.reachable(from, &c.name))
            .collect()
    }
}

/// Splits an iptables-save argument line; double quotes group (comments), `\"` escapes.
fn split_args(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    let mut have = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                have = true;
            }
            c if c.is_whitespace() && !quoted => {
                if have || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            c => cur.push(c),
        }
    }
    if have || !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn parse_counters(text: &str) -> Option<(u64, u64)> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    let (p, b) = inner.split_once(':')?;
    Some((p.parse().ok()?, b.parse().ok()?))
}

fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    match text.split_once(':') {
        Some((a, b)) => {
            let lo = if a.is_empty() { 0 } else { a.parse().ok()? };
            let hi = if b.is_empty() {
                u16::MAX
            } else {
                b.parse().ok()?
            };
            Some((lo, hi))
        }
        None => {
            let p = text.parse().ok()?;
            Some((p, p))
        }
    }
}

fn parse_rule(args: &[String], counters: (u64, u64)) -> Rule {
    let mut rule = Rule {
        spec: args.join(" "),
        packets: counters.0,
        bytes: counters.1,
        ..Rule::default()
    };
    let mut negate = false;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let next = args.get(i + 1).cloned();
        match a {
            "!" => {
                negate = true;
                i += 1;
                continue;
            }
            "-j" | "--jump" => rule.target = next,
            "-g" | "--goto" => {
                rule.target = next;
                rule.goto = true;
            }
            "-p" | "--protocol" => rule.proto = next,
            "-d" | "--destination" => rule.dst = next,
            "--dport" | "--destination-port" => {
                rule.dport = next.as_deref().and_then(parse_port_range);
                rule.dport_negated = negate;
            }
            "--dports" => {
                // multiport: keep the first range; enough to say a rule names the port.
                rule.dport = next
                    .as_deref()
                    .and_then(|l| l.split(',').find_map(parse_port_range));
                rule.dport_negated = negate;
            }
            "--to-destination" => rule.to_destination = next,
            "--reject-with" => rule.reject_with = next,
            _ => {}
        }
        negate = false;
        i += 1;
    }
    rule
}

/// Parses `iptables-save -c` output. Lines it does not understand are skipped, never fatal:
/// a newer iptables must not make droptrace fail in an incident.
pub fn parse(backend: &str, text: &str) -> Ruleset {
    let mut rs = Ruleset {
        backend: backend.to_string(),
        tables: Vec::new(),
    };
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            rs.tables.push(Table {
                name: name.to_string(),
                chains: Vec::new(),
            });
            continue;
        }
        let Some(table) = rs.tables.last_mut() else {
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            let mut parts = decl.split_whitespace();
            let (Some(name), Some(policy)) = (parts.next(), parts.next()) else {
                continue;
            };
            let packets = parts.next().and_then(parse_counters).map_or(0, |c| c.0);
            table.chains.push(Chain {
                name: name.to_string(),
                policy: (policy != "-").then(|| policy.to_string()),
                packets,
                rules: Vec::new(),
            });
            continue;
        }
        let mut args = split_args(line);
        let mut counters = (0, 0);
        if let Some(first) = args.first()
            && let Some(c) = parse_counters(first)
        {
            counters = c;
            args.remove(0);
        }
        if args.len() < 2 || (args[0] != "-A" && args[0] != "--append") {
            continue;
        }
        let chain_name = args[1].clone();
        let rest = &args[2..];
        let chain = match table.chains.iter_mut().position(|c| c.name == chain_name) {
            Some(i) => &mut table.chains[i],
            None => {
                table.chains.push(Chain {
                    name: chain_name.clone(),
                    ..Chain::default()
                });
                table.chains.last_mut().expect("just pushed")
            }
        };
        let mut rule = parse_rule(rest, counters);
        rule.number = chain.rules.len() + 1;
        chain.rules.push(rule);
    }
    rs
}

#[cfg(test)]
mod tests {
    use super::*;

    const NFT_SAVE: &str = include_str!("testdata/iptables-nft-save-docker-user-drop.txt");
    const LEGACY_SAVE: &str = include_str!("testdata/iptables-legacy-save-docker.txt");

    #[test]
    fn docker_layout_is_read_with_counters_and_numbers() {
        let rs = parse("iptables-nft", NFT_SAVE);
        let filter = rs.table("filter").expect("filter");
        let forward = filter.chain("FORWARD").expect("FORWARD");
        assert_eq!(forward.policy.as_deref(), Some("DROP"));
        assert_eq!(forward.rules.len(), 6);
        assert_eq!(forward.rules[0].target.as_deref(), Some("DOCKER-USER"));
        let user = filter.chain("DOCKER-USER").expect("DOCKER-USER");
        let drop = &user.rules[0];
        assert_eq!(drop.number, 1);
        assert_eq!(drop.target.as_deref(), Some("DROP"));
        assert_eq!(drop.dport, Some((5000, 5000)));
        assert_eq!(drop.packets, 1);
        assert!(drop.names_dport(5000) && !drop.names_dport(5001));
        assert!(filter.reachable("FORWARD", "DOCKER-USER"));
        assert!(!filter.reachable("INPUT", "DOCKER-USER"));
    }

    #[test]
    fn an_ip6tables_dnat_target_is_an_ipv6_address_and_port() {
        let rs = parse(
            "ip6tables-nft",
            include_str!("testdata/ip6tables-nft-save-docker-ipv6.txt"),
        );
        let dnat = rs
            .table("nat")
            .and_then(|nat| nat.chain("DOCKER"))
            .and_then(|c| c.rules.iter().find(|r| r.target.as_deref() == Some("DNAT")))
            .expect("DNAT");
        assert_eq!(
            dnat.dnat_target(),
            Some(("fd00:17::2".parse().unwrap(), Some(5000)))
        );
        assert!(dnat.names_dport(5000));
        let bare = Rule {
            to_destination: Some("fd00:17::2".into()),
            ..dnat.clone()
        };
        assert_eq!(
            bare.dnat_target(),
            Some(("fd00:17::2".parse().unwrap(), None))
        );
        let range = Rule {
            to_destination: Some("172.17.0.2-172.17.0.3:5000-5001".into()),
            ..dnat.clone()
        };
        assert_eq!(
            range.dnat_target(),
            Some(("172.17.0.2".parse().unwrap(), Some(5000)))
        );
    }

    #[test]
    fn dnat_rule_and_its_target_are_found() {
        for (backend, text) in [("iptables-nft", NFT_SAVE), ("iptables-legacy", LEGACY_SAVE)] {
            let rs = parse(backend, text);
            let nat = rs.table("nat").expect("nat");
            let docker = nat.chain("DOCKER").expect("DOCKER");
            let dnat = docker
                .rules
                .iter()
                .find(|r| r.target.as_deref() == Some("DNAT"))
                .expect("DNAT");
            assert_eq!(
                dnat.dnat_target(),
                Some(("172.17.0.2".parse().unwrap(), Some(5000)))
            );
            assert!(dnat.names_dport(5000));
            assert_eq!(
                nat.jumps_to("DOCKER").count(),
                2,
                "PREROUTING and OUTPUT jump to DOCKER"
            );
            assert!(nat.reachable("PREROUTING", "DOCKER"));
        }
    }

    #[test]
    fn negations_ranges_quotes_and_garbage() {
        let text = "*filter\n:INPUT DROP [3:120]\n\
            [2:80] -A INPUT -p tcp -m tcp ! --dport 22 -m comment --comment \"a \\\"quoted\\\" note\" -j REJECT --reject-with icmp-host-prohibited\n\
            [0:0] -A INPUT -p tcp -m multiport --dports 80,5000:5010 -j ACCEPT\n\
            this is not iptables\n-A\n[1:2] -A NEWCHAIN -j DROP\nCOMMIT\n";
        let rs = parse("iptables-nft", text);
        let filter = rs.table("filter").unwrap();
        let input = filter.chain("INPUT").unwrap();
        assert_eq!(input.packets, 3);
        let reject = &input.rules[0];
        assert!(reject.may_match_dport(5000) && !reject.may_match_dport(22));
        assert_eq!(reject.reject_with.as_deref(), Some("icmp-host-prohibited"));
        assert!(reject.spec.contains("a \"quoted\" note"));
        assert_eq!(input.rules[1].dport, Some((80, 80)));
        assert_eq!(filter.chain("NEWCHAIN").unwrap().rules[0].number, 1);
    }

    #[test]
    fn empty_and_truncated_output_is_an_empty_ruleset() {
        assert!(parse("iptables-legacy", "").is_empty());
        assert!(parse("iptables-legacy", "*nat\n:PREROUTING ACC").is_empty());
    }
}
