//! Raw kernel events → user-facing records with names, addresses and wall-clock times.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tracer_common::{AF_INET, AF_INET6, DropEvent, REASON_UNREPORTED, ct, kind};

use crate::{
    discover::netns::IfNames,
    load::{
        kernel::{btf::DropReasons, kallsyms::LiveSymbols},
        nfprobe,
    },
    observe::{
        facts::{Answer, DropFacts},
        infer::{self, Inferred},
    },
};

/// Decodes one ring-buffer record: a whole DropEvent, or its first EVENT_HEAD bytes (no
/// header captured; `hdr` stays zero). None when it is shorter (a mismatched object, never
/// expected).
pub fn decode(bytes: &[u8]) -> Option<DropEvent> {
    if bytes.len() < tracer_common::EVENT_HEAD {
        return None;
    }
    let mut ev = DropEvent::default();
    let n = bytes.len().min(size_of::<DropEvent>());
    // SAFETY: at most size_of::<DropEvent>() bytes into the event; DropEvent is plain data
    // valid for any bit pattern, and a byte copy needs no alignment.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&raw mut ev).cast::<u8>(), n);
    }
    Some(ev)
}

/// Decodes one CHANGES ring record.
pub fn decode_change(bytes: &[u8]) -> Option<tracer_common::ChangeEvent> {
    if bytes.len() < size_of::<tracer_common::ChangeEvent>() {
        return None;
    }
    // SAFETY: the length was checked; ChangeEvent is plain data valid for any bit pattern.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<tracer_common::ChangeEvent>()) })
}

/// Converts CLOCK_MONOTONIC (bpf_ktime_get_ns) to wall-clock time, with the offset measured
/// once at start.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    realtime_minus_monotonic_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            realtime_minus_monotonic_ns: real - mono,
        }
    }

    /// Wall-clock nanoseconds since the epoch.
    pub fn wall_ns(&self, ktime_ns: u64) -> i64 {
        (ktime_ns as i128 + self.realtime_minus_monotonic_ns) as i64
    }

    pub fn wall(&self, ktime_ns: u64) -> DateTime<Utc> {
        let ns = ktime_ns as i128 + self.realtime_minus_monotonic_ns;
        DateTime::from_timestamp_nanos(ns as i64)
    }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

pub fn proto_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        other => other.to_string(),
    }
}

/// `SYN`, `SYN|ACK`, `RST|ACK` … from the TCP flags byte.
pub fn tcp_flags(flags: u8) -> String {
    const NAMES: [(u8, &str); 8] = [
        (0x02, "SYN"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x10, "ACK"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    let set: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        "-".into()
    } else {
        set.join("|")
    }
}

pub fn addr(family: u8, raw: &[u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*raw))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

/// A drop as the user sees it; field names are the JSON Lines contract (`"type":"drop"`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DropRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time: String,
    pub netns: u32,
    pub ifindex: u32,
    pub ifname: String,
    pub family: &'static str,
    pub proto: String,
    pub src: String,
    pub sport: u16,
    pub dst: String,
    pub dport: u16,
    /// The kernel's drop reason; null on a kernel that reports none (before Linux 5.17),
    /// where `inferred_reason` says what the freeing function tells instead.
    pub reason: Option<String>,
    pub location: String,
    /// Additional fields (free to add, never to rename).
    pub reason_code: u32,
    /// Without a reported reason: the reason inferred, and from what (null when the freeing
    /// function is not one droptrace knows: then only `function` says where).
    pub inferred_reason: Option<Inferred>,
    pub tcp_flags: Option<String>,
    pub icmp: Option<String>,
    pub len: u32,
    /// The function the packet was freed in, without offset (`ip_error`, `tcp_v4_rcv`).
    pub function: Option<String>,
    /// Netfilter hook (or `routing`/`socket`) the packet died in; from attribution.
    pub hook: Option<String>,
    /// Whether a DNAT had rewritten the destination (conntrack's IPS_DST_NAT); null when the
    /// packet had not passed conntrack.
    pub dnat: Option<bool>,
    /// Where the client sent it, before DNAT (when `dnat`).
    pub orig_dst: Option<String>,
    pub orig_dport: Option<u16>,
    /// The ICMP error (type/code) or RST the kernel sent for this packet just before.
    pub answered: Option<String>,
    /// Verdict cause this drop was attributed to.
    pub cause: Option<String>,
    /// The container the watched port is published to (from the engine).
    pub container: Option<String>,
    /// Hook the netfilter probes saw the packet enter and not leave (null without probes, or
    /// when it died between hooks).
    pub nf_hook: Option<&'static str>,
    /// Raw probe trail bits (0 without probes).
    pub nf_trail: u16,
    #[serde(skip)]
    pub ktime_ns: u64,
}

