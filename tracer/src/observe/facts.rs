//! The typed facts of one drop, as the kernel reported them: what the attribution engine
//! reads. The `DropRecord` printed for the user is rendered from the same event; nothing here
//! is parsed back from text.
use std::net::IpAddr;

use serde::Serialize;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Answer {
    /// An ICMP error: type, code and the name firewall configurations use (`host-prohibited`).
    Icmp {
        icmp_type: u8,
        code: u8,
        name: &'static str,
    },
    Rst,
}

impl Answer {
    /// Whether a firewall's REJECT could have sent it: a RST, or one of the unreachable errors
    /// a REJECT sends (those `icmp_name` names). A redirect (the kernel routing a packet back
    /// out the interface it came in on), a time-exceeded or a "fragmentation needed" answers
    /// routing, not a rule.
    pub fn is_rejection(&self) -> bool {
        match self {
            Answer::Rst => true,
            Answer::Icmp { name, .. } => *name != "icmp-error",
        }
    }

    /// An ICMP error of `family` (`ipv4`/`ipv6`), named.
    pub fn icmp(ipv6: bool, icmp_type: u8, code: u8) -> Answer {
        Answer::Icmp {
            icmp_type,
            code,
            name: icmp_name(ipv6, icmp_type, code),
        }
    }
}

/// ICMP error names users recognise from firewall configs.
pub fn icmp_name(ipv6: bool, icmp_type: u8, code: u8) -> &'static str {
    match (ipv6, icmp_type, code) {
        (false, 3, 0) => "net-unreachable",
        (false, 3, 1) => "host-unreachable",
        (false, 3, 2) => "proto-unreachable",
        (false, 3, 3) => "port-unreachable",
        (false, 3, 9) => "net-prohibited",
        (false, 3, 10) => "host-prohibited",
        (false, 3, 13) => "admin-prohibited",
        (true, 1, 1) => "adm-prohibited",
        (true, 1, 4) => "port-unreachable",
        (true, 1, 3) => "addr-unreachable",
        (true, 1, 0) => "no-route",
        (true, 1, 5) => "failed-policy",
        (true, 1, 6) => "reject-route",
        _ => "icmp-error",
    }
}

/// One dropped packet, as observed.
#[derive(Clone, Debug, PartialEq)]
pub struct DropFacts {
    /// The kernel's reason, or (`inferred`) the one inferred from `function` on a kernel
    /// that reports none.
    pub reason: String,
    pub inferred: Option<crate::observe::infer::Inferred>,
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
    /// The kernel's last routing decision for this packet's destination (fib_table_lookup).
    pub route: Option<RouteFact>,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// The packet's length (skb->len).
    pub len: u32,
    /// An ICMP error the kernel sent for this flow just before that no REJECT sends: a
    /// "fragmentation needed" (path MTU), a redirect.
    pub routing_answer: Option<Answer>,
}

/// One routing lookup as the kernel made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteFact {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// The routing table (255 local, 254 main).
    pub table: u32,
    /// The device the route leads to.
    pub dev: String,
    /// Delivery to this host: found in the `local` table, or (the kernel merges the local
    /// and main tables while no policy rule exists) a destination that is the host's own.
    pub local: bool,
}

impl RouteFact {
    /// The kernel's lookup for a drop's (source, destination), when it succeeded; the ports
    /// are the drop's (an inbound lookup carries none).
    pub fn of(sample: &tracer_common::RouteSample, d: &DropFacts) -> Option<RouteFact> {
        let (src, dst) = (d.src, d.dst);
        let bytes = tracer_common::addr_bytes;
        let same = sample.saddr == bytes(src) && sample.daddr == bytes(dst);
        (sample.err == 0 && same).then(|| {
            let end = sample.dev.iter().position(|b| *b == 0).unwrap_or(16);
            RouteFact {
                src,
                sport: d.sport,
                dst,
                dport: d.dport,
                table: sample.table,
                dev: String::from_utf8_lossy(&sample.dev[..end]).into_owned(),
                local: sample.table == 255,
            }
        })
    }
}
