//! A namespace's forwarding state as the recorder compares it: the sysctls that matter and
//! every nftables and iptables-legacy chain, policy and rule (counters left out, so traffic
//! does not change it). Two states' difference is what changed when no hook saw it (a module
//! reload, a change made while the recorder was stopped), described in the words of the
//! change lines, so the culprit rules read both alike.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{
    discover::netns::Netns,
    observe::{changes::sysctl_matters, state},
};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NsState {
    pub netns: u32,
    pub name: String,
    pub boot_id: String,
    pub time: String,
    pub sysctls: BTreeMap<String, String>,
    /// `nft --stateless list ruleset` (iptables-nft's tables too): `table ip nat`,
    /// `chain ip nat DOCKER`, `policy ip filter FORWARD drop`, `rule ip nat DOCKER <text>`.
    pub nft: BTreeSet<String>,
    /// iptables-legacy-save and ip6tables-legacy-save, when their tables exist:
    /// `chain ip nat DOCKER`, `policy ip filter FORWARD DROP`, `rule ip nat DOCKER <spec>`.
    pub legacy: BTreeSet<String>,
    /// What could not be read (a tool missing): such parts are not compared.
    pub problems: Vec<String>,
    /// nftables rule handles (`ip nat DOCKER 11`) → the rule's text, to say what a
    /// `delete rule … handle 11` from the monitor removed.
    #[serde(skip)]
    pub handles: BTreeMap<String, String>,
}

impl NsState {
    /// `delete rule ip nat DOCKER handle 11` → with what that rule was.
    pub fn describe(&self, change: &str) -> String {
        let w: Vec<&str> = change.split_whitespace().collect();
        if let ["delete", "rule", family, table, chain, "handle", handle] = w.as_slice()
            && let Some(text) = self
                .handles
                .get(&format!("{family} {table} {chain} {handle}"))
        {
            return format!("{change} (was: {text})");
        }
        change.to_string()
    }
}

/// One difference, in a change line's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// `sysctl`, `nftables`, `iptables-legacy`.
    pub source: &'static str,
    /// The sysctl, or the legacy table.
    pub key: Option<String>,
    pub old: Option<String>,
    pub new: Option<String>,
    pub changes: Vec<String>,
}

/// Reads the namespace's state. Never fails: what cannot be read goes to `problems`.
pub fn capture(ns: &Netns, boot_id: &str) -> NsState {
    let mut s = NsState {
        netns: ns.inode,
        name: ns.name.clone(),
        boot_id: boot_id.to_string(),
        time: crate::observe::event::rfc3339(chrono::Utc::now()),
        ..NsState::default()
    };
    let (sysctls, _) = state::read_sysctls(ns);
    s.sysctls = sysctls
        .values
        .into_iter()
        .filter(|(k, _)| sysctl_matters(k))
        .collect();
    match ns.tool_output(&["nft", "--stateless", "--handle", "list", "ruleset"]) {
        Ok(o) if o.status.success() => {
            (s.nft, s.handles) = nft_entries(&String::from_utf8_lossy(&o.stdout));
        }
        Ok(o) => s.problems.push(format!(
            "nft list ruleset failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => s.problems.push(format!("nft: {e}")),
    }
    // Only tables that exist are read: running iptables-legacy-save where the module is not
    // loaded would load it, and the recorder never changes the host.
    let loaded = ns
        .run_in(|| {
            ["ip", "ip6"].map(|family| {
                let file = if family == "ip" {
                    "ip_tables_names"
                } else {
                    "ip6_tables_names"
                };
                std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))
                    .is_ok_and(|t| !t.trim().is_empty())
            })
        })
        .unwrap_or_default();
    for (family, tool) in [
        ("ip", "iptables-legacy-save"),
        ("ip6", "ip6tables-legacy-save"),
    ] {
        if !loaded[usize::from(family == "ip6")] {
            continue;
        }
        match ns.tool_output(&[tool]) {
            Ok(o) if o.status.success() => {
                s.legacy
                    .extend(legacy_entries(family, &String::from_utf8_lossy(&o.stdout)));
            }
            Ok(_) | Err(_) => s.problems.push(format!("{tool} failed")),
        }
    }
    s
}

