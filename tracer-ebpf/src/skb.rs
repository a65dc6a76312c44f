//! What every drop hook does with an `sk_buff`: filter by namespace and watched port, count
//! exactly, and hand a `DropEvent` to userspace.
//!
//! Kernel contract (offsets resolved from BTF by the loader, see `KernelOffsets`):
//! `skb->head + skb->network_header` points at the IPv4/IPv6 header whenever `skb->protocol`
//! is ETH_P_IP/ETH_P_IPV6 — true from `ip_rcv`/`ipv6_rcv` on, and on every output path after
//! the IP header is built. Drops before that (driver, bridge) are not IP drops for us.
use aya_ebpf::{
    bindings::BPF_F_CURRENT_CPU,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    maps::PerfEventByteArray,
};
use aya_log_ebpf::warn;
use tracer_common::{
    ABSENT, AF_INET, AF_INET6, AddrPort, CounterKey, DropEvent, DropFlowCount, DropFlowKey,
    EVENT_HEAD, FLOW_INTERVAL_NS, FlowKey, HDR_LEN, KernelOffsets, PayloadMeta, SNAP_MAX,
    TEARDOWN_RCV_SITES, TEARDOWN_SITES, WatchConfig, flow, kind, stat,
};

use crate::maps::{
    CONFIG, COUNTERS, DROP_FLOWS, DROP_SCRATCH, EVENTS, FLOWS, IGNORED_REASONS, NF_TRAIL, OFFSETS,
    PAYLOADS, TEARDOWN, WATCH_ADDR_PORT, WATCH_PORT, bump,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
// IPv6 extension headers that may stand between the fixed header and the transport header.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_DEST: u8 = 60;
const BPF_NOEXIST: u64 = 1;

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-tolerant path: a bad
    // address returns an error, it never faults. Every T used here is plain integers/bytes.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }
}

/// nsfs inode of the namespace the skb belongs to: its device's namespace, or its socket's
/// when it has no device (locally generated, not yet routed). 0 when neither is readable.
#[inline(always)]
pub fn netns_of(skb: u64, dev: u64, off: &KernelOffsets) -> u32 {
    let net: u64 = if dev != 0 {
        read(dev, off.dev_nd_net).unwrap_or(0)
    } else {
        let sk: u64 = read(skb, off.skb_sk).unwrap_or(0);
        if sk == 0 {
            0
        } else {
            read(sk, off.sk_net).unwrap_or(0)
        }
    };
    if net == 0 {
        return 0;
    }
    read(net, off.net_ns_inum).unwrap_or(0)
}

/// Why a packet could not be parsed: the first is normal (ARP, a driver-level drop before the
/// IP header is known), the second is counted as a program error.
enum NotParsed {
    NotIp,
    Unreadable,
}

impl From<i32> for NotParsed {
    fn from(_: i32) -> Self {
        NotParsed::Unreadable
    }
}

/// Where a parsed packet lies in kernel memory: its IP header, the end of its transport
/// header (where the payload begins), and the end of its linear part (`head + tail`): bytes
/// after that in the head buffer are not the packet, its payload sits in page fragments.
struct Extent {
    ip: u64,
    headers_end: u64,
    linear_end: u64,
}