impl DropRecord {
    /// The reason the kernel gave, else the one inferred, else `UNREPORTED`.
    pub fn reason_name(&self) -> &str {
        match (&self.reason, &self.inferred_reason) {
            (Some(r), _) => r,
            (None, Some(i)) => i.reason,
            (None, None) => crate::load::kernel::btf::UNREPORTED,
        }
    }
}

/// The kernel answered a watched packet with an ICMP error or a RST (`"type":"signal"`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SignalRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `icmp_sent` or `rst_sent`.
    pub signal: &'static str,
    pub time: String,
    pub netns: u32,
    pub ifname: String,
    pub family: &'static str,
    pub proto: String,
    pub src: String,
    pub sport: u16,
    pub dst: String,
    pub dport: u16,
    /// `3/10` for an ICMP error.
    pub icmp: Option<String>,
    /// `enum sk_rst_reason` value for a RST.
    pub rst_reason: Option<u32>,
    #[serde(skip)]
    pub ktime_ns: u64,
    /// The answer, typed, and the flow it answered (source, port, destination, port).
    #[serde(skip)]
    pub answer: Answer,
    #[serde(skip)]
    pub flow: (IpAddr, u16, IpAddr, u16),
}

/// One decoded ring event.
#[derive(Clone, Debug, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one event at a time flows through; never stored in bulk"
)]
pub enum Observed {
    /// The drop as printed, and as the engine reads it.
    Drop(DropRecord, DropFacts),
    Signal(SignalRecord),
}

/// What turns raw events into records: the kernel's names and the namespace's interfaces.
pub struct Namer {
    pub clock: Clock,
    pub reasons: DropReasons,
    pub symbols: LiveSymbols,
    pub ifnames: IfNames,
}

impl Namer {
    pub fn observe(&mut self, ev: &DropEvent) -> Observed {
        match ev.kind {
            kind::ICMP_SENT | kind::RST_SENT => Observed::Signal(self.signal(ev)),
            _ => {
                let rec = self.record(ev);
                let facts = facts_of(ev, &rec);
                Observed::Drop(rec, facts)
            }
        }
    }

    fn signal(&mut self, ev: &DropEvent) -> SignalRecord {
        let family = family_name(ev.family);
        let icmp = ev.kind == kind::ICMP_SENT;
        let (src, dst) = (addr(ev.family, &ev.saddr), addr(ev.family, &ev.daddr));
        SignalRecord {
            kind: "signal",
            signal: if icmp { "icmp_sent" } else { "rst_sent" },
            time: rfc3339(self.clock.wall(ev.ktime_ns)),
            netns: ev.netns,
            ifname: self.ifnames.name(ev.ifindex),
            family,
            proto: proto_name(ev.proto),
            src: src.to_string(),
            sport: ev.sport,
            dst: dst.to_string(),
            dport: ev.dport,
            icmp: icmp.then(|| format!("{}/{}", ev.icmp_type, ev.icmp_code)),
            rst_reason: (!icmp && ev.reason != tracer_common::RST_REASON_UNKNOWN)
                .then_some(ev.reason),
            ktime_ns: ev.ktime_ns,
            answer: if icmp {
                Answer::icmp(ev.family == AF_INET6, ev.icmp_type, ev.icmp_code)
            } else {
                Answer::Rst
            },
            flow: (src, ev.sport, dst, ev.dport),
        }
    }

    pub fn record(&mut self, ev: &DropEvent) -> DropRecord {
        let mut rec = self.rendered(ev);
        if rec.reason.is_none() {
            rec.inferred_reason = rec.function.as_deref().and_then(infer::from_function);
        }
        rec
    }

