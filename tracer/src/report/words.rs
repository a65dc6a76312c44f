//! Every sentence, piece of evidence and fix droptrace prints about a cause, in one place:
//! verdicts (`explain`), `check`'s findings and the culprit's notes say the same thing the
//! same way.
use std::net::{IpAddr, SocketAddr};

use crate::attribute::routes::Bridge;
use crate::attribute::rules::Isolation;
use crate::observe::state::conntrack::{self, Fill};
use crate::{
    attribute::{
        Attribution, Cause, Context, Diagnosis, Died, RpFilter, Why,
        rules::{self, Blamed, How, Missing},
    },
    observe::{
        facts::{Answer, DropFacts, Hook},
        state::RuleRef,
    },
};

pub fn endpoint(addr: &IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V6(a) => format!("[{a}]:{port}"),
        IpAddr::V4(a) => format!("{a}:{port}"),
    }
}

/// `3/10 host-prohibited` or `tcp-reset`: the `icmp` field of a verdict.
pub fn answer(a: &Answer) -> String {
    match a {
        Answer::Icmp {
            icmp_type,
            code,
            name,
        } => format!("{icmp_type}/{code} {name}"),
        Answer::Rst => "tcp-reset".into(),
    }
}

/// `icmp 3/10 host-prohibited` or `rst`: the `answered` field of a drop.
pub fn answered(a: &Answer) -> String {
    match a {
        Answer::Rst => "rst".into(),
        icmp => format!("icmp {}", answer(icmp)),
    }
}

/// The command that sets `key` now, and how to make it stay.
pub fn sysctl_fix(prefix: &str, key: &str, value: &str) -> (String, String) {
    (
        format!("{prefix}sysctl -w {key}={value}"),
        format!(
            "echo '{key} = {value}' > /etc/sysctl.d/99-droptrace.conf, and find what resets it (a `sysctl -p`, a network service restart, a configuration tool)"
        ),
    )
}

const MISSING_CHAIN_FIX: &str = "restart the container engine so it rewrites its chains (systemctl restart docker), then check: iptables -t nat -S DOCKER";
const MISSING_CHAIN_KEEP: &str = "make the firewall manager keep Docker's chains (firewalld: run dockerd with its firewalld integration, or reload firewalld before starting docker; never `iptables -F` on a Docker host)";
const PODMAN_MISSING_CHAIN_FIX: &str = "have netavark rewrite its rules (podman network reload --all), then check: nft list table inet netavark, or iptables -t nat -S NETAVARK-HOSTPORT-DNAT with netavark's iptables driver";
const PODMAN_MISSING_CHAIN_KEEP: &str = "find what removes netavark's rules (a firewall reload without firewalld's netavark integration, an `nft flush ruleset` or `iptables -F`), and run `podman network reload --all` after it";
const FIREWALL_KEEP: &str = "change it where the firewall is managed (firewalld zone / nftables.conf / the tool that writes it), or it comes back on reload";

/// What a rootless engine's ports are, said by `ports`, `check` and `watch`: no DNAT and no
/// forwarding, so what droptrace attributes for rootful engines does not apply to them.
pub fn rootless_note(engine: &str, uid: Option<u32>) -> String {
    let forwarder = match engine {
        "podman" => "pasta, or slirp4netns with rootlessport",
        _ => "rootlesskit's port driver",
    };
    let uid = uid.map_or(String::new(), |u| format!(" as uid {u}"));
    format!(
        "{engine} runs rootless here{uid}: its published ports are not DNATed; a userspace forwarder ({forwarder}) listens on each host port and connects to the container from inside the engine's own network namespace. ip_forward and nat chains do not matter to these ports; a kernel drop on their way happens in this namespace's input path (watched and checked here) or inside that network namespace (watch it with --netns /proc/PID/ns/net of the forwarder's container)"
    )
}

/// How to restore a published port's DNAT now, and how to keep it, for the engine that
/// publishes it.
pub fn missing_chain_fix(engine: Option<&str>) -> (String, String) {
    match engine {
        Some("podman") => (
            PODMAN_MISSING_CHAIN_FIX.into(),
            PODMAN_MISSING_CHAIN_KEEP.into(),
        ),
        _ => (MISSING_CHAIN_FIX.into(), MISSING_CHAIN_KEEP.into()),
    }
}

/// How to stop `rule` from dropping the port's traffic now (a policy: accept the port before
/// it), and how to keep it fixed.
pub fn firewall_fix(rule: &RuleRef, prefix: &str, proto: &str, port: u16) -> (String, String) {
    // A RETURN from DOCKER-USER would only go on to the chains that lack the ACCEPT: only an
    // ACCEPT gets the packet past the policy.
    let now = if rule.policy {
        format!(
            "restart the container engine so it rewrites its ACCEPT rules (systemctl restart docker); meanwhile {prefix}iptables -I DOCKER-USER -p {proto} --dport {port} -j ACCEPT lets the port past the policy"
        )
    } else {
        match rules::delete_command(rule) {
            Some(cmd) => format!("remove or narrow the rule {}: {prefix}{cmd}", rule.text),
            None => format!("remove or narrow the rule: {}", rule.text),
        }
    };
    (now, FIREWALL_KEEP.into())
}

