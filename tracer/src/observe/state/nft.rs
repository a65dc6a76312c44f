//! `nft -j list ruleset` → base chains with their hooks, rules with verdicts and counters.
//! Tables that iptables-nft manages are read from `iptables-nft-save` instead (their JSON
//! shows opaque `xt` expressions), so `native_*` skips them.
use serde_json::Value;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: Vec<Chain>,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub family: String,
    pub table: String,
    pub name: String,
    /// Base chains only: `prerouting`, `input`, `forward`, `output`, `postrouting`.
    pub hook: Option<String>,
    pub prio: Option<i64>,
    pub policy: Option<String>,
    pub kind: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub family: String,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    /// `drop`, `reject`, `accept`, `jump`, `goto`, `return`, `dnat`, `queue`, … (the last
    /// verdict-like statement of the rule).
    pub verdict: Option<String>,
    /// Jump/goto target chain.
    pub target: Option<String>,
    /// Every chain this rule can continue in: jump/goto targets and the chains of a verdict
    /// map it looks up (`oifname vmap @filter-forward-in-jumps`, Docker 29's layout).
    pub targets: Vec<String>,
    /// `ip daddr X` / `ip6 daddr X` the rule matches.
    pub daddr: Option<String>,
    /// DNAT target (`dnat to 172.17.0.2:5000`).
    pub dnat_to: Option<(String, Option<u16>)>,
    /// Named verdict map looked up (`@filter-forward-in-jumps`), resolved after parsing.
    vmap_ref: Option<String>,
    /// `reject with icmpx admin-prohibited` → `icmpx admin-prohibited`.
    pub reject_with: Option<String>,
    /// Packets counted by a `counter` statement, if the rule has one.
    pub packets: Option<u64>,
    /// Destination ports the rule matches on (`th/tcp/udp dport`), inclusive ranges.
    pub dports: Vec<(u16, u16)>,
    pub dport_negated: bool,
    /// The protocol of the `dport` match (`tcp`, `udp`, `sctp`; None for `th dport`).
    pub proto: Option<String>,
    /// nft-like rendering for humans: `tcp dport 5000 counter drop`.
    pub text: String,
}

impl Rule {
    pub fn is_terminal_drop(&self) -> bool {
        matches!(self.verdict.as_deref(), Some("drop") | Some("reject"))
    }

    pub fn may_match_dport(&self, port: u16) -> bool {
        if self.dports.is_empty() {
            return true;
        }
        self.dports
            .iter()
            .any(|(lo, hi)| *lo <= port && port <= *hi)
            != self.dport_negated
    }

    pub fn names_dport(&self, port: u16) -> bool {
        !self.dports.is_empty() && self.may_match_dport(port)
    }

    /// `table inet blocker chain forward_block handle 2`
    pub fn location(&self) -> String {
        format!(
            "table {} {} chain {} handle {}",
            self.family, self.table, self.chain, self.handle
        )
    }
}

/// Tables owned by iptables-nft (read through iptables-nft-save instead).
pub fn is_iptables_table(family: &str, table: &str) -> bool {
    matches!(family, "ip" | "ip6")
        && matches!(table, "filter" | "nat" | "mangle" | "raw" | "security")
}

impl Ruleset {
    pub fn native_rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules
            .iter()
            .filter(|r| !is_iptables_table(&r.family, &r.table))
    }

    pub fn chain(&self, family: &str, table: &str, name: &str) -> Option<&Chain> {
        self.chains
            .iter()
            .find(|c| c.family == family && c.table == table && c.name == name)
    }

    /// Base chains of tables not managed by iptables-nft, on `hook`.
    pub fn native_base_chains<'a>(&'a self, hook: &'a str) -> impl Iterator<Item = &'a Chain> + 'a {
        self.chains.iter().filter(move |c| {
            c.hook.as_deref() == Some(hook) && !is_iptables_table(&c.family, &c.table)
        })
    }

    /// Chains of the same table reachable from `base` by jump/goto (base included).
    pub fn reachable_from(&self, base: &Chain) -> Vec<String> {
        let mut seen = vec![base.name.clone()];
        let mut i = 0;
        while i < seen.len() {
            let current = seen[i].clone();
            for r in self
                .rules
                .iter()
                .filter(|r| r.family == base.family && r.table == base.table && r.chain == current)
            {
                for t in &r.targets {
                    if !seen.contains(t) {
                        seen.push(t.clone());
                    }
                }
            }
            i += 1;
        }
        seen
    }

    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.rules.is_empty()
    }
}