/// Fills addresses, protocol, ports and flags from the packet headers.
#[inline(always)]
fn parse(skb: u64, off: &KernelOffsets, ev: &mut DropEvent) -> Result<Extent, NotParsed> {
    let protocol = u16::from_be(read::<u16>(skb, off.skb_protocol)?);
    if protocol != ETH_P_IP && protocol != ETH_P_IPV6 {
        return Err(NotParsed::NotIp);
    }
    let head: u64 = read(skb, off.skb_head)?;
    let nh: u16 = read(skb, off.skb_network_header)?;
    let ip = head + nh as u64;
    let tail: u32 = read(skb, off.skb_tail)?;
    let linear_end = head + tail as u64;
    let l4 = match protocol {
        ETH_P_IP => {
            let hdr: [u8; 20] = read(ip, 0)?;
            if hdr[0] >> 4 != 4 {
                return Err(NotParsed::NotIp);
            }
            ev.family = AF_INET;
            ev.proto = hdr[9];
            ev.saddr[..4].copy_from_slice(&hdr[12..16]);
            ev.daddr[..4].copy_from_slice(&hdr[16..20]);
            // A non-first fragment has no transport header: keep the addresses, no ports.
            let frag_off = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff;
            if frag_off != 0 {
                let headers_end = ip + ((hdr[0] & 0x0f) as u64) * 4;
                return Ok(Extent {
                    ip,
                    headers_end,
                    linear_end,
                });
            }
            ip + ((hdr[0] & 0x0f) as u64) * 4
        }
        ETH_P_IPV6 => {
            let hdr: [u8; 40] = read(ip, 0)?;
            if hdr[0] >> 4 != 6 {
                return Err(NotParsed::NotIp);
            }
            ev.family = AF_INET6;
            ev.saddr.copy_from_slice(&hdr[8..24]);
            ev.daddr.copy_from_slice(&hdr[24..40]);
            let mut next = hdr[6];
            let mut at = ip + 40;
            // Bounded walk over the extension headers that commonly precede TCP/UDP.
            for _ in 0..4 {
                if next != NEXTHDR_HOP && next != NEXTHDR_ROUTING && next != NEXTHDR_DEST {
                    break;
                }
                let ext: [u8; 2] = read(at, 0)?;
                next = ext[0];
                at += (ext[1] as u64 + 1) * 8;
            }
            ev.proto = next;
            at
        }
        _ => return Err(NotParsed::NotIp),
    };
    let headers_end = match ev.proto {
        IPPROTO_TCP => {
            let th: [u8; 14] = read(l4, 0)?;
            ev.sport = u16::from_be_bytes([th[0], th[1]]);
            ev.dport = u16::from_be_bytes([th[2], th[3]]);
            ev.tcp_flags = th[13];
            l4 + ((th[12] >> 4) as u64) * 4
        }
        IPPROTO_UDP | IPPROTO_SCTP => {
            let ports: [u8; 4] = read(l4, 0)?;
            ev.sport = u16::from_be_bytes([ports[0], ports[1]]);
            ev.dport = u16::from_be_bytes([ports[2], ports[3]]);
            // SCTP's common header is 12 bytes; UDP's 8.
            l4 + if ev.proto == IPPROTO_UDP { 8 } else { 12 }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let ih: [u8; 2] = read(l4, 0)?;
            ev.icmp_type = ih[0];
            ev.icmp_code = ih[1];
            l4 + 8
        }
        _ => l4,
    };
    Ok(Extent {
        ip,
        headers_end,
        linear_end,
    })
}

/// The watched port this packet matches, if any: destination first (the published port of an
/// inbound packet), then source (a reply, e.g. the RST or SYN-ACK of the service).
#[inline(always)]
fn matched_port(ev: &DropEvent) -> Option<u16> {
    if ev.dport != 0 && WATCH_PORT.get_ptr(&ev.dport).is_some() {
        return Some(ev.dport);
    }
    if ev.sport != 0 && WATCH_PORT.get_ptr(&ev.sport).is_some() {
        return Some(ev.sport);
    }
    let mut key = AddrPort {
        addr: ev.daddr,
        family: ev.family,
        _pad: 0,
        port: ev.dport,
    };
    if WATCH_ADDR_PORT.get_ptr(&key).is_some() {
        return Some(ev.dport);
    }
    key.addr = ev.saddr;
    key.port = ev.sport;
    if WATCH_ADDR_PORT.get_ptr(&key).is_some() {
        return Some(ev.sport);
    }
    None
}

#[inline(always)]
fn count(reason: u32, port: u16, proto: u8) {
    let key = CounterKey {
        reason,
        port,
        proto,
        _pad: 0,
    };
    if let Some(slot) = COUNTERS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value, see `maps::bump`.
        unsafe { *slot += 1 };
        return;
    }
    if COUNTERS.insert(&key, &1, BPF_NOEXIST).is_ok() {
        return;
    }
    // Another CPU created the key between our lookup and insert: count in the existing slot.
    match COUNTERS.get_ptr_mut(&key) {
        // SAFETY: as above.
        Some(slot) => unsafe { *slot += 1 },
        None => {
            bump(stat::COUNTER_FULL);
            warn!(
                &(),
                "exact counter map full: a drop (reason {}, port {}) is not counted", reason, port
            );
        }
    }
}