/// Why a published port is not translated, in one clause.
pub fn missing(m: &Missing, port: u16, proto: &str) -> String {
    match m {
        Missing::NatChainGone(h) => format!(
            "the nat chain DOCKER is gone, so nothing translates port {port} (Docker's filter rule {} still expects container {})",
            h.location, h.container
        ),
        Missing::NoDnatInChain(h) => format!(
            "the nat chain DOCKER exists but holds no DNAT for port {port} (Docker's filter rule {} still expects container {})",
            h.location, h.container
        ),
        Missing::NoDnat => format!("no DNAT rule for port {port} exists in any nat table"),
        Missing::Unreached(n) => format!(
            "the DNAT rule {} exists but nat PREROUTING no longer jumps to its chain {}",
            n.location, n.chain
        ),
        Missing::DidNotApply(n) => format!(
            "the DNAT rule {} exists but did not apply: a conntrack entry created before it may pin the old path (conntrack -D -p {proto} --dport {port})",
            n.location
        ),
    }
}

/// How a blamed rule was found, as evidence.
fn how(h: &How, port: u16) -> String {
    match h {
        How::Traced => "nftrace followed this packet to it (--trace-rules)".into(),
        How::CounterRose { from, to } => {
            format!("its packet counter rose from {from} to {to} while the drops happened")
        }
        How::NamesPort => {
            format!("it is the drop/reject rule on this hook that matches port {port}")
        }
        How::TheReject => "it is the REJECT rule on this hook".into(),
        How::Policy => "no drop rule's counter moved: the chain's policy dropped it".into(),
        How::RateLimited => "no ICMP error was sent for this packet and the chain's policy counter did not move: it is the REJECT rule on this hook, whose errors the kernel rate-limits (net.ipv4.icmp_ratelimit, icmp_msgs_per_sec), so a rejected flow's later packets look like silent drops".into(),
        How::Unconfirmed => "it is a drop rule on this hook (not confirmed by counters)".into(),
        How::Ambiguous { .. } => "neither counters nor the port tell the candidates apart".into(),
    }
}

/// Every rule an ambiguous blame names (none when one rule is blamed).
fn candidates(b: &Blamed) -> Vec<String> {
    match &b.how {
        How::Ambiguous { also } => std::iter::once(&b.rule)
            .chain(also)
            .map(|r| r.text.clone())
            .collect(),
        _ => Vec::new(),
    }
}

/// The blamed rule as a sentence names it: the rule, or the ambiguous candidates.
fn blamed_text(b: &Blamed) -> String {
    match &b.how {
        How::Ambiguous { .. } => format!("one of: {}", candidates(b).join("; ")),
        _ => b.rule.text.clone(),
    }
}

/// Explanations of the kernel's own drop reasons: (meaning, what to check or do).
fn reason(reason: &str) -> (&'static str, &'static str) {
    match reason {
        "NO_SOCKET" => (
            "nothing listens on the destination port (TCP answers it with a RST, UDP with an ICMP port unreachable)",
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
        crate::load::kernel::btf::UNREPORTED => (
            "this kernel reports no drop reason, and the function that freed the packet is not one droptrace knows",
            "look at the function in `location` in your kernel's source, or run the same check on a kernel with drop reasons (5.17+)",
        ),
        _ => (
            "the kernel dropped it with this reason",
            "look the reason up in include/net/dropreason-core.h of your kernel",
        ),
    }
}

/// Where the client sent it (before DNAT) and where it was going when it died.
fn origin_and_here(d: &DropFacts) -> (String, String) {
    let here = endpoint(&d.dst, d.dport);
    let origin = match (d.orig_dst, d.orig_dport) {
        (Some(a), Some(p)) if d.dnat == Some(true) => endpoint(&a, p),
        _ => here.clone(),
    };
    (origin, here)
}

/// What was observed of the packet itself, before any cause: the drop, the probes,
/// conntrack, the answer.
fn observed(d: &DropFacts, hook: Option<Hook>) -> Vec<String> {
    let (origin, here) = origin_and_here(d);
    if d.reason == crate::attribute::verdict::ROUTED_AWAY {
        return vec![format!(
            "{} {} {} -> {}: not dropped in this namespace; the kernel's routing decision (fib_table_lookup) is the evidence",
            d.proto,
            if d.ipv6 { "ipv6" } else { "ipv4" },
            endpoint(&d.src, d.sport),
            here,
        )];
    }
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
    if let Some(i) = &d.inferred {
        evidence.push(format!(
            "this kernel reports no drop reasons (before Linux 5.17): {} is inferred from the function that freed it, {}{}",
            i.reason,
            i.function,
            i.or_else
                .map(|o| format!(" (which also drops for {o})"))
                .unwrap_or_default()
        ));
    }
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
        Some(Answer::Icmp {
            icmp_type,
            code,
            name,
        }) => evidence.push(format!(
            "the kernel answered with ICMP {icmp_type}/{code} ({name}) just before the drop"
        )),
        Some(Answer::Rst) => evidence.push("the kernel answered with a TCP RST".into()),
        // An ICMP no REJECT sends (frag-needed, a redirect): the cause's words say it.
        None if d.routing_answer.is_some() => {}
        None if d.reason == "NETFILTER_DROP" || hook == Some(Hook::Routing) => {
            evidence.push("no ICMP error or RST was sent: clients time out".into())
        }
        None => {}
    }
    evidence
}

/// The words of a cause: (sentence, more evidence, fix, how to keep it fixed).
type Words = (String, Vec<String>, String, Option<String>);

/// Diagnoses one drop and puts it in words: the composition the observer makes, for tests.
#[cfg(test)]
pub fn attribute(
    d: &DropFacts,
    now: &crate::observe::state::Snapshot,
    ctx: &Context,
) -> Attribution {
    explain(d, crate::attribute::diagnose(d, now, ctx), ctx)
}

