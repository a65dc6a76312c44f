//! Stage 4, the attribution engine: one dropped packet + the namespace's state → why it died
//! (a typed [`Why`]), where (the hook) and which rule. Pure: no I/O, no clock, no words.
//! `report::words` turns a diagnosis into the sentence, evidence and fix a user reads.
//!
//! Every input is in `DropFacts` and the snapshots, so each cause and each contradictory
//! combination is unit-tested below on typed sub-causes; the integration tests then prove the
//! same verdicts against real faults.
pub mod culprit;
pub mod routes;
pub mod rules;
pub mod verdict;

use serde::Serialize;

pub use crate::observe::facts::{Answer, DropFacts, Hook};
use crate::observe::state::RuleRef;
use crate::{
    load::kernel::btf::UNREPORTED,
    observe::state::{
        Snapshot,
        conntrack::{self, Fill},
    },
};
use rules::{Blamed, Missing};

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
    /// The conntrack table is full: conntrack itself refused the new connection's entry and
    /// dropped its packet before any rule saw it.
    ConntrackFull,
    /// The container's bridge lost its address and connected route: DNATed packets find no
    /// route, or leave by another interface.
    RouteLost,
    /// The engine's own isolation rule dropped it, by design (Docker 28+: direct access to a
    /// container's address, or an unpublished container port).
    EngineIsolation,
    /// Conntrack no longer tracks the flow (its entry lost, or the packet out of the TCP
    /// window): the packet is INVALID, the DNAT does not apply to it.
    ConntrackInvalid,
    /// Packets larger than the way out (PKT_TOO_BIG): a path MTU smaller than the
    /// container's, a black hole when the ICMP that would say so is dropped.
    PathMtu,
    /// Bridged replies skip netfilter (br_netfilter absent or bridge-nf-call-iptables=0): a
    /// container reaching another through a published port gets replies never un-NATed.
    BridgeNetfilterOff,
}

impl Cause {
    pub fn name(self) -> &'static str {
        match self {
            Cause::ForwardingDisabled => "forwarding_disabled",
            Cause::MissingChain => "missing_chain",
            Cause::FirewallReject => "firewall_reject",
            Cause::FirewallDrop => "firewall_drop",
            Cause::KernelDrop => "kernel_drop",
            Cause::ConntrackFull => "conntrack_full",
            Cause::RouteLost => "route_lost",
            Cause::EngineIsolation => "engine_isolation",
            Cause::ConntrackInvalid => "conntrack_invalid",
            Cause::PathMtu => "path_mtu",
            Cause::BridgeNetfilterOff => "bridge_netfilter_off",
        }
    }
}