/// Conntrack facts of the packet: whether it had passed conntrack, its status bits (was it
/// DNATed?) and its original destination.
#[inline(always)]
fn read_conntrack(skb: u64, off: &KernelOffsets, ev: &mut DropEvent) {
    if off.skb_nfct == ABSENT || off.ct_status == ABSENT {
        return;
    }
    let nfct: u64 = read(skb, off.skb_nfct).unwrap_or(0);
    // The low 3 bits carry ctinfo (NFCT_INFOMASK); the rest is the nf_conn pointer.
    let ct = nfct & !7u64;
    if ct == 0 {
        return;
    }
    ev.has_ct = 1;
    ev.ct_status = read::<u64>(ct, off.ct_status).unwrap_or(0) as u32;
    if off.ct_orig_daddr != ABSENT {
        if ev.family == AF_INET {
            if let Ok(a) = read::<[u8; 4]>(ct, off.ct_orig_daddr) {
                ev.orig_daddr[..4].copy_from_slice(&a);
            }
        } else if let Ok(a) = read::<[u8; 16]>(ct, off.ct_orig_daddr) {
            ev.orig_daddr = a;
        }
    }
    if off.ct_orig_dport != ABSENT {
        ev.orig_dport = u16::from_be(read::<u16>(ct, off.ct_orig_dport).unwrap_or(0));
    }
}

/// The watched port a packet *to* it matches: its destination port, or its destination
/// (address, port) — the direction of a published port's traffic.
#[inline(always)]
fn matched_dport(ev: &DropEvent) -> Option<u16> {
    if ev.dport == 0 {
        return None;
    }
    if WATCH_PORT.get_ptr(&ev.dport).is_some() {
        return Some(ev.dport);
    }
    let key = AddrPort {
        addr: ev.daddr,
        family: ev.family,
        _pad: 0,
        port: ev.dport,
    };
    WATCH_ADDR_PORT.get_ptr(&key).map(|_| ev.dport)
}

/// Adds one to a FLOWS counter.
#[inline(always)]
pub fn count_flow(port: u16, kind: u8, proto: u8) {
    let key = FlowKey { port, kind, proto };
    if let Some(slot) = FLOWS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value, see `maps::bump`.
        unsafe { *slot += 1 };
        return;
    }
    if FLOWS.insert(&key, &1, BPF_NOEXIST).is_err()
        && let Some(slot) = FLOWS.get_ptr_mut(&key)
    {
        // SAFETY: as above (another CPU created the key first).
        unsafe { *slot += 1 };
    }
}

/// net_dev_queue: a packet of the watched namespace queued for transmission. One that arrived
/// on another device and goes to a watched (address,) port was forwarded: counted per port.
#[inline(always)]
pub fn on_transmit(skb: u64) {
    if skb == 0 {
        return;
    }
    let off = OFFSETS.load();
    let cfg = CONFIG.load();
    // Cheapest tests first: this runs for every packet every namespace sends.
    // Locally generated packets have no ingress device.
    let iif: u32 = read(skb, off.skb_iif).unwrap_or(0);
    if iif == 0 {
        return;
    }
    let dev: u64 = read(skb, off.skb_dev).unwrap_or(0);
    if dev == 0 || bridge_port(dev, &off) {
        return;
    }
    let ifindex: u32 = read(dev, off.dev_ifindex).unwrap_or(0);
    if iif == ifindex || (cfg.netns != 0 && netns_of(skb, dev, &off) != cfg.netns) {
        return;
    }
    let Some(slot) = DROP_SCRATCH.get_ptr_mut(kind::TRANSMIT as u32) else {
        return;
    };
    // SAFETY: this program's own per-CPU slot (see DROP_SCRATCH); only the header fields
    // parse() writes are read back, after it wrote them.
    let ev = unsafe {
        (*slot).dport = 0;
        (*slot).sport = 0;
        (*slot).daddr = [0; 16];
        &mut *slot
    };
    if parse(skb, &off, ev).is_err() {
        return;
    }
    if let Some(port) = matched_dport(ev) {
        count_flow(port, flow::FORWARDED, ev.proto);
    }
}