fn port_ranges(v: &Value) -> Vec<(u16, u16)> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .map(|p| vec![(p, p)])
            .unwrap_or_default(),
        Value::Object(o) if o.contains_key("range") => {
            let r = &o["range"];
            match (
                r.get(0).and_then(Value::as_u64),
                r.get(1).and_then(Value::as_u64),
            ) {
                (Some(a), Some(b)) => vec![(a as u16, b as u16)],
                _ => Vec::new(),
            }
        }
        Value::Object(o) if o.contains_key("set") => port_ranges(&o["set"]),
        Value::Array(items) => items.iter().flat_map(port_ranges).collect(),
        _ => Vec::new(),
    }
}

fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => items
            .iter()
            .map(render_value)
            .collect::<Vec<_>>()
            .join(", "),
        Value::Object(o) => {
            if let Some(p) = o.get("payload") {
                format!(
                    "{} {}",
                    p["protocol"].as_str().unwrap_or("?"),
                    p["field"].as_str().unwrap_or("?")
                )
            } else if let Some(m) = o.get("meta") {
                m["key"].as_str().unwrap_or("meta").to_string()
            } else if let Some(s) = o.get("set") {
                format!("{{ {} }}", render_value(s))
            } else if let Some(r) = o.get("range") {
                format!("{}-{}", render_value(&r[0]), render_value(&r[1]))
            } else if let Some(p) = o.get("prefix") {
                format!("{}/{}", render_value(&p["addr"]), render_value(&p["len"]))
            } else if let Some(ct) = o.get("ct") {
                format!("ct {}", ct["key"].as_str().unwrap_or("?"))
            } else {
                o.keys().next().cloned().unwrap_or_default()
            }
        }
        _ => String::new(),
    }
}

fn parse_rule(r: &Value) -> Option<Rule> {
    let mut rule = Rule {
        family: r["family"].as_str()?.to_string(),
        table: r["table"].as_str()?.to_string(),
        chain: r["chain"].as_str()?.to_string(),
        handle: r["handle"].as_u64().unwrap_or(0),
        ..Rule::default()
    };
    let mut words = Vec::new();
    for expr in r["expr"].as_array().map(Vec::as_slice).unwrap_or_default() {
        if let Some((key, body)) = expr.as_object().and_then(|o| o.iter().next()) {
            words.push(expression(&mut rule, key, body));
        }
    }
    rule.text = words.join(" ");
    Some(rule)
}

/// One expression of a rule: what it tells about the rule, and its words in `nft`'s syntax.
fn expression(rule: &mut Rule, key: &str, body: &Value) -> String {
    match key {
        "match" => matched(rule, body),
        "counter" => {
            rule.packets = body["packets"].as_u64();
            format!("counter packets {}", rule.packets.unwrap_or(0))
        }
        "drop" | "accept" | "return" | "continue" | "queue" => {
            rule.verdict = Some(key.to_string());
            key.to_string()
        }
        "reject" => {
            rule.verdict = Some("reject".into());
            rule.reject_with = match (body["type"].as_str(), body["expr"].as_str()) {
                (Some(t), Some(e)) => Some(format!("{t} {e}")),
                (Some(t), None) => Some(t.to_string()),
                _ => None,
            };
            match &rule.reject_with {
                Some(w) => format!("reject with {w}"),
                None => "reject".into(),
            }
        }
        "jump" | "goto" => {
            rule.verdict = Some(key.to_string());
            rule.target = body["target"].as_str().map(str::to_string);
            rule.targets.extend(rule.target.clone());
            format!("{key} {}", rule.target.as_deref().unwrap_or("?"))
        }
        "vmap" => {
            match &body["data"] {
                Value::String(name) => rule.vmap_ref = name.strip_prefix('@').map(str::to_string),
                inline => rule.targets.extend(verdict_targets(inline)),
            }
            format!(
                "{} vmap {}",
                render_value(&body["key"]),
                render_value(&body["data"])
            )
        }
        "dnat" | "snat" | "masquerade" | "redirect" => nat(rule, key, body),
        "xt" => format!(
            "xt {} {}",
            body["type"].as_str().unwrap_or("?"),
            body["name"].as_str().unwrap_or("?")
        ),
        other => other.to_string(),
    }
}

