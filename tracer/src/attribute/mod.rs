//! The attribution engine: one dropped packet + the namespace's state → why it died (root
//! cause), where (proximate drop: reason, hook, rule) and what fixes it.
//!
//! A pure function: no I/O, no clock. Every input is in `DropFacts` and the snapshots, so
//! each cause and each contradictory combination is unit-tested below; the integration tests
//! then prove the same verdicts against real faults.
pub mod verdict;

use std::net::IpAddr;

use serde::Serialize;

use crate::observe::state::{RuleRef, Snapshot, Sysctls};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// DNATed traffic cannot be forwarded: ip_forward (or the ingress interface's
    /// forwarding) is 0.
    ForwardingDisabled,
    /// The port is published but no DNAT translated it: the nat chain or rule is gone.
    MissingChain,
    /// A firewall rule rejected it (ICMP error or RST sent).
    FirewallReject,
    /// A firewall rule or chain policy dropped it silently.
    FirewallDrop,
    /// Any other kernel drop, named by its reason.
    KernelDrop,
}

impl Cause {
    pub fn name(self) -> &'static str {
        match self {
            Cause::ForwardingDisabled => "forwarding_disabled",
            Cause::MissingChain => "missing_chain",
            Cause::FirewallReject => "firewall_reject",
            Cause::FirewallDrop => "firewall_drop",
            Cause::KernelDrop => "kernel_drop",
        }
    }
}

/// Where in the stack the packet died.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Hook {
    #[serde(rename = "PRE_ROUTING")]
    PreRouting,
    #[serde(rename = "LOCAL_IN")]
    LocalIn,
    #[serde(rename = "FORWARD")]
    Forward,
    #[serde(rename = "LOCAL_OUT")]
    LocalOut,
    #[serde(rename = "POST_ROUTING")]
    PostRouting,
    #[serde(rename = "routing")]
    Routing,
    #[serde(rename = "socket")]
    Socket,
}

impl Hook {
    /// From the names the netfilter probes use.
    pub fn from_name(name: &str) -> Option<Hook> {
        Some(match name {
            "PRE_ROUTING" => Hook::PreRouting,
            "LOCAL_IN" => Hook::LocalIn,
            "FORWARD" => Hook::Forward,
            "LOCAL_OUT" => Hook::LocalOut,
            "POST_ROUTING" => Hook::PostRouting,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Hook::PreRouting => "PRE_ROUTING",
            Hook::LocalIn => "LOCAL_IN",
            Hook::Forward => "FORWARD",
            Hook::LocalOut => "LOCAL_OUT",
            Hook::PostRouting => "POST_ROUTING",
            Hook::Routing => "routing",
            Hook::Socket => "socket",
        }
    }
}

/// What the kernel answered the packet with, just before dropping it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `3/10`, with its name (`host-prohibited`).
    Icmp {
        code: String,
        name: &'static str,
    },
    Rst,
}

/// One dropped packet, as observed.
#[derive(Clone, Debug, PartialEq)]
pub struct DropFacts {
    pub reason: String,
    /// `ip_error`, `tcp_v4_rcv`, `nf_hook_slow`, …
    pub function: Option<String>,
    pub location: String,
    pub ipv6: bool,
    pub proto: String,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// Ingress interface name in the watched namespace.
    pub ifname: String,
    /// Conntrack: DNATed (Some(true)), tracked but not DNATed (Some(false)), not tracked yet.
    pub dnat: Option<bool>,
    pub orig_dst: Option<IpAddr>,
    pub orig_dport: Option<u16>,
    pub answered: Option<Answer>,
    /// The hook the netfilter probes saw it enter and never leave (None without probes).
    pub nf_hook: Option<Hook>,
    /// `--trace-rules`: the rule (or policy) nftrace followed this packet to.
    pub traced: Option<(String, bool)>,
}

/// What else the engine is told.
#[derive(Clone, Debug, Default)]
pub struct Context<'a> {
    /// The watched (published) port this drop matched.
    pub port: u16,
    /// Prefix that runs a command in the watched namespace (`ip netns exec NAME `), empty for
    /// droptrace's own namespace.
    pub exec_prefix: String,
    /// Snapshot taken when droptrace started (for rule counters that moved), if any.
    pub before: Option<&'a Snapshot>,
    /// Container engines' own knowledge that the port is published (Docker API).
    pub published_elsewhere: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Attribution {
    pub cause: Cause,
    pub hook: Option<Hook>,
    /// The rule or policy that dropped it, when netfilter did.
    pub rule: Option<String>,
    /// ICMP error sent (`3/10 host-prohibited`) or `tcp-reset`.
    pub icmp: Option<String>,
    /// One sentence: root → where.
    pub sentence: String,
    pub evidence: Vec<String>,
    /// The command that fixes it now.
    pub fix: String,
    /// How to keep it fixed.
    pub fix_persistent: Option<String>,
    /// The sysctl the verdict is about (forwarding, rp_filter), to find who changed it.
    pub sysctl: Option<String>,
}