/// A cause with the data that makes it specific.
#[derive(Clone, Debug, PartialEq)]
pub enum Why {
    /// `sysctl` is the forwarding switch that was off; `still_off` false when it reads 1
    /// again by the time the state was read.
    ForwardingDisabled { sysctl: String, still_off: bool },
    /// The published port's DNAT is missing (`missing` says how), and the packet then died
    /// where `died` says.
    MissingChain { missing: Missing, died: Died },
    /// A rule or policy on `hook` dropped or rejected it; `forwarding_also_off` when IPv4
    /// forwarding is off as well (the next cause, once this one is fixed).
    Firewall {
        hook: Hook,
        blamed: Option<Blamed>,
        reject: bool,
        forwarding_also_off: bool,
    },
    /// Any other reason the kernel gave; with the reverse-path filter's sysctls for
    /// IP_RPFILTER.
    KernelDrop { rp_filter: Option<RpFilter> },
    /// Conntrack refused a new entry: the table at `fill` (count against the host-wide max),
    /// its statistics now, and how many refusals (`drop`) it counted since droptrace started.
    ConntrackFull {
        fill: Fill,
        stats: Option<conntrack::Stats>,
        refused_since_start: Option<u64>,
    },
    /// Packets DNATed to container address `dst` are not routed to `bridge`, which no longer
    /// holds its subnet: `via` is the interface the kernel chose instead (None: no route).
    RouteLost {
        dst: std::net::IpAddr,
        bridge: routes::Bridge,
        via: Option<String>,
    },
    /// Docker's isolation rule `blamed` on `hook` dropped it, as `isolation` says; `host` is
    /// an address of this host that clients can use with the published port.
    EngineIsolation {
        hook: Hook,
        blamed: Blamed,
        isolation: rules::Isolation,
        host: Option<std::net::IpAddr>,
    },
    /// A mid-flow packet conntrack did not track (INVALID), so `dnat` (which exists) did not
    /// translate it; `rule` is the INVALID drop that took it (None: it reached the host's own
    /// stack where nothing listens). `invalid_since_start` is conntrack's count of them.
    ConntrackInvalid {
        dnat: String,
        rule: Option<Blamed>,
        invalid_since_start: Option<u64>,
        /// `nf_conntrack_tcp_be_liberal` and `nf_conntrack_tcp_loose` of the namespace.
        liberal: Option<String>,
        loose: Option<String>,
    },
    /// A `len`-byte packet that came in on `in_dev` cannot leave by `out_dev`, whose MTU is
    /// smaller; `icmp_sent` when the kernel sent "fragmentation needed" for it, `icmp_blocked`
    /// the OUTPUT rule that drops such errors (with its counter then and now).
    PathMtu {
        len: u32,
        in_dev: (String, Option<u32>),
        out_dev: Option<(String, Option<u32>)>,
        icmp_sent: bool,
        icmp_blocked: Option<(RuleRef, Option<u64>)>,
    },
    /// A reply to IPv6 client `dst` found no route: the host forwards IPv6 while `uplinks`
    /// keep accept_ra = 1, so the kernel ignores their router advertisements and the default
    /// route those gave is gone (purged when forwarding went on, or expired since).
    /// `listed`: the interfaces of default routes still listed (expired, not yet cleaned).
    RaIgnored {
        dst: std::net::IpAddr,
        uplinks: Vec<String>,
        listed: Vec<String>,
    },
    /// A DNATed packet routed back out of `bridge`, the bridge it came in on, while bridged
    /// frames skip iptables (`setting`: bridge-nf-call-iptables, None when br_netfilter is not
    /// loaded): the container's reply goes straight across the bridge, never un-NATed.
    BridgeNetfilterOff {
        bridge: String,
        setting: Option<String>,
    },
}

impl Why {
    pub fn cause(&self) -> Cause {
        match self {
            Why::ForwardingDisabled { .. } => Cause::ForwardingDisabled,
            Why::MissingChain { .. } => Cause::MissingChain,
            Why::Firewall { reject: true, .. } => Cause::FirewallReject,
            Why::Firewall { .. } => Cause::FirewallDrop,
            Why::KernelDrop { .. } => Cause::KernelDrop,
            Why::ConntrackFull { .. } => Cause::ConntrackFull,
            Why::RouteLost { .. } | Why::RaIgnored { .. } => Cause::RouteLost,
            Why::EngineIsolation { .. } => Cause::EngineIsolation,
            Why::ConntrackInvalid { .. } => Cause::ConntrackInvalid,
            Why::PathMtu { .. } => Cause::PathMtu,
            Why::BridgeNetfilterOff { .. } => Cause::BridgeNetfilterOff,
        }
    }

    /// The rule blamed (or the ambiguous candidates), when netfilter dropped it.
    pub fn blamed(&self) -> Option<&Blamed> {
        match self {
            Why::EngineIsolation { blamed, .. } => Some(blamed),
            Why::ConntrackInvalid { rule, .. } => rule.as_ref(),
            Why::Firewall { blamed, .. }
            | Why::MissingChain {
                died: Died::AtHook { blamed, .. },
                ..
            } => blamed.as_ref(),
            _ => None,
        }
    }

    /// The sysctl the cause is about, to find who changed it.
    pub fn sysctl(&self) -> Option<&str> {
        match self {
            Why::ForwardingDisabled { sysctl, .. } => Some(sysctl),
            Why::ConntrackFull { .. } => Some("net.netfilter.nf_conntrack_max"),
            Why::BridgeNetfilterOff { .. } => Some(BRIDGE_NF_IPTABLES),
            Why::ConntrackInvalid { loose, .. } => Some(match loose.as_deref() {
                Some("0") => "net.netfilter.nf_conntrack_tcp_loose",
                _ => "net.netfilter.nf_conntrack_tcp_be_liberal",
            }),
            Why::KernelDrop {
                rp_filter: Some(rp),
            } => Some(&rp.watched),
            _ => None,
        }
    }
}