/// A diagnosis in words: the verdict's sentence, evidence and fixes.
pub fn explain(d: &DropFacts, diag: Diagnosis, ctx: &Context) -> Attribution {
    let mut evidence = observed(d, diag.hook);
    let (sentence, more, fix, fix_persistent) = match &diag.why {
        Why::ForwardingDisabled { sysctl, still_off } => forwarding(d, ctx, sysctl, *still_off),
        Why::MissingChain { missing, died } => missing_chain(d, ctx, missing, died),
        Why::Firewall {
            hook,
            blamed,
            reject,
            forwarding_also_off,
        } => firewall(
            d,
            ctx,
            *hook,
            blamed.as_ref(),
            *reject,
            *forwarding_also_off,
        ),
        Why::KernelDrop { rp_filter } => kernel_drop(d, ctx, rp_filter.as_ref()),
        Why::ConntrackFull {
            fill,
            stats,
            refused_since_start,
        } => conntrack_full(
            d,
            ctx,
            diag.hook,
            fill,
            (stats.as_ref(), *refused_since_start),
        ),
        Why::RouteLost { dst, bridge, via } => route_lost(d, ctx, dst, bridge, via.as_deref()),
        Why::RaIgnored {
            dst,
            uplinks,
            listed,
        } => ra_ignored(d, ctx, dst, uplinks, listed),
        Why::BridgeNetfilterOff { bridge, setting } => {
            bridge_netfilter_off(d, ctx, bridge, setting.as_deref())
        }
        Why::PathMtu {
            len,
            in_dev,
            out_dev,
            icmp_sent,
            icmp_blocked,
        } => path_mtu(
            d,
            ctx,
            (*len, in_dev, out_dev.as_ref()),
            (*icmp_sent, icmp_blocked.as_ref()),
        ),
        Why::ConntrackInvalid {
            dnat,
            rule,
            invalid_since_start,
            liberal,
            loose,
        } => conntrack_invalid(
            d,
            ctx,
            (dnat, rule.as_ref(), *invalid_since_start),
            (liberal, loose),
        ),
        Why::EngineIsolation {
            hook,
            blamed,
            isolation,
            host,
        } => engine_isolation(d, ctx, *hook, blamed, (isolation, *host)),
    };
    evidence.extend(more);
    let blamed = diag.why.blamed();
    Attribution {
        cause: diag.why.cause(),
        hook: diag.hook,
        rule: blamed
            .filter(|b| !b.is_ambiguous())
            .map(|b| b.rule.text.clone()),
        rule_candidates: blamed.map(candidates).unwrap_or_default(),
        icmp: d.answered.as_ref().map(answer),
        sentence,
        evidence,
        fix,
        fix_persistent,
        sysctl: diag.why.sysctl().map(str::to_string),
        why: diag.why,
    }
}

fn forwarding(d: &DropFacts, ctx: &Context, key: &str, still_off: bool) -> Words {
    let (global, iface_key) = rules::forwarding_keys(d.ipv6, &d.ifname);
    let evidence = if still_off {
        format!("{key} = 0 in this namespace")
    } else {
        format!(
            "{global} and {iface_key} read 1 now: forwarding was off when the packet arrived and has been turned back on since"
        )
    };
    let (origin, here) = origin_and_here(d);
    let mut evidence = vec![evidence];
    if let Some(r) = d.route.as_ref().filter(|r| !r.local) {
        evidence.push(format!(
            "the kernel routed {} -> {} via {} (table {}: a forwarding path), then {key} = 0 refused to forward it",
            SocketAddr::new(r.src, r.sport),
            SocketAddr::new(r.dst, r.dport),
            r.dev,
            r.table
        ));
    }
    let (fix, persist) = sysctl_fix(&ctx.exec_prefix, key, "1");
    let sentence = format!(
        "forwarding is disabled ({key} = 0): packets to {origin} are DNATed to {here} but the kernel will not forward them (dropped at routing, {})",
        d.location
    );
    (sentence, evidence, fix, Some(persist))
}

fn verb(reject: bool) -> &'static str {
    if reject { "rejected" } else { "dropped" }
}

fn missing_chain(d: &DropFacts, ctx: &Context, m: &Missing, died: &Died) -> Words {
    let what = missing(m, ctx.port, &d.proto);
    let mut evidence = vec![what.clone()];
    if let Some(r) = d.route.as_ref().filter(|r| r.local) {
        evidence.push(format!(
            "the routing lookup for {} chose local delivery (this host's own address, on {}): nothing had translated it to a container",
            SocketAddr::new(r.dst, r.dport),
            r.dev
        ));
    }
    let proximate = match died {
        Died::AtHook {
            hook,
            blamed: Some(b),
        } => {
            evidence.push(format!(
                "dropped by {} ({})",
                b.rule.text,
                how(&b.how, ctx.port)
            ));
            let reject = b.rejects() || d.answered.is_some();
            format!(
                "reached {} untranslated and was {} by {}",
                hook.name(),
                verb(reject),
                b.rule.text
            )
        }
        Died::AtHook { hook, blamed: None } => {
            format!(
                "reached {} untranslated and netfilter dropped it",
                hook.name()
            )
        }
        Died::NoListener => format!(
            "reached {} untranslated where nothing listens (NO_SOCKET, RST sent)",
            endpoint(&d.dst, d.dport)
        ),
    };
    let (fix, keep) = missing_chain_fix(ctx.engine);
    (
        format!("the published port's DNAT is missing: {what}; the packet {proximate}"),
        evidence,
        fix,
        Some(keep),
    )
}