const FORWARD_REASONS: &[&str] = &["IP_INADDRERRORS"];
const ROUTING_REASONS: &[&str] = &[
    "IP_INADDRERRORS",
    "IP_INNOROUTES",
    "IP_OUTNOROUTES",
    "IP_RPFILTER",
    "IP_INVALID_SOURCE",
    "IP_LOCAL_SOURCE",
    "IP_INVALID_DEST",
    "IP_LOCALNET",
    "OTHERHOST",
    "NEIGH_FAILED",
    "NEIGH_CREATEFAIL",
    "NEIGH_QUEUEFULL",
    "NEIGH_DEAD",
    "PKT_TOO_BIG",
];

/// Netfilter hook (or layer) a drop happened in.
pub fn infer_hook(d: &DropFacts, now: &Snapshot) -> Option<Hook> {
    let r = d.reason.as_str();
    if r == "NETFILTER_DROP" {
        // The probes saw it: no inference needed.
        if let Some(h) = d.nf_hook {
            return Some(h);
        }
        // Conntrack attaches at PRE_ROUTING priority -200: no entry yet means the raw table
        // (or an earlier hook) dropped it. After that, the destination tells: a local address
        // is delivered through LOCAL_IN, anything else (a DNATed container) is FORWARDed.
        return Some(match d.dnat {
            None => Hook::PreRouting,
            Some(_) if now.is_local(&d.dst) => Hook::LocalIn,
            Some(_) => Hook::Forward,
        });
    }
    if ROUTING_REASONS.contains(&r) || d.function.as_deref() == Some("ip_error") {
        return Some(Hook::Routing);
    }
    if r == "NO_SOCKET"
        || r.starts_with("TCP_")
        || r.starts_with("SOCKET_")
        || r == "PROTO_MEM"
        || r == "UDP_CSUM"
    {
        return Some(Hook::Socket);
    }
    None
}

fn endpoint(addr: &IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V6(a) => format!("[{a}]:{port}"),
        IpAddr::V4(a) => format!("{a}:{port}"),
    }
}

fn answered_text(a: &Option<Answer>) -> Option<String> {
    match a {
        Some(Answer::Icmp { code, name }) => Some(format!("{code} {name}")),
        Some(Answer::Rst) => Some("tcp-reset".into()),
        None => None,
    }
}

/// The rule that dropped it: one whose packet counter rose since the start snapshot; else the
/// one rule on that hook naming the port; else a REJECT if an ICMP error was sent; else the
/// chain policy; else any candidate. Returns the rule and how it was chosen.
fn pick_rule(
    hook: Hook,
    port: u16,
    now: &Snapshot,
    before: Option<&Snapshot>,
    d: &DropFacts,
) -> Option<(RuleRef, String)> {
    let answered = &d.answered;
    if let Some((text, policy)) = &d.traced {
        let reject = text.to_lowercase().contains("reject");
        return Some((
            RuleRef {
                text: format!("nftables {text}"),
                verdict: if reject { "REJECT" } else { "DROP" }.into(),
                reject_with: None,
                packets: None,
                names_port: true,
                policy: *policy,
            },
            "nftrace followed this packet to it (--trace-rules)".into(),
        ));
    }
    let candidates = now.blockers(hook.name(), port);
    if candidates.is_empty() {
        return None;
    }
    if let Some(before) = before {
        let old = before.blockers(hook.name(), port);
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
        if let Some((rule, a, b)) = moved.first() {
            return Some((
                (*rule).clone(),
                format!("its packet counter rose from {a} to {b} while the drops happened"),
            ));
        }
    }
    let wants_reject = answered.is_some();
    let naming: Vec<&RuleRef> = candidates
        .iter()
        .filter(|c| c.names_port && !c.policy)
        .filter(|c| !wants_reject || c.verdict == "REJECT")
        .collect();
    if let Some(rule) = naming.first() {
        return Some((
            (*rule).clone(),
            format!("it is the drop/reject rule on this hook that matches port {port}"),
        ));
    }
    if wants_reject && let Some(rule) = candidates.iter().find(|c| c.verdict == "REJECT") {
        return Some((rule.clone(), "it is the REJECT rule on this hook".into()));
    }
    if let Some(policy) = candidates.iter().find(|c| c.policy) {
        return Some((
            policy.clone(),
            "no drop rule's counter moved: the chain's policy dropped it".into(),
        ));
    }
    candidates.first().map(|c| {
        (
            c.clone(),
            "it is a drop rule on this hook (not confirmed by counters)".into(),
        )
    })
}

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

/// The forwarding sysctl that is off for such traffic, the global switch first. One rule for
/// verdicts and for `check`.
pub fn forwarding_off(sysctls: &Sysctls, ipv6: bool, ifname: &str) -> Option<String> {
    let (global, iface) = forwarding_keys(ipv6, ifname);
    [global, iface]
        .into_iter()
        .find(|k| sysctls.flag(k) == Some(false))
}