/// A `match` expression: the destination port or address it tests, in words.
fn matched(rule: &mut Rule, body: &Value) -> String {
    let left = &body["left"];
    let op = body["op"].as_str().unwrap_or("==");
    if left["payload"]["field"] == "dport" {
        rule.dports = port_ranges(&body["right"]);
        rule.dport_negated = op == "!=";
        rule.proto = left["payload"]["protocol"]
            .as_str()
            .filter(|p| *p != "th")
            .map(str::to_string);
    }
    if left["payload"]["field"] == "daddr" && op == "==" {
        rule.daddr = body["right"].as_str().map(str::to_string);
    }
    let op_text = match op {
        "==" | "in" => String::new(),
        other => format!("{other} "),
    };
    format!(
        "{} {op_text}{}",
        render_value(left),
        render_value(&body["right"])
    )
}

/// A NAT statement: where a DNAT sends the packet, in words.
fn nat(rule: &mut Rule, key: &str, body: &Value) -> String {
    if key == "dnat"
        && let Some(addr) = body["addr"].as_str()
    {
        rule.dnat_to = Some((
            addr.to_string(),
            body["port"].as_u64().and_then(|p| u16::try_from(p).ok()),
        ));
    }
    rule.verdict = Some(key.to_string());
    let addr = render_value(&body["addr"]);
    let port = render_value(&body["port"]);
    match (addr.is_empty(), port.is_empty()) {
        (false, false) => format!("{key} to {addr}:{port}"),
        (false, true) => format!("{key} to {addr}"),
        _ => key.to_string(),
    }
}

/// Chains named by jump/goto verdicts anywhere inside `v` (map elements, inline vmaps).
fn verdict_targets(v: &Value) -> Vec<String> {
    match v {
        Value::Object(o) => {
            let mut out = Vec::new();
            for (k, inner) in o {
                if (k == "jump" || k == "goto")
                    && let Some(t) = inner["target"].as_str()
                {
                    out.push(t.to_string());
                } else {
                    out.extend(verdict_targets(inner));
                }
            }
            out
        }
        Value::Array(items) => items.iter().flat_map(verdict_targets).collect(),
        _ => Vec::new(),
    }
}