fn firewall(
    d: &DropFacts,
    ctx: &Context,
    hook: Hook,
    blamed: Option<&Blamed>,
    reject: bool,
    forwarding_also_off: bool,
) -> Words {
    let mut evidence = Vec::new();
    let sentence = match blamed {
        Some(b) => {
            evidence.push(format!("{} ({})", blamed_text(b), how(&b.how, ctx.port)));
            if let (Some(engine), Some(theirs)) =
                (&b.hidden_from, b.rule.text.split_whitespace().next())
            {
                evidence.push(format!(
                    "the rule is in {theirs}, while the engine's rules are in {engine}: `{engine} -L` does not list it (nor `iptables -L` where `iptables` is {engine}); `{theirs} -L -v` does, both backends' rules apply to every packet"
                ));
            }
            format!(
                "the firewall {} it in {}: {}",
                verb(reject),
                hook.name(),
                blamed_text(b)
            )
        }
        None => {
            evidence.push("no drop/reject rule or DROP policy found for this hook in iptables or nftables: run with --trace-rules to name it".into());
            format!(
                "the firewall {} it in {} (rule not identified)",
                verb(reject),
                hook.name()
            )
        }
    };
    if forwarding_also_off {
        evidence.push("net.ipv4.ip_forward is 0 as well: once this rule is fixed, forwarding_disabled will show".into());
    }
    let (fix, keep) = match blamed {
        Some(b) if b.is_ambiguous() => (
            format!(
                "name the one rule with --trace-rules (the candidates: {}), then remove or narrow it",
                candidates(b).join("; ")
            ),
            FIREWALL_KEEP.into(),
        ),
        Some(b) if routed_past_engine(d, hook, b) => {
            evidence.push(ROUTED_POLICY.into());
            routed_policy_fix(d, &ctx.exec_prefix)
        }
        Some(b) => firewall_fix(&b.rule, &ctx.exec_prefix, &d.proto, d.dport),
        None => (
            "find the rule with --trace-rules, then remove or narrow it".into(),
            FIREWALL_KEEP.into(),
        ),
    };
    (sentence, evidence, fix, Some(keep))
}

/// Routed traffic the engine does not publish (no DNAT: a NodePort to another bridge or
/// interface, a router's traffic) that FORWARD's DROP policy took.
fn routed_past_engine(d: &DropFacts, hook: Hook, b: &Blamed) -> bool {
    hook == Hook::Forward && b.rule.policy && d.dnat != Some(true) && !b.is_ambiguous()
}

const ROUTED_POLICY: &str = "the packet is routed traffic no DNAT translated (the engine does not publish it), and FORWARD's policy is DROP: dockerd sets that policy when it turns ip_forward on, which drops every routed flow it did not open itself, NodePorts to other bridges and interfaces among them (kubernetes#40182)";

/// Accepting that routed flow before the policy: in DOCKER-USER, which dockerd puts first in
/// FORWARD and never rewrites, or by asking dockerd to leave the policy alone.
fn routed_policy_fix(d: &DropFacts, prefix: &str) -> (String, String) {
    let out = d
        .route
        .as_ref()
        .filter(|r| !r.local)
        .map(|r| format!(" -o {}", r.dev))
        .unwrap_or_default();
    let inbound = if d.ifname.is_empty() {
        String::new()
    } else {
        format!(" -i {}", d.ifname)
    };
    (
        format!(
            "{prefix}iptables -I DOCKER-USER{inbound}{out} -p {} --dport {} -j ACCEPT (DOCKER-USER is FORWARD's first rule and dockerd keeps it; without Docker: iptables -I FORWARD …), or run dockerd with --ip-forward-no-drop (Docker 28+) so it leaves FORWARD's policy ACCEPT",
            d.proto, d.dport
        ),
        "\"ip-forward-no-drop\": true in /etc/docker/daemon.json, or keep the DOCKER-USER rule in the host's firewall configuration (iptables-persistent, a unit run after docker.service): nothing saves it otherwise".into(),
    )
}

fn kernel_drop(d: &DropFacts, ctx: &Context, rp: Option<&RpFilter>) -> Words {
    let (meaning, todo) = reason(&d.reason);
    let mut evidence = Vec::new();
    let mut fix = todo.to_string();
    if let Some(rp) = rp {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".into());
        evidence.push(format!(
            "net.ipv4.conf.all.rp_filter = {}, {} = {} (the kernel uses the higher)",
            show(&rp.all),
            rp.iface_key,
            show(&rp.iface)
        ));
        fix = format!(
            "route {} back through {} or {}sysctl -w net.ipv4.conf.all.rp_filter=2 {}=2",
            d.src, d.ifname, ctx.exec_prefix, rp.iface_key
        );
    }
    evidence.push(format!("{}: {meaning}", d.reason));
    let sentence = format!(
        "the kernel dropped it: {} — {meaning} ({})",
        d.reason, d.location
    );
    (sentence, evidence, fix, None)
}

/// nf_conntrack_max to suggest: twice the limit that was reached (at least 65536, the
/// smallest default of a machine with 1 GiB).
pub fn conntrack_max_fix(max: u64) -> u64 {
    max.saturating_mul(2).max(65536)
}

/// Raising the host-wide limit, now and for good. `nf_conntrack_max` is writable only in the
/// initial namespace, so the fix runs there whatever namespace was watched; the hash table
/// grows with it (the kernel's own default is one bucket per entry).
pub fn conntrack_fix(max: u64) -> (String, String) {
    let new = conntrack_max_fix(max);
    (
        format!(
            "sysctl -w net.netfilter.nf_conntrack_max={new} && echo {new} > /sys/module/nf_conntrack/parameters/hashsize (in the host's initial namespace: the limit is one for the whole host), then find what fills the table"
        ),
        format!(
            "echo 'net.netfilter.nf_conntrack_max = {new}' > /etc/sysctl.d/90-conntrack.conf && echo 'options nf_conntrack hashsize={new}' > /etc/modprobe.d/nf_conntrack.conf"
        ),
    )
}