/// Whether `dev` is a bridge's port: a packet queued there was already counted when the
/// IP layer queued it on the bridge (a container behind docker0 would count twice).
#[inline(always)]
fn bridge_port(dev: u64, off: &KernelOffsets) -> bool {
    if off.dev_priv_flags == ABSENT || off.iff_bridge_port == 0 {
        return false;
    }
    let flags: u32 = read(dev, off.dev_priv_flags).unwrap_or(0);
    flags & off.iff_bridge_port != 0
}

/// The netfilter trail of `skb` if this CPU's slot holds it, taken: the slot is cleared on
/// every free, watched or not, so no later packet at the same address inherits it.
#[inline(always)]
fn take_trail(skb: u64) -> u16 {
    let Some(slot) = NF_TRAIL.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot (see tracer_common::Trail).
    unsafe {
        if (*slot).skb != skb {
            return 0;
        }
        (*slot).skb = 0;
        (*slot).bits as u16
    }
}

/// kfree_skb: a packet freed with a drop reason.
#[inline(always)]
/// `TYPED`: `skb` is the tp_btf argument itself, a pointer the verifier knows as a
/// `struct sk_buff`, so `bpf_skb_output` may copy its payload (`--snaplen`); the classic
/// tracepoint's `skb` is a plain number and keeps the linear part only.
pub fn on_drop<const TYPED: bool>(skb: u64, location: u64, reason: u32) {
    let trail = take_trail(skb);
    // SAFETY: lookups in a map that only the loader writes, before the program is attached.
    if unsafe { IGNORED_REASONS.get(&reason) }.is_some() {
        return;
    }
    observe::<TYPED>(skb, kind::DROP, reason, location, trail, 0, 0);
}

/// icmp_send: the kernel answers `skb` with an ICMP error (a REJECT, or a routing error).
#[inline(always)]
pub fn on_icmp_send(skb: u64, icmp_type: u8, icmp_code: u8) {
    observe::<false>(skb, kind::ICMP_SENT, 0, 0, 0, icmp_type, icmp_code);
}

/// tcp_send_reset: the TCP stack answers `skb` with a RST (`reason`: enum sk_rst_reason).
#[inline(always)]
pub fn on_rst(skb: u64, reason: u32) {
    observe::<false>(skb, kind::RST_SENT, reason, 0, 0, 0, 0);
}

/// A free at a teardown site with no specific reason (see WatchConfig::skip_teardown): a FIN
/// or RST (without SYN) that TCP's receive function freed, a late segment of a connection
/// already closed, which TIME_WAIT answers and then discards (tcp_v4_rcv's do_time_wait
/// path); or what a closing socket's queue purge freed. Normal teardown, not a drop anyone
/// is paged for.
#[inline(always)]
fn late_teardown(ev: &DropEvent, cfg: &WatchConfig) -> bool {
    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    if cfg.skip_teardown == 0 || ev.proto != IPPROTO_TCP || ev.reason != cfg.teardown_reason {
        return false;
    }
    let Some(sites) = TEARDOWN.get(0) else {
        return false;
    };
    let at = ev.location;
    let closing = ev.tcp_flags & (FIN | RST) != 0 && ev.tcp_flags & SYN == 0;
    let mut i = 0;
    while i < TEARDOWN_SITES {
        let (start, end) = (sites.ranges[2 * i], sites.ranges[2 * i + 1]);
        if start <= at && at < end && (i >= TEARDOWN_RCV_SITES || closing) {
            return true;
        }
        i += 1;
    }
    false
}

/// In-kernel aggregation: counts the event in its flow and says whether it may still go to
/// the ring (the first `burst` of the flow on this CPU in each FLOW_INTERVAL_NS). A flow the
/// full map cannot take is counted in stat::FLOW_FULL and sends every event.
#[inline(always)]
fn admit(ev: &DropEvent, burst: u32) -> bool {
    let key = DropFlowKey::of(ev);
    let now = ev.ktime_ns;
    if let Some(v) = DROP_FLOWS.get_ptr_mut(&key) {
        // SAFETY: this CPU's value of the flow (see `next_in_flow`).
        return next_in_flow(unsafe { &mut *v }, now, burst);
    }
    let first = DropFlowCount {
        packets: 1,
        sent: 1,
        first_ns: now,
        last_ns: now,
        window_ns: now,
        window_sent: 1,
    };
    if DROP_FLOWS.insert(&key, &first, BPF_NOEXIST).is_ok() {
        return true;
    }
    // Another CPU created the key between our lookup and insert (its other CPUs' values are
    // zeros): count in this CPU's value.
    match DROP_FLOWS.get_ptr_mut(&key) {
        // SAFETY: as above.
        Some(v) => next_in_flow(unsafe { &mut *v }, now, burst),
        None => {
            bump(stat::FLOW_FULL);
            true
        }
    }
}