/// Where an untranslated packet died.
#[derive(Clone, Debug, PartialEq)]
pub enum Died {
    /// Netfilter dropped it on `hook` (by `blamed`, when found).
    AtHook { hook: Hook, blamed: Option<Blamed> },
    /// It reached the host's own address where nothing listens (NO_SOCKET, RST sent).
    NoListener,
}

/// The reverse-path filter's settings for the ingress interface (the kernel uses the higher).
#[derive(Clone, Debug, PartialEq)]
pub struct RpFilter {
    pub all: Option<String>,
    pub iface_key: String,
    pub iface: Option<String>,
    /// The setting that makes the filter strict here: whose change is the culprit.
    pub watched: String,
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
    /// The engine that publishes the port (`docker`, `podman`), when one does: its fixes differ.
    pub engine: Option<&'static str>,
}

/// The engine's answer for one drop.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnosis {
    pub why: Why,
    /// Where it died, when known.
    pub hook: Option<Hook>,
}

/// A diagnosis in words, filled by `report::words::explain` (this stage only diagnoses; the
/// observer and `check` compose the two): what verdicts carry.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribution {
    pub cause: Cause,
    pub hook: Option<Hook>,
    /// The rule or policy that dropped it, when netfilter did and it is known.
    pub rule: Option<String>,
    /// The rules that could have, when it is ambiguous which.
    pub rule_candidates: Vec<String>,
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
    pub why: Why,
}

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

/// Diagnoses one drop. `now` is the namespace's state at (or just after) the drop. The
/// causes are tried from root to proximate: forwarding, then the DNAT, then the firewall,
/// then the kernel's own reason.
pub fn diagnose(d: &DropFacts, now: &Snapshot, ctx: &Context) -> Diagnosis {
    let hook = infer_hook(d, now);
    let why = path_mtu(d, now, ctx)
        .or_else(|| route_lost(d, now))
        .or_else(|| ra_ignored(d, now))
        .or_else(|| forwarding(d, now))
        .or_else(|| conntrack_full(d, now, ctx, hook))
        .or_else(|| conntrack_invalid(d, now, ctx, hook))
        .or_else(|| missing_chain(d, now, ctx, hook))
        .or_else(|| firewall(d, now, ctx, hook))
        .unwrap_or_else(|| kernel_drop(d, now));
    let hook = match &why {
        Why::ForwardingDisabled { .. }
        | Why::RouteLost { via: None, .. }
        | Why::RaIgnored { .. } => Some(Hook::Routing),
        Why::Firewall { hook, .. } | Why::EngineIsolation { hook, .. } => Some(*hook),
        _ => hook,
    };
    Diagnosis { why, hook }
}

/// A packet for a non-local (DNATed) destination refused by the routing step: IPv4 with
/// IP_INADDRERRORS at ip_error (measured on 6.18 for both sysctls); IPv6 at ip6_forward,
/// with IP_INADDRERRORS (6.18), or with no specific reason while IPv6 forwarding is off
/// (kernels whose ip6_forward gives none).
fn forwarding(d: &DropFacts, now: &Snapshot) -> Option<Why> {
    let routed_away = !now.is_local(&d.dst);
    let off = rules::forwarding_off(&now.sysctls, d.ipv6, &d.ifname);
    let function = d.function.as_deref();
    let unspecific = matches!(d.reason.as_str(), "NOT_SPECIFIED" | UNREPORTED);
    // ip_error also drops what has no route (IP_INNOROUTES): only its forwarding refusal,
    // or no reason at all on a kernel that reports none, is about forwarding.
    let refused = d.reason == "IP_INADDRERRORS"
        || (function == Some("ip_error") && unspecific)
        || (function == Some("ip6_forward") && unspecific && off.is_some());
    if !routed_away || !refused || d.reason == "IP_RPFILTER" {
        return None;
    }
    Some(Why::ForwardingDisabled {
        still_off: off.is_some(),
        sysctl: off.unwrap_or_else(|| rules::forwarding_keys(d.ipv6, &d.ifname).0),
    })
}