/// `nft --stateless [--handle] list ruleset` → entries (see NsState::nft), and the rules'
/// handles when listed.
pub fn nft_entries(text: &str) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let mut out = BTreeSet::new();
    let mut handles = BTreeMap::new();
    let mut depth = 0i32;
    let mut table = String::new();
    let mut chain: Option<String> = None;
    // A rule is complete at the next rule or the chain's end: a long anonymous set may
    // continue it on the lines between.
    let mut pending: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (line, handle) = match line.rsplit_once(" # handle ") {
            Some((l, h)) => (l.trim_end(), Some(h.trim())),
            None => (line, None),
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match (depth, words.as_slice(), &chain) {
            (0, ["table", family, name, "{"], _) => {
                table = format!("{family} {name}");
                out.insert(format!("table {table}"));
            }
            (1, ["chain", name, "{"], _) => {
                let c = format!("{table} {name}");
                out.insert(format!("chain {c}"));
                chain = Some(c);
            }
            (2, _, Some(c)) if line != "}" => {
                out.extend(pending.take());
                if line.starts_with("type ") && line.contains(" hook ") {
                    if let Some(policy) = line.split("policy ").nth(1) {
                        let policy = policy.trim_end_matches(';').trim();
                        out.insert(format!("policy {c} {policy}"));
                    }
                } else {
                    pending = Some(format!("rule {c} {line}"));
                    if let Some(h) = handle {
                        handles.insert(format!("{c} {h}"), line.to_string());
                    }
                }
            }
            (d, _, Some(_)) if d > 2 => {
                if let Some(rule) = &mut pending {
                    rule.push(' ');
                    rule.push_str(line);
                }
            }
            _ => {}
        }
        depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
        if depth < 2 {
            out.extend(pending.take());
            chain = None;
        }
    }
    out.extend(pending);
    (out, handles)
}

/// `iptables-legacy-save` (no counters asked for) → entries (see NsState::legacy).
pub fn legacy_entries(family: &str, text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut table = "";
    for line in text.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix('*') {
            table = t;
        } else if let Some(rest) = line.strip_prefix(':') {
            let mut w = rest.split_whitespace();
            let (Some(chain), Some(policy)) = (w.next(), w.next()) else {
                continue;
            };
            out.insert(format!("chain {family} {table} {chain}"));
            if policy != "-" {
                out.insert(format!("policy {family} {table} {chain} {policy}"));
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
            out.insert(format!("rule {family} {table} {chain} {spec}"));
        }
    }
    out
}

/// What changed from `old` to `new` (the same namespace), in change-line words.
pub fn differences(old: &NsState, new: &NsState) -> Vec<Difference> {
    let mut out = Vec::new();
    for (key, was) in &old.sysctls {
        if let Some(now) = new.sysctls.get(key).filter(|now| *now != was) {
            out.push(Difference {
                source: "sysctl",
                key: Some(key.clone()),
                old: Some(was.clone()),
                new: Some(now.clone()),
                changes: Vec::new(),
            });
        }
    }
    let readable = |s: &NsState, tool: &str| !s.problems.iter().any(|p| p.starts_with(tool));
    if readable(old, "nft") && readable(new, "nft") {
        let changes = nft_changes(&old.nft, &new.nft);
        if !changes.is_empty() {
            out.push(Difference {
                source: "nftables",
                key: None,
                old: None,
                new: None,
                changes,
            });
        }
    }
    if readable(old, "ip") && readable(new, "ip") {
        out.extend(legacy_changes(&old.legacy, &new.legacy));
    }
    out
}