    fn rendered(&mut self, ev: &DropEvent) -> DropRecord {
        let family = family_name(ev.family);
        let is_icmp = ev.proto == 1 || ev.proto == 58;
        let dnat = (ev.has_ct != 0).then_some(ev.ct_status & ct::IPS_DST_NAT != 0);
        DropRecord {
            kind: "drop",
            time: rfc3339(self.clock.wall(ev.ktime_ns)),
            netns: ev.netns,
            ifindex: ev.ifindex,
            ifname: self.ifnames.name(ev.ifindex),
            family,
            proto: proto_name(ev.proto),
            src: addr(ev.family, &ev.saddr).to_string(),
            sport: ev.sport,
            dst: addr(ev.family, &ev.daddr).to_string(),
            dport: ev.dport,
            reason: (ev.reason != REASON_UNREPORTED).then(|| self.reasons.name(ev.reason)),
            location: self.symbols.resolve(ev.location),
            reason_code: ev.reason,
            inferred_reason: None,
            tcp_flags: (ev.proto == 6).then(|| tcp_flags(ev.tcp_flags)),
            icmp: is_icmp.then(|| format!("{}/{}", ev.icmp_type, ev.icmp_code)),
            len: ev.len,
            function: self.symbols.function(ev.location),
            hook: None,
            dnat,
            orig_dst: (dnat == Some(true)).then(|| addr(ev.family, &ev.orig_daddr).to_string()),
            orig_dport: (dnat == Some(true)).then_some(ev.orig_dport),
            answered: None,
            cause: None,
            container: None,
            nf_hook: nfprobe::trail_hook(ev.nf_trail).map(|h| h.name()),
            nf_trail: ev.nf_trail,
            ktime_ns: ev.ktime_ns,
        }
    }
}

/// The engine's view of the drop `rec` was rendered from: addresses and the hook typed, the
/// answer and the traced rule still unknown (correlation fills them in).
fn facts_of(ev: &DropEvent, rec: &DropRecord) -> DropFacts {
    let dnat = rec.dnat == Some(true);
    DropFacts {
        reason: rec.reason_name().to_string(),
        inferred: rec.inferred_reason.clone(),
        function: rec.function.clone(),
        location: rec.location.clone(),
        ipv6: ev.family == AF_INET6,
        proto: rec.proto.clone(),
        src: addr(ev.family, &ev.saddr),
        sport: ev.sport,
        dst: addr(ev.family, &ev.daddr),
        dport: ev.dport,
        ifname: rec.ifname.clone(),
        dnat: rec.dnat,
        orig_dst: dnat.then(|| addr(ev.family, &ev.orig_daddr)),
        orig_dport: rec.orig_dport,
        answered: None,
        nf_hook: nfprobe::trail_hook(ev.nf_trail),
        traced: None,
        route: None,
        tcp_flags: ev.tcp_flags,
        len: ev.len,
        routing_answer: None,
    }
}

fn family_name(family: u8) -> &'static str {
    match family {
        AF_INET => "ipv4",
        AF_INET6 => "ipv6",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_flags_are_spelled_like_tcpdump_users_expect() {
        assert_eq!(tcp_flags(0x02), "SYN");
        assert_eq!(tcp_flags(0x12), "SYN|ACK");
        assert_eq!(tcp_flags(0x14), "RST|ACK");
        assert_eq!(tcp_flags(0), "-");
    }

    #[test]
    fn short_records_are_refused_not_read_past() {
        assert!(decode(&[0u8; 10]).is_none());
        let ev = DropEvent {
            reason: 7,
            dport: 5000,
            ..Default::default()
        };
        // SAFETY: viewing a plain-data struct as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&ev as *const DropEvent).cast::<u8>(),
                size_of::<DropEvent>(),
            )
        };
        assert_eq!(decode(bytes), Some(ev));
    }

    #[test]
    fn ipv6_and_ipv4_addresses_are_rendered_by_family() {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&[198, 51, 100, 1]);
        assert_eq!(addr(AF_INET, &raw).to_string(), "198.51.100.1");
        let v6: [u8; 16] = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(addr(AF_INET6, &v6).to_string(), "2001:db8::1");
    }

    #[test]
    fn wall_clock_follows_monotonic_time() {
        let clock = Clock::now();
        let mono = clock_ns(libc::CLOCK_MONOTONIC) as u64;
        let wall = clock.wall(mono);
        let delta = (Utc::now() - wall).num_milliseconds().abs();
        assert!(delta < 1000, "wall clock off by {delta} ms");
        assert!(rfc3339(wall).ends_with('Z'));
    }
}