/// A forwarded packet larger than the MTU of the interface it must leave by (PKT_TOO_BIG at
/// ip_forward / ip6_forward): the sizes, whether the kernel sent the ICMP error that tells
/// the sender, and the OUTPUT rule that drops that error, if one does (a black hole).
fn path_mtu(d: &DropFacts, now: &Snapshot, ctx: &Context) -> Option<Why> {
    let mtu = |dev: &str| now.mtus.get(dev).copied();
    let out = d
        .route
        .as_ref()
        .filter(|r| !r.local)
        .map(|r| r.dev.clone())
        .or_else(|| routes::connected(now, &d.dst).map(str::to_string));
    let icmp_sent = matches!(
        d.routing_answer,
        Some(Answer::Icmp {
            icmp_type: 3,
            code: 4,
            ..
        }) | Some(Answer::Icmp { icmp_type: 2, .. })
    );
    // A kernel without drop reasons (before 5.17) names only the function: ip_forward drops
    // for other reasons too, so it counts when the "fragmentation needed" went out for the
    // flow or the packet is larger than the way out.
    let larger = out.as_deref().and_then(mtu).is_some_and(|m| d.len > m);
    let forwarder = matches!(d.function.as_deref(), Some("ip_forward" | "ip6_forward"));
    let unreported = d.reason == UNREPORTED && forwarder && (icmp_sent || larger);
    if d.reason != "PKT_TOO_BIG" && !unreported {
        return None;
    }
    Some(Why::PathMtu {
        len: d.len,
        in_dev: (d.ifname.clone(), mtu(&d.ifname)),
        out_dev: out.map(|dev| {
            let m = mtu(&dev);
            (dev, m)
        }),
        icmp_sent,
        icmp_blocked: rules::icmp_too_big_blocker(now, ctx.before, d.ipv6),
    })
}

/// The sysctl that sends bridged IPv4 frames through iptables (and conntrack).
pub const BRIDGE_NF_IPTABLES: &str = "net.bridge.bridge-nf-call-iptables";

/// A DNATed packet routed back out the bridge it came in on (a container reaching another
/// container on its bridge through a published port) while bridged frames skip netfilter:
/// the reply crosses the bridge without conntrack, so its source is never un-NATed and the
/// client resets it (moby#23358). From the routing decision; nothing drops in the namespace.
pub fn bridge_netfilter_off(d: &DropFacts, now: &Snapshot) -> Option<Why> {
    let r = d.route.as_ref().filter(|r| !r.local)?;
    let hairpin = d.dnat == Some(true) && r.dev == d.ifname && routes::is_bridge(&r.dev);
    let setting = now.sysctls.get(BRIDGE_NF_IPTABLES).map(str::to_string);
    if !hairpin || setting.as_deref() == Some("1") || d.ipv6 {
        return None;
    }
    Some(Why::BridgeNetfilterOff {
        bridge: r.dev.clone(),
        setting,
    })
}

/// A packet for a container address that no interface's subnet holds any more, while the
/// bridge it belongs on has lost that subnet: dropped for want of a route (IP_INNOROUTES /
/// IP_OUTNOROUTES, or at ip_error while forwarding is on, on a kernel without reasons), or
/// routed by the kernel to another interface (the routing decision) and dropped later.
pub fn route_lost(d: &DropFacts, now: &Snapshot) -> Option<Why> {
    // No addresses read at all (`ip` failed) is no evidence that one was lost.
    let unread = now.addrs.is_empty();
    if unread || d.ipv6 || now.is_local(&d.dst) || routes::connected(now, &d.dst).is_some() {
        return None;
    }
    // Without drop reasons (before 5.17) ip_error's reason is inferred, not reported: with
    // forwarding on, what it drops there has no route.
    let unspecific =
        matches!(d.reason.as_str(), "NOT_SPECIFIED" | UNREPORTED) || d.inferred.is_some();
    let forwarding_on = rules::forwarding_off(&now.sysctls, false, &d.ifname).is_none();
    let no_route = matches!(d.reason.as_str(), "IP_INNOROUTES" | "IP_OUTNOROUTES")
        || (d.function.as_deref() == Some("ip_error") && unspecific && forwarding_on);
    let routed_away = d.route.as_ref().filter(|r| !r.local).map(|r| r.dev.clone());
    if !no_route && routed_away.is_none() {
        return None;
    }
    let bridge = routes::bridge_for(now, &d.dst)?;
    Some(Why::RouteLost {
        dst: d.dst,
        via: if no_route { None } else { routed_away },
        bridge,
    })
}