fn conntrack_full(
    d: &DropFacts,
    ctx: &Context,
    hook: Option<Hook>,
    fill: &Fill,
    (stats, refused_since_start): (Option<&conntrack::Stats>, Option<u64>),
) -> Words {
    let mut evidence = vec![format!(
        "nf_conntrack_count = {} in this namespace, nf_conntrack_max = {} (one limit for the whole host){}: the table is full",
        fill.count,
        fill.max,
        fill.buckets
            .map(|b| format!(", nf_conntrack_buckets = {b}"))
            .unwrap_or_default()
    )];
    if let Some(s) = stats {
        let since = refused_since_start
            .map(|n| format!(" ({n} since droptrace started)"))
            .unwrap_or_default();
        evidence.push(format!(
            "conntrack -S: drop = {}{since}, early_drop = {}, insert_failed = {}: conntrack itself refused new entries (no entry could be evicted), so no rule saw the packet and no rule's counter rose",
            s.drop, s.early_drop, s.insert_failed
        ));
    }
    evidence.push(
        "the kernel logs `nf_conntrack: table full, dropping packet` (dmesg, rate-limited)".into(),
    );
    let (fix, keep) = conntrack_fix(fill.max);
    let hook = hook.unwrap_or(Hook::PreRouting).name();
    let sentence = format!(
        "the conntrack table is full ({} of {} entries): conntrack drops the first packet of every new connection to {} in {hook}, before any firewall rule sees it; clients time out and retry",
        fill.count,
        fill.max,
        endpoint(&d.dst, d.dport),
    );
    let fix = format!(
        "{fix}: {}conntrack -L | awk '{{print $1, $4}}' | sort | uniq -c | sort -rn | head (entries by protocol and state)",
        ctx.exec_prefix
    );
    (sentence, evidence, fix, Some(keep))
}

/// Putting a lost bridge address back (now), and keeping network managers off the engine's
/// interfaces (for good).
pub fn route_fix(prefix: &str, bridge: &Bridge, engine: Option<&str>) -> (String, String) {
    let restart = match engine {
        Some("podman") => "podman network reload --all",
        _ => "systemctl restart docker",
    };
    let fix = match bridge.gateway() {
        Some((gw, len)) => format!(
            "{prefix}ip addr add {gw}/{len} dev {} (the engine's gateway address; {restart} also restores it), then stop the network manager from managing it",
            bridge.name
        ),
        None => format!(
            "{restart} (the engine re-adds {}'s address), then stop the network manager from managing it",
            bridge.name
        ),
    };
    let keep = "keep network managers off the engine's interfaces: systemd-networkd, a file /etc/systemd/network/10-container-unmanaged.network with [Match] Name=docker* br-* veth* cni* podman* and [Link] Unmanaged=yes; NetworkManager, unmanaged-devices=interface-name:docker*;interface-name:br-*;interface-name:veth* in [keyfile] of /etc/NetworkManager/conf.d/99-containers.conf".to_string();
    (fix, keep)
}

fn route_lost(
    d: &DropFacts,
    ctx: &Context,
    dst: &IpAddr,
    bridge: &Bridge,
    via: Option<&str>,
) -> Words {
    let (origin, here) = origin_and_here(d);
    let subnet = bridge
        .subnet
        .map(|(n, l)| format!(" (its subnet {n}/{l}, from {})", bridge.source))
        .unwrap_or_default();
    let lost = format!(
        "{} has no IPv4 address{subnet}: its connected route is gone, so nothing routes {dst} to it",
        bridge.name
    );
    let mut evidence = vec![lost.clone()];
    let how = match via {
        Some(dev) => {
            evidence.push(format!(
                "the kernel routed {} -> {here} via {dev} (a route that is not the bridge's): the packet leaves by the wrong interface",
                endpoint(&d.src, d.sport)
            ));
            format!("routed via {dev}, not {}", bridge.name)
        }
        None => {
            evidence.push(format!("{} at {}: no route to {dst}", d.reason, d.location));
            format!("dropped with no route ({})", d.reason)
        }
    };
    evidence.push("a network manager (systemd-networkd, NetworkManager) that takes the engine's bridge over removes its address (moby#40217, systemd#28626)".into());
    let sentence = format!(
        "the route to the container is lost: packets to {origin} are DNATed to {here} but {how}: {lost}"
    );
    let (fix, keep) = route_fix(&ctx.exec_prefix, bridge, ctx.engine);
    (sentence, evidence, fix, Some(keep))
}

/// The IPv6 default route lost to ignored router advertisements: its evidence and the
/// accept_ra fix, which lets the next advertisement restore the route.
fn ra_ignored(
    d: &DropFacts,
    ctx: &Context,
    dst: &IpAddr,
    uplinks: &[String],
    listed: &[String],
) -> Words {
    let from = endpoint(&d.src, d.sport);
    let names = uplinks.join(", ");
    let mut evidence = vec![format!("{} at {}: no route to {dst}", d.reason, d.location)];
    for u in uplinks {
        evidence.push(format!(
            "net.ipv6.conf.{u}.forwarding = 1 and net.ipv6.conf.{u}.accept_ra = 1: a forwarding interface accepts router advertisements only with accept_ra = 2, so the kernel ignores {u}'s (docker/for-linux#844)"
        ));
    }
    evidence.push(match listed {
        [] => "no IPv6 default route: turning forwarding on removed the advertised one, and no advertisement is accepted to bring it back".to_string(),
        some => format!(
            "the IPv6 default route via {} is still listed but expired: advertisements stopped renewing it",
            some.join(", ")
        ),
    });
    let sentence = format!(
        "the host lost its IPv6 default route: {from}'s packets to {dst} find no route ({}), because {names} forward IPv6 with accept_ra = 1 and the kernel ignores their router advertisements",
        d.reason
    );
    let (fix, keep) = accept_ra_fix(&ctx.exec_prefix, uplinks);
    (sentence, evidence, fix, Some(keep))
}