/// One more packet of a flow on this CPU; whether it may go to the ring. The value is this
/// CPU's: the kernel never nests a program inside itself on a CPU, and the key's kind keeps
/// the drop and signal programs (which can nest) on different values.
#[inline(always)]
fn next_in_flow(v: &mut DropFlowCount, now: u64, burst: u32) -> bool {
    v.packets += 1;
    v.last_ns = now;
    if v.first_ns == 0 {
        v.first_ns = now;
    }
    if now.wrapping_sub(v.window_ns) >= FLOW_INTERVAL_NS {
        v.window_ns = now;
        v.window_sent = 0;
    }
    if v.window_sent >= burst as u64 {
        return false;
    }
    v.window_sent += 1;
    v.sent += 1;
    true
}

/// Copies the packet's own bytes from its IP header into the event: through the transport
/// header by default (no payload byte reaches userspace), up to `snaplen` with `--snaplen`,
/// and never past the linear part, whatever lies after it in the head buffer (other memory,
/// not the packet).
#[inline(always)]
fn capture(ev: &mut DropEvent, at: &Extent, snaplen: u32) {
    let want = if snaplen == 0 {
        at.headers_end.saturating_sub(at.ip)
    } else {
        snaplen as u64
    };
    let linear = at.linear_end.saturating_sub(at.ip);
    let n = want.min(linear).min(ev.len as u64).min(HDR_LEN as u64) as u32;
    if n == 0 {
        return;
    }
    // SAFETY: fault-tolerant kernel read of n <= HDR_LEN bytes into the event's own buffer.
    let r = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            ev.hdr.as_mut_ptr().cast(),
            n,
            at.ip as *const core::ffi::c_void,
        )
    };
    if r == 0 {
        ev.hdr_len = n as u16;
    }
}

/// `--snaplen` past the linear part: `bpf_skb_output` copies the packet from `skb->data`
/// (page fragments included) into PAYLOADS, headed by which event it belongs to. Sent before
/// the event itself, so userspace holding the event already finds it.
#[inline(always)]
fn send_payload(skb: u64, ev: &DropEvent, off: &KernelOffsets, ip: u64, snaplen: u32) {
    let Ok(data) = read::<u64>(skb, off.skb_data) else {
        return;
    };
    let data_from_ip = data.wrapping_sub(ip) as i64;
    // skb->len counts from data: bytes before the IP header (a MAC header) come first.
    let want = snaplen.min(SNAP_MAX) as i64 - data_from_ip.min(0).max(-(SNAP_MAX as i64));
    let len = want.clamp(0, ev.len as i64) as u32;
    let meta = PayloadMeta {
        ktime_ns: ev.ktime_ns,
        location: ev.location,
        data_from_ip: data_from_ip.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
        len,
    };
    let flags = BPF_F_CURRENT_CPU | ((len as u64) << 32);
    // SAFETY: `skb` is the program's typed sk_buff argument (TYPED), PAYLOADS a perf event
    // array, `meta` a stack value of the size passed. A full perf buffer loses the record
    // (counted by the kernel); the event still carries the linear bytes.
    let r = unsafe {
        aya_ebpf::helpers::generated::bpf_skb_output(
            skb as *mut core::ffi::c_void,
            (&PAYLOADS as *const PerfEventByteArray).cast_mut().cast(),
            flags,
            (&meta as *const PayloadMeta).cast_mut().cast(),
            core::mem::size_of::<PayloadMeta>() as u64,
        )
    };
    if r != 0 {
        bump(stat::PAYLOAD_LOST);
    }
}