/// The interfaces that forward IPv6 while accepting router advertisements only as a host
/// (accept_ra = 1): the kernel ignores their advertisements. Uplinks only: bridges, veths
/// and loopback get no router's advertisements.
pub fn ra_ignoring_uplinks(now: &Snapshot) -> Vec<String> {
    let conf = |iface: &str, leaf: &str| now.sysctls.get(&format!("net.ipv6.conf.{iface}.{leaf}"));
    now.interfaces
        .iter()
        .filter(|i| *i != "lo" && !routes::is_bridge(i) && !i.starts_with("veth"))
        .filter(|i| conf(i, "forwarding") == Some("1") && conf(i, "accept_ra") == Some("1"))
        .cloned()
        .collect()
}

/// An IPv6 packet for a remote address (a reply to a client beyond the uplink's router)
/// dropped for want of a route, while the uplinks ignore router advertisements: their
/// default route is gone (docker/for-linux#844). A default route through another interface
/// would make it some other loss.
fn ra_ignored(d: &DropFacts, now: &Snapshot) -> Option<Why> {
    let discard = matches!(
        d.function.as_deref(),
        Some("ip6_pkt_discard" | "ip6_pkt_discard_out" | "ip6_pkt_drop")
    );
    let no_route = matches!(d.reason.as_str(), "IP_INNOROUTES" | "IP_OUTNOROUTES")
        || (d.reason == UNREPORTED && discard);
    if !d.ipv6 || !no_route || now.is_local(&d.dst) || routes::connected(now, &d.dst).is_some() {
        return None;
    }
    let uplinks = ra_ignoring_uplinks(now);
    let listed = now.ipv6_defaults.clone().unwrap_or_default();
    if uplinks.is_empty() || listed.iter().any(|i| !uplinks.contains(i)) {
        return None;
    }
    Some(Why::RaIgnored {
        dst: d.dst,
        uplinks,
        listed,
    })
}

/// Conntrack dropped the packet itself: a packet with no conntrack entry, dropped by
/// netfilter on the hooks where conntrack creates entries (PRE_ROUTING for arriving packets,
/// LOCAL_OUT for the host's own), while the table is at its limit. No rule is involved, so
/// none may be blamed; the refusals counter (`conntrack -S` drop) says how often.
fn conntrack_full(d: &DropFacts, now: &Snapshot, ctx: &Context, hook: Option<Hook>) -> Option<Why> {
    let at_entry = matches!(hook, Some(Hook::PreRouting | Hook::LocalOut));
    if d.reason != "NETFILTER_DROP" || d.dnat.is_some() || !at_entry {
        return None;
    }
    let fill = Fill::of(&now.sysctls).filter(Fill::full)?;
    let refused_since_start = match (now.conntrack, ctx.before.and_then(|b| b.conntrack)) {
        (Some(now), Some(before)) => Some(now.drop.saturating_sub(before.drop)),
        _ => None,
    };
    Some(Why::ConntrackFull {
        fill,
        stats: now.conntrack,
        refused_since_start,
    })
}

/// A TCP segment that is not a connection's first (no SYN), with no conntrack entry, for a
/// port whose DNAT exists: conntrack found it INVALID (its entry gone, or the segment out of
/// the window), so the DNAT, which applies through the entry, never translated it. It then
/// reaches the host's own stack (NO_SOCKET, a RST that resets the client's connection) or an
/// INVALID drop rule (kubernetes#74839).
fn conntrack_invalid(
    d: &DropFacts,
    now: &Snapshot,
    ctx: &Context,
    hook: Option<Hook>,
) -> Option<Why> {
    let midstream = d.proto == "tcp" && d.tcp_flags & TCP_SYN == 0;
    if !midstream || d.dnat.is_some() || !now.is_local(&d.dst) {
        return None;
    }
    let dnat = now.dnats_for(ctx.port).into_iter().find(|x| x.reachable)?;
    let rule = match d.reason.as_str() {
        "NO_SOCKET" => None,
        "NETFILTER_DROP" => {
            let hook = d.nf_hook.or(hook).unwrap_or(Hook::LocalIn);
            let b = rules::blame(hook, ctx.port, now, ctx.before, d)?;
            if !b.rule.text.contains("INVALID") {
                return None;
            }
            Some(b)
        }
        _ => return None,
    };
    let invalid_since_start = match (now.conntrack, ctx.before.and_then(|b| b.conntrack)) {
        (Some(now), Some(before)) => Some(now.invalid.saturating_sub(before.invalid)),
        _ => None,
    };
    let sysctl = |k: &str| {
        now.sysctls
            .get(&format!("net.netfilter.{k}"))
            .map(str::to_string)
    };
    Some(Why::ConntrackInvalid {
        dnat: dnat.location,
        rule,
        invalid_since_start,
        liberal: sysctl("nf_conntrack_tcp_be_liberal"),
        loose: sysctl("nf_conntrack_tcp_loose"),
    })
}