/// The command that sets `key` now, and how to make it stay: the same words in verdicts and
/// in `check`'s findings.
pub fn sysctl_fix(prefix: &str, key: &str, value: &str) -> (String, String) {
    (
        format!("{prefix}sysctl -w {key}={value}"),
        format!(
            "echo '{key} = {value}' > /etc/sysctl.d/99-droptrace.conf, and find what resets it (a `sysctl -p`, a network service restart, a configuration tool)"
        ),
    )
}

/// Explanations of the kernel's own drop reasons: (meaning, what to check or do).
fn explain(reason: &str) -> (&'static str, &'static str) {
    match reason {
        "NO_SOCKET" => (
            "nothing listens on the destination port (the kernel answered with a RST)",
            "start the service, or check that it listens on this address and port (ss -ltnp)",
        ),
        "IP_RPFILTER" => (
            "reverse-path filter: the source is not routed back through the interface the packet came in on",
            "add a route back to the source through that interface, or relax rp_filter to loose mode (sysctl -w net.ipv4.conf.all.rp_filter=2 and the interface's)",
        ),
        "IP_INNOROUTES" | "IP_OUTNOROUTES" => (
            "no route to the destination",
            "add the missing route (ip route) or fix the address",
        ),
        "IP_INADDRERRORS" => (
            "the destination is not a valid forwarding target",
            "check forwarding sysctls and routes (ip route get DST iif IFACE from SRC)",
        ),
        "NEIGH_FAILED" | "NEIGH_QUEUEFULL" | "NEIGH_DEAD" | "NEIGH_CREATEFAIL" => (
            "the next hop's link-layer address could not be resolved (ARP/ND)",
            "check that the next hop (the container) is up and on the bridge (ip neigh)",
        ),
        "TCP_LISTEN_OVERFLOW" | "SOCKET_BACKLOG" => (
            "the listening socket's accept queue is full: the service accepts too slowly",
            "raise the service's listen backlog / net.core.somaxconn, or add capacity",
        ),
        "SOCKET_RCVBUFF" | "PROTO_MEM" => (
            "socket or protocol memory is exhausted",
            "check net.ipv4.tcp_mem / udp_mem and the receiving application",
        ),
        "CPU_BACKLOG" => (
            "the per-CPU input backlog is full (a packet storm)",
            "raise net.core.netdev_max_backlog; find the source of the storm",
        ),
        "OTHERHOST" => (
            "the packet was addressed to another host's MAC",
            "check the bridge/veth setup and promiscuous interfaces",
        ),
        "TCP_INVALID_SEQUENCE" | "TCP_OLD_SEQUENCE" | "TCP_INVALID_ACK_SEQUENCE" => (
            "TCP segment outside the connection's window (often a stale or asymmetric conntrack path)",
            "check for asymmetric routing and conntrack state (conntrack -L)",
        ),
        _ => (
            "the kernel dropped it with this reason",
            "look the reason up in include/net/dropreason-core.h of your kernel",
        ),
    }
}