/// The nft monitor's words: `delete table ip nat`, `add chain ip filter X`,
/// `delete rule ip nat DOCKER (was: …)`, `add rule ip filter FORWARD …`, `policy … a -> b`.
/// What lies in a deleted (or added) table is said by the table alone.
fn nft_changes(old: &BTreeSet<String>, new: &BTreeSet<String>) -> Vec<String> {
    let tables = |set: &BTreeSet<String>| -> BTreeSet<String> {
        set.iter()
            .filter_map(|e| e.strip_prefix("table ").map(str::to_string))
            .collect()
    };
    let (old_tables, new_tables) = (tables(old), tables(new));
    let in_table = |entry: &str, gone: &BTreeSet<String>| {
        let mut w = entry.split_whitespace().skip(1);
        let t = format!("{} {}", w.next().unwrap_or(""), w.next().unwrap_or(""));
        gone.contains(&t)
    };
    let removed_tables: BTreeSet<String> = old_tables.difference(&new_tables).cloned().collect();
    let added_tables: BTreeSet<String> = new_tables.difference(&old_tables).cloned().collect();
    let mut out: Vec<String> = Vec::new();
    out.extend(removed_tables.iter().map(|t| format!("delete table {t}")));
    out.extend(added_tables.iter().map(|t| format!("add table {t}")));
    for entry in old.difference(new) {
        if entry.starts_with("table ") || in_table(entry, &removed_tables) {
            continue;
        }
        if let Some(c) = entry.strip_prefix("chain ") {
            out.push(format!("delete chain {c}"));
        } else if let Some(r) = entry.strip_prefix("rule ") {
            let (place, text) = split_place(r);
            out.push(format!("delete rule {place} (was: {text})"));
        } else if let Some(p) = entry.strip_prefix("policy ") {
            let (place, was) = split_place(p);
            let now = new
                .iter()
                .find_map(|e| e.strip_prefix(&format!("policy {place} ")))
                .unwrap_or("none");
            out.push(format!("policy {place} {was} -> {now}"));
        }
    }
    for entry in new.difference(old) {
        if entry.starts_with("table ") || in_table(entry, &added_tables) {
            continue;
        }
        if let Some(c) = entry.strip_prefix("chain ") {
            out.push(format!("add chain {c}"));
        } else if let Some(r) = entry.strip_prefix("rule ") {
            out.push(format!("add rule {r}"));
        }
    }
    out
}

/// `ip nat DOCKER rest…` → (`ip nat DOCKER`, `rest…`).
fn split_place(entry: &str) -> (String, String) {
    let w: Vec<&str> = entry.splitn(4, ' ').collect();
    (
        w[..w.len().min(3)].join(" "),
        w.get(3).unwrap_or(&"").to_string(),
    )
}