/// The SYN bit of the TCP flags.
const TCP_SYN: u8 = 0x02;

/// The packet reached this host untranslated although the port is published (a DNAT exists
/// but did not apply, or Docker's filter rules still accept the container port while the nat
/// side is gone).
fn missing_chain(d: &DropFacts, now: &Snapshot, ctx: &Context, hook: Option<Hook>) -> Option<Why> {
    let untranslated = d.dnat != Some(true) && now.is_local(&d.dst);
    let dnats = now.dnats_for(ctx.port);
    let published =
        ctx.published_elsewhere || !dnats.is_empty() || !now.published_hints(ctx.port).is_empty();
    let relevant = matches!(d.reason.as_str(), "NETFILTER_DROP" | "NO_SOCKET");
    if !(untranslated && published && relevant) || hook == Some(Hook::PreRouting) {
        return None;
    }
    let missing = rules::untranslated(now, ctx.port)
        .or_else(|| dnats.into_iter().next().map(Missing::DidNotApply))?;
    let died = if d.reason == "NETFILTER_DROP" {
        let hook = hook.unwrap_or(Hook::LocalIn);
        Died::AtHook {
            hook,
            blamed: rules::blame(hook, ctx.port, now, ctx.before, d),
        }
    } else {
        Died::NoListener
    };
    Some(Why::MissingChain { missing, died })
}

/// Netfilter dropped it: a rule or a policy.
fn firewall(d: &DropFacts, now: &Snapshot, ctx: &Context, hook: Option<Hook>) -> Option<Why> {
    if d.reason != "NETFILTER_DROP" {
        return None;
    }
    let hook = hook.unwrap_or(Hook::Forward);
    let blamed = rules::blame(hook, ctx.port, now, ctx.before, d);
    let isolation = blamed
        .as_ref()
        .filter(|b| !b.is_ambiguous())
        .and_then(|b| rules::isolation(&b.rule));
    if let (Some(isolation), Some(blamed)) = (isolation, blamed.clone()) {
        return Some(Why::EngineIsolation {
            hook,
            blamed,
            host: host_address(now, &isolation),
            isolation,
        });
    }
    let reject = d.answered.is_some() || blamed.as_ref().is_some_and(Blamed::rejects);
    let forwarding_also_off =
        hook != Hook::Forward && !d.ipv6 && now.sysctls.flag("net.ipv4.ip_forward") == Some(false);
    Some(Why::Firewall {
        hook,
        blamed,
        reject,
        forwarding_also_off,
    })
}

/// An IPv4 address of this host clients can reach the published port on: one not on the
/// loopback or the engine's bridge.
fn host_address(now: &Snapshot, isolation: &rules::Isolation) -> Option<std::net::IpAddr> {
    let (rules::Isolation::DirectAccess { bridge } | rules::Isolation::Unpublished { bridge }) =
        isolation;
    now.addrs
        .iter()
        .find(|a| a.addr.is_ipv4() && !a.addr.is_loopback() && &a.iface != bridge)
        .map(|a| a.addr)
}