/// Attributes one drop. `now` is the namespace's state at (or just after) the drop.
pub fn attribute(d: &DropFacts, now: &Snapshot, ctx: &Context) -> Attribution {
    let hook = infer_hook(d, now);
    let prefix = ctx.exec_prefix.as_str();
    let icmp = answered_text(&d.answered);
    let here = endpoint(&d.dst, d.dport);
    let origin = match (d.orig_dst, d.orig_dport) {
        (Some(a), Some(p)) if d.dnat == Some(true) => endpoint(&a, p),
        _ => here.clone(),
    };
    let mut evidence = vec![format!(
        "{} {} {} -> {} dropped with {} at {}{}",
        d.proto,
        if d.ipv6 { "ipv6" } else { "ipv4" },
        endpoint(&d.src, d.sport),
        here,
        d.reason,
        d.location,
        hook.map(|h| format!(" (hook {})", h.name()))
            .unwrap_or_default()
    )];
    if let Some(h) = d.nf_hook {
        evidence.push(format!(
            "netfilter hook probes saw it enter {} and never leave it",
            h.name()
        ));
    }
    match d.dnat {
        Some(true) => evidence.push(format!("conntrack: DNAT had rewritten {origin} to {here}")),
        Some(false) => evidence.push(format!("conntrack: {here} was not translated by any DNAT")),
        None => {}
    }
    match &d.answered {
        Some(Answer::Icmp { code, name }) => evidence.push(format!(
            "the kernel answered with ICMP {code} ({name}) just before the drop"
        )),
        Some(Answer::Rst) => evidence.push("the kernel answered with a TCP RST".into()),
        None if d.reason == "NETFILTER_DROP" || hook == Some(Hook::Routing) => {
            evidence.push("no ICMP error or RST was sent: clients time out".into())
        }
        None => {}
    }

    // 1. Forwarding disabled: a packet for a non-local (DNATed) destination refused by the
    // routing step with IP_INADDRERRORS at ip_error (measured on 6.18 for both sysctls).
    let routed_away = !now.is_local(&d.dst);
    if routed_away
        && (FORWARD_REASONS.contains(&d.reason.as_str())
            || d.function.as_deref() == Some("ip_error"))
        && d.reason != "IP_RPFILTER"
    {
        let (global, iface_key) = forwarding_keys(d.ipv6, &d.ifname);
        let key = forwarding_off(&now.sysctls, d.ipv6, &d.ifname);
        let shown = key.clone().unwrap_or(global.clone());
        match &key {
            Some(k) => evidence.push(format!("{k} = 0 in this namespace")),
            None => evidence.push(format!(
                "{global} and {iface_key} read 1 now: forwarding was off when the packet arrived and has been turned back on since"
            )),
        }
        let (fix, persist) = sysctl_fix(prefix, &shown, "1");
        let sentence = format!(
            "forwarding is disabled ({shown} = 0): packets to {origin} are DNATed to {here} but the kernel will not forward them (dropped at routing, {})",
            d.location
        );
        return Attribution {
            cause: Cause::ForwardingDisabled,
            hook: Some(Hook::Routing),
            rule: None,
            icmp,
            sentence,
            evidence,
            fix,
            fix_persistent: Some(persist),
            sysctl: Some(shown),
        };
    }

    // 2. Missing chain: the packet reached this host untranslated although the port is
    // published (a DNAT exists but did not apply, or Docker's filter rules still accept the
    // container port while the nat side is gone).
    let untranslated = d.dnat != Some(true) && now.is_local(&d.dst);
    let dnats = now.dnats_for(ctx.port);
    let hints = now.published_hints(ctx.port);
    let published = ctx.published_elsewhere || !dnats.is_empty() || !hints.is_empty();
    let relevant = matches!(d.reason.as_str(), "NETFILTER_DROP" | "NO_SOCKET");
    if untranslated && published && relevant && hook != Some(Hook::PreRouting) {
        let what = if dnats.is_empty() {
            if !hints.is_empty() && !now.nat_chain_exists("DOCKER") {
                format!(
                    "the nat chain DOCKER is gone, so nothing translates port {} (Docker's filter rule {} still expects container {})",
                    ctx.port, hints[0].location, hints[0].container
                )
            } else if let Some(h) = hints.first() {
                format!(
                    "the nat chain DOCKER exists but holds no DNAT for port {} (Docker's filter rule {} still expects container {})",
                    ctx.port, h.location, h.container
                )
            } else {
                format!("no DNAT rule for port {} exists in any nat table", ctx.port)
            }
        } else if dnats.iter().all(|n| !n.reachable) {
            format!(
                "the DNAT rule {} exists but nat PREROUTING no longer jumps to its chain {}",
                dnats[0].location, dnats[0].chain
            )
        } else {
            format!(
                "the DNAT rule {} exists but did not apply: a conntrack entry created before it may pin the old path (conntrack -D -p {} --dport {})",
                dnats[0].location, d.proto, ctx.port
            )
        };
        evidence.push(what.clone());
        let (rule, proximate_text) = if d.reason == "NETFILTER_DROP" {
            let h = hook.unwrap_or(Hook::LocalIn);
            match pick_rule(h, ctx.port, now, ctx.before, d) {
                Some((r, why)) => {
                    evidence.push(format!("dropped by {} ({why})", r.text));
                    let verb = if r.verdict == "REJECT" || d.answered.is_some() {
                        "rejected"
                    } else {
                        "dropped"
                    };
                    let text = format!(
                        "reached {} untranslated and was {verb} by {}",
                        h.name(),
                        r.text
                    );
                    (Some(r.text), text)
                }
                None => (
                    None,
                    format!("reached {} untranslated and netfilter dropped it", h.name()),
                ),
            }
        } else {
            (
                None,
                format!("reached {here} untranslated where nothing listens (NO_SOCKET, RST sent)"),
            )
        };
        return Attribution {
            cause: Cause::MissingChain,
            hook,
            rule,
            icmp,
            sentence: format!("the published port's DNAT is missing: {what}; the packet {proximate_text}"),
            evidence,
            fix: "restart the container engine so it rewrites its chains (systemctl restart docker), then check: iptables -t nat -S DOCKER".into(),
            sysctl: None,
            fix_persistent: Some(
                "make the firewall manager keep Docker's chains (firewalld: run dockerd with its firewalld integration, or reload firewalld before starting docker; never `iptables -F` on a Docker host)".into(),
            ),
        };
    }

    // 3. Netfilter: a rule or policy.
    if d.reason == "NETFILTER_DROP" {
        let h = hook.unwrap_or(Hook::Forward);
        let picked = pick_rule(h, ctx.port, now, ctx.before, d);
        let reject = d.answered.is_some()
            || picked
                .as_ref()
                .map(|(r, _)| r.verdict == "REJECT")
                .unwrap_or(false);
        let cause = if reject {
            Cause::FirewallReject
        } else {
            Cause::FirewallDrop
        };
        let verb = if reject { "rejected" } else { "dropped" };
        let (rule, sentence) = match &picked {
            Some((r, why)) => {
                evidence.push(format!("{} ({why})", r.text));
                (
                    Some(r.text.clone()),
                    format!("the firewall {verb} it in {}: {}", h.name(), r.text),
                )
            }
            None => {
                evidence.push("no drop/reject rule or DROP policy found for this hook in iptables or nftables: run with --trace-rules to name it".into());
                (
                    None,
                    format!(
                        "the firewall {verb} it in {} (rule not identified)",
                        h.name()
                    ),
                )
            }
        };
        if h != Hook::Forward && now.sysctls.flag("net.ipv4.ip_forward") == Some(false) && !d.ipv6 {
            evidence.push("net.ipv4.ip_forward is 0 as well: once this rule is fixed, forwarding_disabled will show".into());
        }
        let fix = match &picked {
            Some((r, _)) if r.policy => format!(
                "accept the port before the policy applies, e.g. {prefix}iptables -I DOCKER-USER -p {} --dport {} -j RETURN (or restart the container engine so it rewrites its ACCEPT rules)",
                d.proto, d.dport
            ),
            Some((r, _)) => format!("remove or narrow the rule: {}", r.text),
            None => "find the rule with --trace-rules, then remove or narrow it".into(),
        };
        return Attribution {
            cause,
            hook: Some(h),
            rule,
            icmp,
            sentence,
            evidence,
            fix,
            sysctl: None,
            fix_persistent: Some("change it where the firewall is managed (firewalld zone / nftables.conf / the tool that writes it), or it comes back on reload".into()),
        };
    }

    // 4. Anything else the kernel reports, by its reason.
    let (meaning, todo) = explain(&d.reason);
    let mut fix = todo.to_string();
    let mut sysctl = None;
    if d.reason == "IP_RPFILTER" {
        let iface_key = format!("net.ipv4.conf.{}.rp_filter", d.ifname);
        let all = now
            .sysctls
            .get("net.ipv4.conf.all.rp_filter")
            .unwrap_or("?");
        let iface = now.sysctls.get(&iface_key).unwrap_or("?");
        evidence.push(format!("net.ipv4.conf.all.rp_filter = {all}, {iface_key} = {iface} (the kernel uses the higher)"));
        fix = format!(
            "route {} back through {} or {prefix}sysctl -w net.ipv4.conf.all.rp_filter=2 {iface_key}=2",
            d.src, d.ifname
        );
        sysctl = Some(if now.sysctls.get(&iface_key) == Some("0") {
            "net.ipv4.conf.all.rp_filter".to_string()
        } else {
            iface_key
        });
    }
    evidence.push(format!("{}: {meaning}", d.reason));
    Attribution {
        cause: Cause::KernelDrop,
        hook,
        rule: None,
        icmp,
        sentence: format!(
            "the kernel dropped it: {} — {meaning} ({})",
            d.reason, d.location
        ),
        evidence,
        fix,
        fix_persistent: None,
        sysctl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::state::{iptables, nft};

    const DOCKER_RULES: &str =
        include_str!("../observe/state/testdata/iptables-legacy-save-docker.txt");

    fn snapshot(rules: &str) -> Snapshot {
        let mut sysctls = Sysctls::default();
        sysctls.set("net.ipv4.ip_forward", "1");
        sysctls.set("net.ipv4.conf.eth-ext.forwarding", "1");
        sysctls.set("net.ipv4.conf.all.rp_filter", "0");
        Snapshot {
            sysctls,
            interfaces: vec!["lo".into(), "eth-ext".into(), "docker0".into()],
            local_addrs: vec![
                "198.51.100.1".parse().unwrap(),
                "172.17.0.1".parse().unwrap(),
                "127.0.0.1".parse().unwrap(),
            ],
            iptables: vec![iptables::parse("iptables-legacy", rules)],
            nft: nft::Ruleset::default(),
            problems: vec![],
        }
    }

    fn docker() -> Snapshot {
        snapshot(DOCKER_RULES)
    }

    /// Docker's rules with one line removed or added.
    fn docker_edited(remove: &[&str], add_after: Option<(&str, &str)>) -> Snapshot {
        let mut lines: Vec<String> = DOCKER_RULES
            .lines()
            .filter(|l| !remove.iter().any(|r| l.contains(r)))
            .map(str::to_string)
            .collect();
        if let Some((anchor, new)) = add_after {
            let at = lines
                .iter()
                .position(|l| l.contains(anchor))
                .expect("anchor")
                + 1;
            lines.insert(at, new.to_string());
        }
        snapshot(&lines.join("\n"))
    }

    fn syn(reason: &str, function: &str, dst: &str, dnat: Option<bool>) -> DropFacts {
        DropFacts {
            reason: reason.into(),
            function: Some(function.into()),
            location: format!("{function}+0x10"),
            ipv6: false,
            proto: "tcp".into(),
            src: "198.51.100.2".parse().unwrap(),
            sport: 40000,
            dst: dst.parse().unwrap(),
            dport: 5000,
            ifname: "eth-ext".into(),
            dnat,
            orig_dst: dnat.filter(|d| *d).map(|_| "198.51.100.1".parse().unwrap()),
            orig_dport: dnat.filter(|d| *d).map(|_| 5000),
            answered: None,
            nf_hook: None,
            traced: None,
        }
    }

    fn ctx() -> Context<'static> {
        Context {
            port: 5000,
            exec_prefix: "ip netns exec host ".into(),
            ..Context::default()
        }
    }

    #[test]
    fn forwarding_disabled_is_named_with_its_sysctl() {
        let mut now = docker();
        now.sysctls.set("net.ipv4.ip_forward", "0");
        let a = attribute(
            &syn("IP_INADDRERRORS", "ip_error", "172.17.0.2", Some(true)),
            &now,
            &ctx(),
        );
        assert_eq!(a.cause, Cause::ForwardingDisabled);
        assert_eq!(a.hook, Some(Hook::Routing));
        assert_eq!(a.fix, "ip netns exec host sysctl -w net.ipv4.ip_forward=1");
        assert!(a.fix_persistent.unwrap().contains("/etc/sysctl.d/"));
        assert!(a.sentence.contains("198.51.100.1:5000") && a.sentence.contains("172.17.0.2:5000"));
        assert!(a.evidence.iter().any(|e| e.contains("no ICMP")));
    }

    #[test]
    fn only_the_ingress_interface_forwarding_off_is_named() {
        let mut now = docker();
        now.sysctls.set("net.ipv4.conf.eth-ext.forwarding", "0");
        let a = attribute(
            &syn("IP_INADDRERRORS", "ip_error", "172.17.0.2", Some(true)),
            &now,
            &ctx(),
        );
        assert_eq!(a.cause, Cause::ForwardingDisabled);
        assert!(
            a.fix
                .ends_with("sysctl -w net.ipv4.conf.eth-ext.forwarding=1"),
            "{}",
            a.fix
        );
    }

    #[test]
    fn forwarding_turned_back_on_is_said_honestly() {
        let a = attribute(
            &syn("IP_INADDRERRORS", "ip_error", "172.17.0.2", Some(true)),
            &docker(),
            &ctx(),
        );
        assert_eq!(a.cause, Cause::ForwardingDisabled);
        assert!(
            a.evidence.iter().any(|e| e.contains("turned back on")),
            "{:#?}",
            a.evidence
        );
    }

    #[test]
    fn nat_chain_gone_with_no_listener_is_missing_chain_at_the_socket() {
        let now = docker_edited(&[":DOCKER - [", "-A DOCKER ", "-j DOCKER"], None);
        // The filter side (a separate table) still has its DOCKER chain: re-add it.
        let now = {
            let mut s = now;
            s.iptables = vec![iptables::parse(
                "iptables-legacy",
                &DOCKER_RULES
                    .split("*nat")
                    .next()
                    .map(|filter| format!("{filter}*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"))
                    .unwrap(),
            )];
            s
        };
        assert!(!now.nat_chain_exists("DOCKER"));
        let mut d = syn("NO_SOCKET", "tcp_v4_rcv", "198.51.100.1", Some(false));
        d.answered = Some(Answer::Rst);
        let a = attribute(&d, &now, &ctx());
        assert_eq!(a.cause, Cause::MissingChain);
        assert_eq!(a.hook, Some(Hook::Socket));
        assert!(
            a.sentence.contains("nat chain DOCKER is gone"),
            "{}",
            a.sentence
        );
        assert_eq!(a.icmp.as_deref(), Some("tcp-reset"));
    }

    #[test]
    fn dnat_rule_gone_and_input_reject_is_missing_chain_rejected_in_local_in() {
        let now = docker_edited(
            &["-j DNAT"],
            Some((
                ":DOCKER-USER",
                "[3:180] -A INPUT -j REJECT --reject-with icmp-host-prohibited",
            )),
        );
        let mut d = syn(
            "NETFILTER_DROP",
            "nf_hook_slow",
            "198.51.100.1",
            Some(false),
        );
        d.answered = Some(Answer::Icmp {
            code: "3/10".into(),
            name: "host-prohibited",
        });
        let a = attribute(&d, &now, &ctx());
        assert_eq!(a.cause, Cause::MissingChain);
        assert_eq!(a.hook, Some(Hook::LocalIn));
        let rule = a.rule.expect("rule");
        assert!(rule.contains("filter INPUT rule 1"), "{rule}");
        assert!(
            a.sentence.contains("holds no DNAT for port 5000"),
            "{}",
            a.sentence
        );
        assert!(a.sentence.contains("rejected by"), "{}", a.sentence);
    }

    #[test]
    fn prerouting_jump_removed_is_missing_chain() {
        let now = docker_edited(&["-A PREROUTING -m addrtype"], None);
        let a = attribute(
            &syn("NO_SOCKET", "tcp_v4_rcv", "198.51.100.1", Some(false)),
            &now,
            &ctx(),
        );
        assert_eq!(a.cause, Cause::MissingChain);
        assert!(a.sentence.contains("no longer jumps"), "{}", a.sentence);
    }

    #[test]
    fn forward_reject_is_firewall_reject_naming_the_rule() {
        let now = docker_edited(
            &[],
            Some((
                ":DOCKER-USER",
                "[2:120] -A FORWARD -p tcp -m tcp --dport 5000 -j REJECT --reject-with icmp-host-prohibited",
            )),
        );
        let mut d = syn("NETFILTER_DROP", "nf_hook_slow", "172.17.0.2", Some(true));
        d.answered = Some(Answer::Icmp {
            code: "3/10".into(),
            name: "host-prohibited",
        });
        let before = docker();
        let c = Context {
            before: Some(&before),
            ..ctx()
        };
        let a = attribute(&d, &now, &c);
        assert_eq!(a.cause, Cause::FirewallReject);
        assert_eq!(a.hook, Some(Hook::Forward));
        assert!(
            a.rule
                .unwrap()
                .contains("filter FORWARD rule 1: -p tcp -m tcp --dport 5000 -j REJECT")
        );
        assert_eq!(a.icmp.as_deref(), Some("3/10 host-prohibited"));
        assert!(
            a.evidence
                .iter()
                .any(|e| e.contains("counter rose from 0 to 2")),
            "{:#?}",
            a.evidence
        );
    }

    #[test]
    fn docker_user_drop_is_firewall_drop_by_counter() {
        let before = docker_edited(
            &[],
            Some((
                "-A DOCKER-USER -j RETURN",
                "[0:0] -A DOCKER-USER -p tcp -m tcp --dport 5000 -j DROP",
            )),
        );
        let now = docker_edited(
            &[],
            Some((
                "-A DOCKER-USER -j RETURN",
                "[4:240] -A DOCKER-USER -p tcp -m tcp --dport 5000 -j DROP",
            )),
        );
        let c = Context {
            before: Some(&before),
            ..ctx()
        };
        let a = attribute(
            &syn("NETFILTER_DROP", "nf_hook_slow", "172.17.0.2", Some(true)),
            &now,
            &c,
        );
        assert_eq!(a.cause, Cause::FirewallDrop);
        assert!(a.rule.unwrap().contains("DOCKER-USER rule 2"));
    }

    #[test]
    fn flushed_filter_leaves_the_forward_policy_as_the_dropper() {
        let now = snapshot(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n[1:60] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n[1:60] -A DOCKER ! -i docker0 -p tcp -m tcp --dport 5000 -j DNAT --to-destination 172.17.0.2:5000\nCOMMIT\n",
        );
        let a = attribute(
            &syn("NETFILTER_DROP", "nft_do_chain", "172.17.0.2", Some(true)),
            &now,
            &ctx(),
        );
        assert_eq!(a.cause, Cause::FirewallDrop);
        assert!(a.rule.unwrap().contains("FORWARD policy DROP"));
        assert!(a.fix.contains("DOCKER-USER"));
    }

    #[test]
    fn nftables_native_drop_in_its_own_table_is_named() {
        let mut now = docker();
        now.nft = nft::parse(include_str!(
            "../observe/state/testdata/nft-list-ruleset-blocker.json"
        ))
        .unwrap();
        // Docker's own rules are iptables-legacy here; the only forward blocker by port is nft.
        let a = attribute(
            &syn("NETFILTER_DROP", "nft_do_chain", "172.17.0.2", Some(true)),
            &now,
            &ctx(),
        );
        assert_eq!(a.cause, Cause::FirewallDrop);
        assert!(
            a.rule
                .unwrap()
                .contains("table inet blocker chain forward_block handle 2")
        );
    }

    #[test]
    fn raw_prerouting_drop_before_conntrack_is_placed_there() {
        let now = docker_edited(
            &[],
            Some((
                "COMMIT",
                "*raw\n:PREROUTING ACCEPT [0:0]\n[1:60] -A PREROUTING -p tcp -m tcp --dport 5000 -j DROP\nCOMMIT",
            )),
        );
        let a = attribute(
            &syn("NETFILTER_DROP", "nf_hook_slow", "198.51.100.1", None),
            &now,
            &ctx(),
        );
        assert_eq!(a.hook, Some(Hook::PreRouting));
        assert_eq!(
            a.cause,
            Cause::FirewallDrop,
            "before DNAT: not a missing chain"
        );
        assert!(a.rule.unwrap().contains("raw PREROUTING rule 1"));
    }

    #[test]
    fn a_traced_rule_wins_over_counters_and_guesses() {
        let mut d = syn("NETFILTER_DROP", "nft_do_chain", "172.17.0.2", Some(true));
        d.traced = Some((
            "ip filter DOCKER-USER rule tcp dport 5000 counter packets 0 bytes 0 drop".into(),
            false,
        ));
        let a = attribute(&d, &docker(), &ctx());
        assert_eq!(a.cause, Cause::FirewallDrop);
        assert_eq!(
            a.rule.as_deref(),
            Some(
                "nftables ip filter DOCKER-USER rule tcp dport 5000 counter packets 0 bytes 0 drop"
            )
        );
        assert!(a.evidence.iter().any(|e| e.contains("--trace-rules")));
    }

    #[test]
    fn probes_override_the_inference() {
        // Inference alone would say LOCAL_IN (local destination); the probes saw PRE_ROUTING
        // (e.g. an nft prerouting filter chain after conntrack).
        let mut d = syn(
            "NETFILTER_DROP",
            "nft_do_chain",
            "198.51.100.1",
            Some(false),
        );
        d.nf_hook = Some(Hook::PreRouting);
        let a = attribute(&d, &docker(), &ctx());
        assert_eq!(a.hook, Some(Hook::PreRouting));
        assert!(
            a.evidence
                .iter()
                .any(|e| e.contains("probes saw it enter PRE_ROUTING"))
        );
    }

    #[test]
    fn netfilter_drop_while_forwarding_is_off_blames_the_rule_and_warns() {
        let mut now = docker_edited(
            &[],
            Some((
                "COMMIT",
                "*raw\n:PREROUTING ACCEPT [0:0]\n[1:60] -A PREROUTING -p tcp -m tcp --dport 5000 -j DROP\nCOMMIT",
            )),
        );
        now.sysctls.set("net.ipv4.ip_forward", "0");
        let a = attribute(
            &syn("NETFILTER_DROP", "nf_hook_slow", "198.51.100.1", None),
            &now,
            &ctx(),
        );
        assert_eq!(a.cause, Cause::FirewallDrop);
        assert!(
            a.evidence
                .iter()
                .any(|e| e.contains("forwarding_disabled will show"))
        );
    }

    #[test]
    fn closed_port_that_was_never_published_is_a_kernel_drop() {
        let now = docker();
        let mut c = ctx();
        c.port = 5001;
        let mut d = syn("NO_SOCKET", "tcp_v4_rcv", "198.51.100.1", Some(false));
        d.dport = 5001;
        let a = attribute(&d, &now, &c);
        assert_eq!(a.cause, Cause::KernelDrop);
        assert!(a.sentence.contains("nothing listens"));
    }

    #[test]
    fn rp_filter_is_explained_with_its_sysctls() {
        let mut now = docker();
        now.sysctls.set("net.ipv4.conf.all.rp_filter", "1");
        let mut d = syn("IP_RPFILTER", "ip_rcv_finish", "198.51.100.1", None);
        d.src = "203.0.113.9".parse().unwrap();
        let a = attribute(&d, &now, &ctx());
        assert_eq!(a.cause, Cause::KernelDrop);
        assert_eq!(a.hook, Some(Hook::Routing));
        assert!(a.fix.contains("rp_filter=2"), "{}", a.fix);
        assert!(
            a.evidence
                .iter()
                .any(|e| e.contains("net.ipv4.conf.all.rp_filter = 1"))
        );
    }

    #[test]
    fn a_rst_from_a_host_listener_is_no_drop_and_an_unknown_reason_is_still_explained() {
        // A listener on the host answers (no drop, no verdict); what reaches the engine is
        // only ever a drop, so an unknown reason must still give a sentence and a fix.
        let a = attribute(
            &syn("SOME_FUTURE_REASON", "foo", "198.51.100.1", Some(false)),
            &docker(),
            &ctx(),
        );
        assert_eq!(a.cause, Cause::KernelDrop);
        assert!(a.sentence.contains("SOME_FUTURE_REASON"));
        assert!(!a.fix.is_empty());
    }

    #[test]
    fn ipv6_forwarding_uses_the_ipv6_sysctl() {
        let mut now = docker();
        now.sysctls.set("net.ipv6.conf.all.forwarding", "0");
        let mut d = syn(
            "IP_INADDRERRORS",
            "ip6_forward",
            "2001:db8:2::2",
            Some(true),
        );
        d.ipv6 = true;
        d.src = "2001:db8:1::2".parse().unwrap();
        let a = attribute(&d, &now, &ctx());
        assert_eq!(a.cause, Cause::ForwardingDisabled);
        assert!(a.fix.contains("net.ipv6.conf.all.forwarding=1"));
    }
}