/// Parses `nft -j list ruleset`. Unknown objects are skipped; invalid JSON is an error the
/// caller reports as unreadable state, never a crash.
pub fn parse(json: &str) -> Result<Ruleset, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| format!("nft JSON: {e}"))?;
    let items = doc["nftables"]
        .as_array()
        .ok_or("nft JSON: no \"nftables\" array")?;
    let mut rs = Ruleset::default();
    // Verdict maps: (family, table, name) → chains their elements jump to.
    let mut maps: Vec<((String, String, String), Vec<String>)> = Vec::new();
    for item in items {
        if let Some(m) = item.get("map") {
            if m["map"] == "verdict"
                && let (Some(f), Some(t), Some(n)) = (
                    m["family"].as_str(),
                    m["table"].as_str(),
                    m["name"].as_str(),
                )
            {
                maps.push(((f.into(), t.into(), n.into()), verdict_targets(&m["elem"])));
            }
        } else if let Some(c) = item.get("chain") {
            let (Some(family), Some(table), Some(name)) = (
                c["family"].as_str(),
                c["table"].as_str(),
                c["name"].as_str(),
            ) else {
                continue;
            };
            rs.chains.push(Chain {
                family: family.to_string(),
                table: table.to_string(),
                name: name.to_string(),
                hook: c["hook"].as_str().map(str::to_string),
                prio: c["prio"].as_i64(),
                policy: c["policy"].as_str().map(str::to_string),
                kind: c["type"].as_str().map(str::to_string),
            });
        } else if let Some(r) = item.get("rule")
            && let Some(rule) = parse_rule(r)
        {
            rs.rules.push(rule);
        }
    }
    for rule in &mut rs.rules {
        if let Some(name) = rule.vmap_ref.take()
            && let Some((_, targets)) = maps
                .iter()
                .find(|((f, t, n), _)| *f == rule.family && *t == rule.table && *n == name)
        {
            rule.targets.extend(targets.iter().cloned());
        }
    }
    Ok(rs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCKER: &str = include_str!("testdata/nft-list-ruleset-blocker.json");

    #[test]
    fn native_tables_rules_verdicts_and_counters() {
        let rs = parse(BLOCKER).expect("parse");
        let natives: Vec<&Rule> = rs.native_rules().collect();
        assert_eq!(
            natives.len(),
            2,
            "only the blocker table is native: {natives:#?}"
        );
        let drop = natives.iter().find(|r| r.chain == "forward_block").unwrap();
        assert_eq!(drop.verdict.as_deref(), Some("drop"));
        assert_eq!(drop.packets, Some(1));
        assert!(drop.names_dport(5000));
        assert_eq!(drop.text, "tcp dport 5000 counter packets 1 drop");
        assert_eq!(
            drop.location(),
            "table inet blocker chain forward_block handle 2"
        );
        let reject = natives.iter().find(|r| r.chain == "input_block").unwrap();
        assert_eq!(reject.verdict.as_deref(), Some("reject"));
        assert_eq!(
            reject.reject_with.as_deref(),
            Some("icmpx admin-prohibited")
        );
        assert_eq!(reject.packets, None, "no counter statement");
        let hooks: Vec<&str> = rs
            .native_base_chains("forward")
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(hooks, vec!["forward_block"]);
    }

    #[test]
    fn iptables_nft_tables_are_recognised() {
        let rs = parse(BLOCKER).expect("parse");
        let forward = rs
            .chain("ip", "filter", "FORWARD")
            .expect("iptables-nft FORWARD");
        assert_eq!(forward.policy.as_deref(), Some("drop"));
        assert!(is_iptables_table("ip", "nat"));
        assert!(!is_iptables_table("inet", "filter"));
    }

    // The layout Docker 29's nftables backend documents for `-p 5000:5000` on docker0
    // (testdata/docker29-layout.nft), loaded with `nft -f` and dumped with `nft -j list ruleset`.
    const DOCKER29: &str = include_str!("testdata/docker29-nft-list-ruleset.json");

    #[test]
    fn docker29_verdict_maps_make_the_per_bridge_chains_reachable() {
        let rs = parse(DOCKER29).expect("parse");
        let forward = rs
            .native_base_chains("forward")
            .next()
            .expect("filter-FORWARD");
        let reach = rs.reachable_from(forward);
        assert!(
            reach.contains(&"filter-forward-in__docker0".to_string()),
            "{reach:?}"
        );
        let dnat = rs
            .native_rules()
            .find(|r| r.verdict.as_deref() == Some("dnat"))
            .unwrap();
        assert_eq!(dnat.dnat_to, Some(("172.17.0.2".into(), Some(5000))));
        assert!(dnat.names_dport(5000));
        let open = rs
            .native_rules()
            .find(|r| r.verdict.as_deref() == Some("accept") && r.names_dport(5000))
            .unwrap();
        assert_eq!(open.daddr.as_deref(), Some("172.17.0.2"));
    }

    #[test]
    fn bad_json_is_an_error_not_a_panic() {
        assert!(parse("{").is_err());
        assert!(parse("{\"x\":1}").is_err());
        assert!(
            parse("{\"nftables\":[{\"rule\":{\"expr\":5}}, {\"chain\":{}}]}")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn port_sets_and_ranges_are_matched() {
        let v: Value = serde_json::json!({"set": [22, {"range": [5000, 5010]}]});
        assert_eq!(port_ranges(&v), vec![(22, 22), (5000, 5010)]);
    }
}