/// Anything else the kernel reports, by its reason.
fn kernel_drop(d: &DropFacts, now: &Snapshot) -> Why {
    let rp_filter = (d.reason == "IP_RPFILTER").then(|| {
        let iface_key = format!("net.ipv4.conf.{}.rp_filter", d.ifname);
        let iface = now.sysctls.get(&iface_key).map(str::to_string);
        RpFilter {
            all: now
                .sysctls
                .get("net.ipv4.conf.all.rp_filter")
                .map(str::to_string),
            watched: if iface.as_deref() == Some("0") {
                "net.ipv4.conf.all.rp_filter".to_string()
            } else {
                iface_key.clone()
            },
            iface_key,
            iface,
        }
    });
    Why::KernelDrop { rp_filter }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::state::{IfAddr, Sysctls, iptables, nft};
    use crate::report::words::attribute;
    use rules::How;

    /// The rule blamed and how it was found.
    fn blamed(a: &Attribution) -> (&str, &How) {
        let b = a.why.blamed().expect("a rule is blamed");
        (b.rule.text.as_str(), &b.how)
    }

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
            conntrack: None,
            mtus: Default::default(),
            ifnames: Default::default(),
            ipv6_defaults: None,
            addrs: [
                ("eth-ext", "198.51.100.1", 24),
                ("docker0", "172.17.0.1", 16),
            ]
            .map(|(iface, addr, prefix)| IfAddr {
                iface: iface.into(),
                addr: addr.parse().unwrap(),
                prefix,
            })
            .to_vec(),
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
            inferred: None,
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
            route: None,
            tcp_flags: 0x02,
            len: 60,
            routing_answer: None,
        }
    }

    /// A new connection's SYN that netfilter dropped before conntrack gave it an entry, with
    /// the table at `count` of 64.
    fn refused_syn(count: &str, hook: Option<Hook>) -> (DropFacts, Snapshot) {
        let mut d = syn("NETFILTER_DROP", "nf_hook_slow", "198.51.100.1", None);
        d.nf_hook = hook;
        let mut snap = docker();
        snap.sysctls.set("net.netfilter.nf_conntrack_count", count);
        snap.sysctls.set("net.netfilter.nf_conntrack_max", "64");
        (d, snap)
    }

    #[test]
    fn a_packet_too_big_for_the_way_out_is_path_mtu_with_or_without_drop_reasons() {
        let mut snap = docker();
        snap.mtus = [("docker0", 1500), ("eth-ext", 1000)]
            .map(|(i, m)| (i.to_string(), m))
            .into();
        let mut d = syn("PKT_TOO_BIG", "ip_forward", "198.51.100.2", Some(true));
        (d.ifname, d.len, d.tcp_flags) = ("docker0".into(), 1500, 0x10);
        assert_eq!(diagnose(&d, &snap, &ctx()).why.cause(), Cause::PathMtu);
        // 5.10: no reason, the function and the sizes say it.
        d.reason = UNREPORTED.into();
        assert_eq!(diagnose(&d, &snap, &ctx()).why.cause(), Cause::PathMtu);
        d.len = 600;
        assert_ne!(
            diagnose(&d, &snap, &ctx()).why.cause(),
            Cause::PathMtu,
            "it fits"
        );
    }

    #[test]
    fn a_full_table_is_conntrack_full_and_blames_no_rule() {
        for hook in [Some(Hook::PreRouting), None] {
            let (d, snap) = refused_syn("64", hook);
            let a = attribute(&d, &snap, &ctx());
            assert_eq!(a.cause, Cause::ConntrackFull, "{hook:?}: {}", a.sentence);
            assert_eq!((a.rule.as_deref(), a.hook), (None, Some(Hook::PreRouting)));
            assert!(
                a.fix
                    .starts_with("sysctl -w net.netfilter.nf_conntrack_max=65536"),
                "{}",
                a.fix
            );
        }
    }

    #[test]
    fn the_same_drop_with_room_in_the_table_is_the_firewall() {
        let (d, snap) = refused_syn("20", Some(Hook::PreRouting));
        assert_eq!(attribute(&d, &snap, &ctx()).cause, Cause::FirewallDrop);
        // A tracked packet (conntrack had made its entry) was not refused by conntrack.
        let (mut d, snap) = refused_syn("64", Some(Hook::Forward));
        d.dnat = Some(true);
        d.dst = "172.17.0.2".parse().unwrap();
        assert_ne!(attribute(&d, &snap, &ctx()).cause, Cause::ConntrackFull);
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
        assert_eq!(
            a.why,
            Why::ForwardingDisabled {
                sysctl: "net.ipv4.ip_forward".into(),
                still_off: true
            }
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
        assert_eq!(
            a.why,
            Why::ForwardingDisabled {
                sysctl: "net.ipv4.conf.eth-ext.forwarding".into(),
                still_off: true
            }
        );
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
        assert_eq!(
            a.why,
            Why::ForwardingDisabled {
                sysctl: "net.ipv4.ip_forward".into(),
                still_off: false
            }
        );
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
        assert!(
            matches!(
                &a.why,
                Why::MissingChain {
                    missing: Missing::NatChainGone(h),
                    died: Died::NoListener
                } if h.container.to_string() == "172.17.0.2"
            ),
            "{:?}",
            a.why
        );
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
        d.answered = Some(Answer::icmp(false, 3, 10));
        let a = attribute(&d, &now, &ctx());
        assert!(
            matches!(
                &a.why,
                Why::MissingChain {
                    missing: Missing::NoDnatInChain(_),
                    died: Died::AtHook {
                        hook: Hook::LocalIn,
                        ..
                    }
                }
            ),
            "{:?}",
            a.why
        );
        let (rule, how) = blamed(&a);
        assert!(rule.contains("filter INPUT rule 1"), "{rule}");
        assert_eq!(how, &How::TheReject);
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
        assert!(
            matches!(
                &a.why,
                Why::MissingChain {
                    missing: Missing::Unreached(n),
                    died: Died::NoListener
                } if n.chain == "DOCKER"
            ),
            "{:?}",
            a.why
        );
        assert!(a.sentence.contains("no longer jumps"), "{}", a.sentence);
    }

    #[test]
    fn a_reachable_dnat_that_did_not_apply_points_at_conntrack() {
        let a = attribute(
            &syn("NO_SOCKET", "tcp_v4_rcv", "198.51.100.1", Some(false)),
            &docker(),
            &ctx(),
        );
        assert!(
            matches!(
                &a.why,
                Why::MissingChain {
                    missing: Missing::DidNotApply(_),
                    ..
                }
            ),
            "{:?}",
            a.why
        );
        assert!(a.sentence.contains("conntrack -D -p tcp --dport 5000"));
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
        d.answered = Some(Answer::icmp(false, 3, 10));
        let before = docker();
        let c = Context {
            before: Some(&before),
            ..ctx()
        };
        let a = attribute(&d, &now, &c);
        assert_eq!(a.cause, Cause::FirewallReject);
        assert_eq!(a.hook, Some(Hook::Forward));
        assert_eq!(blamed(&a).1, &How::CounterRose { from: 0, to: 2 });
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
        let (rule, how) = blamed(&a);
        assert!(rule.contains("DOCKER-USER rule 2"), "{rule}");
        assert_eq!(how, &How::CounterRose { from: 0, to: 4 });
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
        assert_eq!(blamed(&a).1, &How::Policy);
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
        let (rule, how) = blamed(&a);
        assert!(rule.contains("table inet blocker chain forward_block handle 2"));
        assert_eq!(how, &How::NamesPort);
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
        assert_eq!(blamed(&a).1, &How::Traced);
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
        assert!(
            matches!(
                a.why,
                Why::Firewall {
                    hook: Hook::PreRouting,
                    reject: false,
                    forwarding_also_off: true,
                    ..
                }
            ),
            "{:?}",
            a.why
        );
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
        assert_eq!(a.why, Why::KernelDrop { rp_filter: None });
        assert!(a.sentence.contains("nothing listens"));
    }

    #[test]
    fn rp_filter_is_explained_with_its_sysctls() {
        let mut now = docker();
        now.sysctls.set("net.ipv4.conf.all.rp_filter", "1");
        let mut d = syn("IP_RPFILTER", "ip_rcv_finish", "198.51.100.1", None);
        d.src = "203.0.113.9".parse().unwrap();
        let a = attribute(&d, &now, &ctx());
        let Why::KernelDrop {
            rp_filter: Some(rp),
        } = &a.why
        else {
            panic!("{:?}", a.why)
        };
        assert_eq!(rp.all.as_deref(), Some("1"));
        assert_eq!(rp.watched, "net.ipv4.conf.eth-ext.rp_filter");
        assert_eq!(a.sysctl.as_deref(), Some(rp.watched.as_str()));
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
        assert_eq!(
            a.why,
            Why::ForwardingDisabled {
                sysctl: "net.ipv6.conf.all.forwarding".into(),
                still_off: true
            }
        );
        assert!(a.fix.contains("net.ipv6.conf.all.forwarding=1"));
    }
}