/// Accepting router advertisements on forwarding uplinks (accept_ra = 2), now and for good.
pub fn accept_ra_fix(p: &str, uplinks: &[String]) -> (String, String) {
    let sets: Vec<String> = uplinks
        .iter()
        .map(|u| format!("{p}sysctl -w net.ipv6.conf.{u}.accept_ra=2"))
        .collect();
    let first = uplinks.first().map_or("IFACE", String::as_str);
    let fix = format!(
        "{}; the router's next advertisement restores the route (now: {p}ip -6 route add default via ROUTER dev {first}, ROUTER from `{p}ip -6 neigh show dev {first} router`)",
        sets.join("; ")
    );
    let keep = format!(
        "/etc/sysctl.d/99-accept-ra.conf with {}; or, where systemd-networkd or netplan manages the uplink, IPv6AcceptRA=yes / accept-ra: true (they process advertisements themselves)",
        uplinks
            .iter()
            .map(|u| format!("net.ipv6.conf.{u}.accept_ra = 2"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    (fix, keep)
}

/// Docker's own remedies for its isolation rules, never "remove the rule": the engine rewrites
/// it, and it is there to protect the container.
pub fn isolation_fix(
    iso: &Isolation,
    host: Option<IpAddr>,
    port: u16,
    ctr_port: u16,
) -> (String, String) {
    let at = host.map_or_else(|| format!("HOST:{port}"), |h| endpoint(&h, port));
    match iso {
        Isolation::DirectAccess { bridge } => (
            format!(
                "connect to the published port on the host's address ({at}), not to the container's address; if clients must route to containers directly, let Docker allow it: com.docker.network.bridge.trusted_host_interfaces=IFACE on the network (docker network create -o …), dockerd --allow-direct-routing (28.2+), or the network's gateway mode nat-unprotected (-o com.docker.network.bridge.gateway_mode_ipv4=nat-unprotected); Docker's DROP for {bridge} is its protection, not a rule to delete"
            ),
            "set it where Docker keeps it: \"allow-direct-routing\": true in /etc/docker/daemon.json, or the network option in the compose file or `docker network create` (networks are created with their options)".into(),
        ),
        Isolation::Unpublished { bridge } => (
            format!(
                "publish the container port: docker run -p {port}:{ctr_port} … (or ports: [\"{port}:{ctr_port}\"] in compose), then connect to {at}; for routed access without NAT, the network's gateway mode routed or nat-unprotected; Docker's DROP for unpublished ports on {bridge} is its isolation, not a rule to delete"
            ),
            "publish it in the container's definition (compose file, run command): Docker writes the ACCEPT for each published port".into(),
        ),
    }
}

fn engine_isolation(
    d: &DropFacts,
    ctx: &Context,
    hook: Hook,
    blamed: &Blamed,
    (iso, host): (&Isolation, Option<IpAddr>),
) -> Words {
    let (origin, here) = origin_and_here(d);
    let (what, why) = match iso {
        Isolation::DirectAccess { bridge } => (
            "direct-access protection",
            format!(
                "a packet routed straight to the container's address {here} from outside {bridge} is dropped by design since Docker 28 (moby#49792): only the published port on the host's address reaches it"
            ),
        ),
        Isolation::Unpublished { bridge } => (
            "unpublished-port drop",
            format!(
                "the container port {} is not published, and Docker 28+ drops what reaches an unpublished port from outside {bridge}",
                d.dport
            ),
        ),
    };
    let evidence = vec![
        format!("{} ({})", blamed.rule.text, how(&blamed.how, ctx.port)),
        format!("the rule is Docker's own {what}: {why}"),
    ];
    let sentence = format!(
        "Docker's {what} dropped the packet to {origin} in {}: {}",
        hook.name(),
        blamed.rule.text
    );
    let (fix, keep) = isolation_fix(iso, host, ctx.port, d.dport);
    (sentence, evidence, fix, Some(keep))
}

/// Keeping mid-flow packets tracked: be_liberal keeps out-of-window segments tracked (and so
/// translated); loose lets conntrack pick a flow up again mid-stream once its entry is lost.
pub fn invalid_fix(prefix: &str, loose_off: bool) -> (String, String) {
    let loose = if loose_off {
        " net.netfilter.nf_conntrack_tcp_loose=1"
    } else {
        ""
    };
    (
        format!(
            "{prefix}sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1{loose} (conntrack then keeps such segments in their flow, so the DNAT applies; kubernetes#74839), and find what drops the flows' entries"
        ),
        format!(
            "echo 'net.netfilter.nf_conntrack_tcp_be_liberal = 1' > /etc/sysctl.d/90-conntrack-liberal.conf{}",
            if loose_off {
                " && echo 'net.netfilter.nf_conntrack_tcp_loose = 1' >> /etc/sysctl.d/90-conntrack-liberal.conf"
            } else {
                ""
            }
        ),
    )
}

/// `found`: the DNAT that did not apply, the INVALID rule that dropped it, conntrack's
/// INVALID count since the start; `sysctls`: be_liberal and loose.
fn conntrack_invalid(
    d: &DropFacts,
    ctx: &Context,
    (dnat, rule, invalid_since_start): (&str, Option<&Blamed>, Option<u64>),
    (liberal, loose): (&Option<String>, &Option<String>),
) -> Words {
    let (origin, _) = origin_and_here(d);
    let flags = crate::observe::event::tcp_flags(d.tcp_flags);
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".into());
    let mut evidence = vec![
        format!(
            "the DNAT rule {dnat} exists and is reachable, but a DNAT applies to a connection's first packet and then through its conntrack entry"
        ),
        format!(
            "this {flags} segment is not a connection's first and had no conntrack entry: conntrack found it INVALID (its entry expired or was deleted, by conntrack -D/-F or a restart, or the segment fell outside the TCP window)"
        ),
        format!(
            "nf_conntrack_tcp_be_liberal = {}, nf_conntrack_tcp_loose = {} in this namespace",
            show(liberal),
            show(loose)
        ),
    ];
    if let Some(n) = invalid_since_start {
        evidence.push(format!(
            "conntrack -S: invalid rose by {n} since droptrace started"
        ));
    }
    let fate = match rule {
        Some(b) => {
            evidence.push(format!("{} ({})", b.rule.text, how(&b.how, ctx.port)));
            format!("the INVALID drop {} took it", b.rule.text)
        }
        None => "it reached this host's own stack, where nothing listens on the port: the RST sent back resets the client's connection".into(),
    };
    let sentence = format!(
        "conntrack no longer tracks this flow: a mid-stream {flags} segment to {origin} was INVALID, so the DNAT did not translate it and {fate}"
    );
    let (fix, keep) = invalid_fix(&ctx.exec_prefix, loose.as_deref() == Some("0"));
    (sentence, evidence, fix, Some(keep))
}

/// An interface and its MTU, as the snapshot read them.
type DevMtu = (String, Option<u32>);

/// A device and its MTU, `eth-ext (MTU 1000)`.
fn dev_mtu((dev, mtu): &DevMtu) -> String {
    match mtu {
        Some(m) => format!("{dev} (MTU {m})"),
        None => dev.clone(),
    }
}

/// `sizes`: the packet's length, where it came in and where it must leave; `icmp`: whether
/// the kernel sent "fragmentation needed", and the OUTPUT rule that drops it (with its
/// counter at the start).
fn path_mtu(
    d: &DropFacts,
    ctx: &Context,
    (len, in_dev, out_dev): (u32, &DevMtu, Option<&DevMtu>),
    (icmp_sent, blocked): (bool, Option<&(RuleRef, Option<u64>)>),
) -> Words {
    let out = out_dev.map_or_else(|| "its way out".to_string(), dev_mtu);
    let mut evidence = vec![format!(
        "a {len}-byte packet {} -> {} came in on {} and must leave by {out}: larger than that MTU, with don't-fragment set, so ip_forward drops it",
        endpoint(&d.src, d.sport),
        endpoint(&d.dst, d.dport),
        dev_mtu(in_dev)
    )];
    evidence.push(match icmp_sent {
        true => "the kernel sent ICMP 3/4 \"fragmentation needed\" (IPv6: packet too big) back to the sender, which should then send smaller packets".into(),
        false => "no \"fragmentation needed\" was seen leaving for this flow".into(),
    });
    let black_hole = blocked.map(|(rule, then)| {
        let counted = match (then, rule.packets) {
            (Some(a), Some(b)) if b > *a => format!(" (its counter rose from {a} to {b})"),
            _ => String::new(),
        };
        evidence.push(format!(
            "{} drops that ICMP error in OUTPUT{counted}: the sender never learns the path's MTU, a black hole",
            rule.text
        ));
        rule
    });
    let sentence = match black_hole {
        Some(rule) => format!(
            "a path MTU black hole: packets to {} are larger than {out} allows, and {} drops the ICMP that would tell the sender, so clients hang after the first bytes",
            endpoint(&d.dst, d.dport),
            rule.text
        ),
        None => format!(
            "the path MTU is smaller than the packets: {len}-byte packets to {} cannot leave by {out} (PKT_TOO_BIG at {}); if the sender does not adapt, clients hang after the first bytes",
            endpoint(&d.dst, d.dport),
            d.location
        ),
    };
    let (fix, keep) = mtu_fix(&ctx.exec_prefix, out_dev.and_then(|(_, m)| *m), black_hole);
    (sentence, evidence, fix, Some(keep))
}

/// The engine's MTU set to the path's, the MSS clamp meanwhile, and the rule that drops the
/// ICMP error deleted (a black hole's), now and for good.
pub fn mtu_fix(prefix: &str, mtu: Option<u32>, black_hole: Option<&RuleRef>) -> (String, String) {
    let mtu = mtu.map_or("N".to_string(), |m| m.to_string());
    let mut fix = format!(
        "give the containers the path's MTU: \"mtu\": {mtu} in /etc/docker/daemon.json (docker0) or -o com.docker.network.driver.mtu={mtu} on a user network (Podman: --opt mtu={mtu}); meanwhile clamp TCP's MSS to it: {prefix}iptables -t mangle -A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"
    );
    if let Some(cmd) = black_hole.and_then(rules::delete_command) {
        fix.push_str(&format!("; and let the ICMP error out: {prefix}{cmd}"));
    }
    let keep = "the MTU in daemon.json or the network's options (networks keep the MTU they were created with: recreate them), and the MSS clamp in the host's firewall configuration".to_string();
    (fix, keep)
}

/// Loading br_netfilter and sending bridged frames through iptables, now and for good.
pub fn bridge_nf_fix(prefix: &str) -> (String, String) {
    (
        format!(
            "modprobe br_netfilter && {prefix}sysctl -w net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1"
        ),
        "echo br_netfilter > /etc/modules-load.d/br_netfilter.conf && echo 'net.bridge.bridge-nf-call-iptables = 1' > /etc/sysctl.d/90-bridge-nf.conf (dockerd loads the module when it starts; something removed it or reset the setting since)".into(),
    )
}

fn bridge_netfilter_off(
    d: &DropFacts,
    ctx: &Context,
    bridge: &str,
    setting: Option<&str>,
) -> Words {
    let (origin, here) = origin_and_here(d);
    let state = match setting {
        Some(v) => format!("net.bridge.bridge-nf-call-iptables = {v} in this namespace"),
        None => "br_netfilter is not loaded (no net.bridge.bridge-nf-call-iptables)".into(),
    };
    let evidence = vec![
        format!(
            "the kernel routed {} -> {here} back out {bridge}, the bridge it came in on: a container reaching another container on {bridge} through the published port",
            endpoint(&d.src, d.sport)
        ),
        format!(
            "{state}: the reply crosses {bridge} as a bridged frame that iptables and conntrack never see, so its source is not translated back to {origin}; the client gets a reply from {here} it never asked, resets it, and times out (moby#23358)"
        ),
    ];
    let sentence = format!(
        "bridged traffic skips netfilter on {bridge} ({state}): a container's connection to {origin} is DNATed to {here} on the same bridge, and the reply is never un-NATed"
    );
    let (fix, keep) = bridge_nf_fix(&ctx.exec_prefix);
    (sentence, evidence, fix, Some(keep))
}

/// What to say when this kernel cannot show who changed the setting a verdict is about
/// (cgroup/sysctl refused or absent: see the start line).
pub fn unrecordable_note(cause: Cause) -> String {
    format!(
        "who changed the setting cannot be recorded on this kernel (cgroup/sysctl is unavailable: see the start line's notes); {}",
        where_to_look(cause)
    )
}

fn where_to_look(cause: Cause) -> &'static str {
    match cause {
        Cause::ForwardingDisabled | Cause::KernelDrop => {
            "check /etc/sysctl.conf and /etc/sysctl.d/ for the setting, and journalctl for network restarts or `sysctl -p` runs around the time clients started failing"
        }
        Cause::MissingChain => {
            "check journalctl -u firewalld -u docker for a firewall reload or restart after dockerd started, and shell histories for `iptables -F` / `nft flush ruleset`"
        }
        Cause::BridgeNetfilterOff => {
            "check /etc/sysctl.d and /etc/modules-load.d for br_netfilter and bridge-nf-call-iptables, and what unloaded the module or reset the setting (a network service restart)"
        }
        Cause::PathMtu => {
            "check what changed an MTU (a VPN or tunnel on the uplink, a cloud network's MTU, daemon.json's mtu) and the firewall's ICMP rules (an OUTPUT or FORWARD drop of ICMP)"
        }
        Cause::ConntrackInvalid => {
            "check what removes conntrack entries (conntrack -F / -D in scripts, a conntrackd or firewall restart) and whether the clients' paths are asymmetric"
        }
        Cause::EngineIsolation => {
            "the engine wrote the rule itself (Docker 28 and later): check when the engine was upgraded (apt history, docker version) and how clients reach the container"
        }
        Cause::RouteLost => {
            "check journalctl -u systemd-networkd -u NetworkManager around the time clients started failing, and whether a manager claims the bridge (networkctl status IFACE, nmcli device status)"
        }
        Cause::ConntrackFull => {
            "check dmesg for `nf_conntrack: table full, dropping packet` and when it started, /etc/sysctl.conf and /etc/sysctl.d/ for a lowered net.netfilter.nf_conntrack_max, and `conntrack -L` for what fills the table"
        }
        Cause::FirewallDrop | Cause::FirewallReject => {
            "check the firewall's configuration (firewalld zones, /etc/nftables.conf, iptables-save files) and journalctl for who loaded it"
        }
    }
}

/// What to say when no change explaining a verdict was seen: it happened before droptrace
/// started, and no recorder's journal was there to ask.
pub fn before_start_note(cause: Cause) -> String {
    format!(
        "the change happened before droptrace started, so its author was not recorded: {}; `droptrace record` (deploy/droptrace-record.service), kept running, would have recorded the change and its author",
        where_to_look(cause)
    )
}

/// What to say when the recorder's journal has no change that explains a verdict: when it
/// recorded since (`since`, this boot), or that it did not run this boot.
pub fn unrecorded_note(cause: Cause, dir: &str, since: Option<&str>) -> String {
    let coverage = match since {
        Some(t) => format!(
            "the recorder's journal in {dir} (recording this boot since {t}) has no change that explains it: it was already so when the recorder started, or was made in a namespace the recorder does not cover"
        ),
        None => format!(
            "the recorder's journal in {dir} has no record of this boot: the recorder was not running when the change was made"
        ),
    };
    format!("{coverage}; {}", where_to_look(cause))
}

/// A culprit in a line: `net.ipv4.ip_forward 1 -> 0 at 10:02:11.123 by pid …`, or for one
/// from the recorder's journal `…, 3 h 12 min ago (journal /var/lib/droptrace), by pid …`.
pub fn culprit_line(c: &crate::observe::changes::ChangeRecord) -> String {
    let mut line = match (&c.journal, c.age_s) {
        (Some(dir), Some(age)) => format!(
            "{}, {} ago (journal {dir}), by {}",
            c.what,
            crate::journal::human_age(age),
            c.process.chain()
        ),
        _ => format!(
            "{} at {} by {}",
            c.what,
            c.time.get(11..23).unwrap_or(&c.time),
            c.process.chain()
        ),
    };
    if let Some(how) = &c.seen_by {
        line.push_str(&format!(" [{how}]"));
    }
    line
}