/// One difference per legacy table, in the words of a legacy replacement's change line:
/// `removed chain nat DOCKER`, `added rule filter FORWARD: -j DROP`,
/// `policy filter FORWARD ACCEPT -> DROP`.
fn legacy_changes(old: &BTreeSet<String>, new: &BTreeSet<String>) -> Vec<Difference> {
    let mut by_table: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let policy_of = |set: &BTreeSet<String>, place: &str| {
        set.iter().find_map(|e| {
            e.strip_prefix(&format!("policy {place} "))
                .map(str::to_string)
        })
    };
    for (entries, other, verb) in [(old, new, "removed"), (new, old, "added")] {
        for entry in entries.difference(other) {
            let (kind, rest) = entry.split_once(' ').unwrap_or((entry, ""));
            let (place, text) = split_place(rest);
            let mut p = place.split(' ').skip(1);
            let (table, chain) = (p.next().unwrap_or(""), p.next().unwrap_or(""));
            let line = match kind {
                "chain" => format!("{verb} chain {table} {chain}"),
                "rule" => format!("{verb} rule {table} {chain}: {text}"),
                // A policy that changed is said once, from the old side.
                _ if verb == "removed" => {
                    let now = policy_of(new, &place).unwrap_or_else(|| "none".into());
                    format!("policy {table} {chain} {text} -> {now}")
                }
                _ => continue,
            };
            by_table.entry(table.to_string()).or_default().push(line);
        }
    }
    by_table
        .into_iter()
        .map(|(table, changes)| Difference {
            source: "iptables-legacy",
            key: Some(table),
            old: None,
            new: None,
            changes,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // `ip netns exec dt-fp nft --stateless --handle list ruleset` (nftables 1.0.6) in a fresh namespace
    // after Docker's nat rules for `-p 5000:5000` were added with iptables-nft (`-N DOCKER`,
    // the PREROUTING/OUTPUT jumps, MASQUERADE, the RETURN and DNAT rules) and an inet table
    // with a set and a forward chain (`nft add set inet blocker bad …`, `nft add chain inet
    // blocker forward_block …`, a drop and a reject rule).
    const NFT: &str = include_str!("testdata/nft-stateless-handle-docker.txt");

    #[test]
    fn nft_text_becomes_chains_policies_and_rules_without_counters() {
        let (e, _) = nft_entries(NFT);
        assert!(e.contains("table ip nat"), "{e:#?}");
        assert!(e.contains("chain ip nat DOCKER"), "{e:#?}");
        assert!(e.contains("policy ip nat PREROUTING accept"), "{e:#?}");
        assert!(
            e.iter()
                .any(|r| r.starts_with("rule ip nat DOCKER")
                    && r.contains("dnat to 172.17.0.2:5000")),
            "{e:#?}"
        );
        assert!(
            !e.iter()
                .any(|r| r.contains("packets") || r.contains("handle")),
            "{e:#?}"
        );
        let state = NsState {
            handles: nft_entries(NFT).1,
            ..NsState::default()
        };
        let handle = state
            .handles
            .iter()
            .find(|(_, t)| t.contains("dnat"))
            .unwrap()
            .0;
        let handle = handle.rsplit(' ').next().unwrap();
        assert_eq!(
            state.describe(&format!("delete rule ip nat DOCKER handle {handle}")),
            format!(
                "delete rule ip nat DOCKER handle {handle} (was: iifname != \"docker0\" tcp dport 5000 counter dnat to 172.17.0.2:5000)"
            )
        );
        assert!(
            !e.iter().any(|r| r.contains("elements")),
            "set elements are not rules: {e:#?}"
        );
    }

    #[test]
    fn a_deleted_nat_chain_reads_like_the_monitors_line() {
        let old = NsState {
            nft: nft_entries(NFT).0,
            ..NsState::default()
        };
        let mut new = old.clone();
        new.nft.retain(|e| !e.contains("DOCKER"));
        new.sysctls.insert("net.ipv4.ip_forward".into(), "0".into());
        let mut old = old;
        old.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        let d = differences(&old, &new);
        let sysctl = d.iter().find(|d| d.source == "sysctl").unwrap();
        assert_eq!(
            (sysctl.old.as_deref(), sysctl.new.as_deref()),
            (Some("1"), Some("0"))
        );
        let nft = d.iter().find(|d| d.source == "nftables").unwrap();
        assert!(
            nft.changes
                .contains(&"delete chain ip nat DOCKER".to_string()),
            "{nft:?}"
        );
        assert!(
            nft.changes
                .iter()
                .any(|c| c.starts_with("delete rule ip nat PREROUTING (was: ")
                    && c.contains("jump DOCKER")),
            "{nft:?}"
        );
        let gone = NsState::default();
        let d = differences(
            &old,
            &NsState {
                sysctls: old.sysctls.clone(),
                ..gone
            },
        );
        assert_eq!(
            d[0].changes,
            ["delete table inet blocker", "delete table ip nat"],
            "a table's chains and rules go with it: {d:?}"
        );
    }

    #[test]
    fn legacy_save_output_diffs_per_table() {
        // `iptables-legacy-save` in a lab namespace after `iptables-legacy -t nat -N DOCKER`
        // and a DNAT rule, then `iptables-legacy -P FORWARD DROP`.
        let before = "# Generated by iptables-save v1.8.9 on Thu Nov 26 10:00:00 2026\n*nat\n:PREROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n-A DOCKER -p tcp -m tcp --dport 5000 -j DNAT --to-destination 172.17.0.2:5000\nCOMMIT\n*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n";
        let after =
            "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n*filter\n:FORWARD DROP [0:0]\nCOMMIT\n";
        let old = NsState {
            legacy: legacy_entries("ip", before),
            ..NsState::default()
        };
        let new = NsState {
            legacy: legacy_entries("ip", after),
            ..NsState::default()
        };
        let d = differences(&old, &new);
        let nat = d.iter().find(|d| d.key.as_deref() == Some("nat")).unwrap();
        assert!(
            nat.changes
                .contains(&"removed chain nat DOCKER".to_string()),
            "{nat:?}"
        );
        assert!(
            nat.changes
                .iter()
                .any(|c| c.starts_with("removed rule nat DOCKER: -p tcp"))
        );
        let filter = d
            .iter()
            .find(|d| d.key.as_deref() == Some("filter"))
            .unwrap();
        assert_eq!(filter.changes, ["policy filter FORWARD ACCEPT -> DROP"]);
    }
}