/// Shared body of every hook: namespace filter, parse, watch filter, count, emit.
#[inline(always)]
fn observe<const TYPED: bool>(
    skb: u64,
    event_kind: u8,
    reason: u32,
    location: u64,
    trail: u16,
    icmp_type: u8,
    icmp_code: u8,
) {
    if skb == 0 {
        return;
    }
    let off = OFFSETS.load();
    let cfg = CONFIG.load();
    let dev: u64 = read(skb, off.skb_dev).unwrap_or(0);
    let netns = netns_of(skb, dev, &off);
    if cfg.netns != 0 && netns != cfg.netns {
        return;
    }
    // The event (240 bytes) is built in per-CPU scratch space: with the parsing state it
    // would not fit the 512-byte BPF stack.
    let Some(slot) = DROP_SCRATCH.get_ptr_mut(event_kind as u32) else {
        return;
    };
    // SAFETY: the per-CPU slot of this event kind belongs to the one program that emits it,
    // and the kernel never runs a program nested inside itself on a CPU (see DROP_SCRATCH).
    // Zeroing is a plain byte fill.
    let ev = unsafe {
        core::ptr::write_bytes(slot, 0, 1);
        &mut *slot
    };
    ev.location = location;
    ev.reason = reason;
    ev.netns = netns;
    ev.kind = event_kind;
    let extent = match parse(skb, &off, ev) {
        Ok(extent) => extent,
        Err(NotParsed::NotIp) => return,
        Err(NotParsed::Unreadable) => {
            bump(stat::READ_ERRORS);
            // Not the pointer itself: formatting a typed BTF pointer is arithmetic the 6.1
            // verifier refuses in tp_btf programs (measured in the kernel matrix).
            warn!(
                &(),
                "unreadable sk_buff (kind {}): do this kernel's offsets match its BTF?", event_kind
            );
            return;
        }
    };
    let port = match matched_port(ev) {
        Some(port) => port,
        None if cfg.match_all != 0 => ev.dport,
        None => return,
    };
    if event_kind == kind::DROP {
        if late_teardown(ev, &cfg) {
            bump(stat::TEARDOWN);
            return;
        }
        count(reason, port, ev.proto);
        ev.nf_trail = trail;
    } else {
        ev.icmp_type = icmp_type;
        ev.icmp_code = icmp_code;
    }

    read_conntrack(skb, &off, ev);
    // SAFETY: a helper call without arguments.
    ev.ktime_ns = unsafe { bpf_ktime_get_ns() };
    ev.port = port;
    if cfg.flow_burst != 0 && !admit(ev, cfg.flow_burst) {
        return;
    }
    if dev != 0 {
        ev.dev_ifindex = read(dev, off.dev_ifindex).unwrap_or(0);
    }
    let iif: u32 = read(skb, off.skb_iif).unwrap_or(0);
    ev.ifindex = if iif != 0 { iif } else { ev.dev_ifindex };
    ev.len = read(skb, off.skb_len).unwrap_or(0);
    if cfg.capture_headers != 0 && event_kind == kind::DROP {
        capture(ev, &extent, cfg.snaplen);
        if TYPED && cfg.snaplen > ev.hdr_len as u32 && ev.len > ev.hdr_len as u32 {
            send_payload(skb, ev, &off, extent.ip, cfg.snaplen);
        }
    }
    // Default wakeup policy: the kernel wakes the reader only when it had caught up with this
    // record, checked at commit, so a storm costs one wakeup per batch and none is lost (a
    // query of pending data before the output, as before, raced the reader and left events
    // waiting for its timer while the ring filled).
    let sent = if cfg.capture_headers != 0 {
        EVENTS.output(ev, 0)
    } else {
        // SAFETY: the event's first EVENT_HEAD bytes, inside its own scratch slot.
        let head = unsafe {
            core::slice::from_raw_parts((ev as *const DropEvent).cast::<u8>(), EVENT_HEAD)
        };
        EVENTS.output(head, 0)
    };
    if sent.is_ok() {
        bump(stat::EVENTS);
    } else if event_kind != kind::DROP {
        bump(stat::SIGNALS_LOST);
    } else {
        bump(stat::RING_LOST);
        warn!(
            &(),
            "event ring full: an event for port {} is lost (counted)", port
        );
    }
}
