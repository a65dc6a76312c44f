//! What every drop hook does with an `sk_buff`: filter by namespace and watched port, count
//! exactly, and hand a `DropEvent` to userspace.
//!
//! Kernel contract (offsets resolved from BTF by the loader, see `KernelOffsets`):
//! `skb->head + skb->network_header` points at the IPv4/IPv6 header whenever `skb->protocol`
//! is ETH_P_IP/ETH_P_IPV6 — true from `ip_rcv`/`ipv6_rcv` on, and on every output path after
//! the IP header is built. Drops before that (driver, bridge) are not IP drops for us.
//!
//! Cost: the drop and transmit hooks run for every packet of the host. `TYPED` programs
//! (tp_btf, fentry) get BTF-typed pointers, so the fields they read are direct loads at
//! load-time-constant offsets (see `field`); the packet bytes, behind `skb->head`, take one
//! `bpf_probe_read_kernel`. The decision "not ours" comes first: the namespace, then the
//! port (one array lookup), before any map is touched.
use aya_ebpf::{
    bindings::BPF_F_CURRENT_CPU,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    maps::PerfEventByteArray,
};
use aya_log_ebpf::warn;
use tracer_common::{
    ABSENT, AF_INET, AF_INET6, AddrPort, CounterKey, DropEvent, DropFlowCount, DropFlowKey,
    EVENT_HEAD, FLOW_INTERVAL_NS, FlowKey, HDR_LEN, PayloadMeta, SNAP_MAX, TEARDOWN_RCV_SITES,
    TEARDOWN_SITES, flow, kind, port, stat,
};

use crate::maps::{
    COUNTERS, DROP_FLOWS, DROP_SCRATCH, EVENTS, FLOWS, HEADERS, IGNORED, NF_TRAIL, PAYLOADS, PORTS,
    TEARDOWN, WATCH_ADDR_PORT, bump, get,
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

/// Reads a `T` at `base + off` of a kernel object. `TYPED`: `base` is a pointer the verifier
/// knows by its BTF type (a tp_btf or fentry argument, or a pointer field read from one), and
/// `off` a field offset read from OFFSETS (a constant to the verifier): one direct load,
/// which the verifier checks against the type's layout and the JIT makes fault-tolerant (a
/// NULL or stale pointer reads as zero). Else, or for memory no BTF type describes (packet
/// bytes), `bpf_probe_read_kernel`. `T` must be the field's own size: the verifier refuses a
/// pointer field read in part.
#[inline(always)]
pub fn field<const TYPED: bool, T: Copy>(base: u64, off: u32) -> Result<T, i32> {
    if TYPED {
        // SAFETY: see above; the verifier refuses any load this does not describe.
        Ok(unsafe { core::ptr::read_volatile((base + off as u64) as *const T) })
    } else {
        read(base, off)
    }
}

/// nsfs inode of the namespace the skb belongs to: its device's namespace, or its socket's
/// when it has no device (locally generated, not yet routed). 0 when neither is readable.
#[inline(always)]
pub fn netns_of<const TYPED: bool>(skb: u64, dev: u64) -> u32 {
    let net: u64 = if dev != 0 {
        field::<TYPED, u64>(dev, get!(OFFSETS.dev_nd_net)).unwrap_or(0)
    } else {
        let sk: u64 = field::<TYPED, u64>(skb, get!(OFFSETS.skb_sk)).unwrap_or(0);
        if sk == 0 {
            0
        } else {
            field::<TYPED, u64>(sk, get!(OFFSETS.sk_net)).unwrap_or(0)
        }
    };
    if net == 0 {
        return 0;
    }
    field::<TYPED, u32>(net, get!(OFFSETS.net_ns_inum)).unwrap_or(0)
}

/// Whether the skb is outside the watched namespace (a CONFIG.netns of 0 watches all).
#[inline(always)]
fn elsewhere(netns: u32) -> bool {
    let watched = get!(CONFIG.netns);
    watched != 0 && netns != watched
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

/// A packet's headers as the filter and the event need them: an unwatched packet is decided
/// without touching the event's (larger) scratch slot. Addresses as two 8-byte words
/// (IPv4 in the first four bytes), copied with two loads and two stores: byte arrays
/// become calls to the object's own memcpy/memset loops, which cost more than the rest of
/// the filter.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Headers {
    pub saddr: [u64; 2],
    pub daddr: [u64; 2],
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub proto: u8,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    _pad: [u8; 7],
}

/// Zeroes `n` 8-byte words at `p` with plain stores (volatile: a zeroing loop is otherwise
/// turned back into a memset call).
///
/// # Safety
/// `p` must be valid and 8-aligned for `n` words.
#[inline(always)]
unsafe fn zero_words(p: *mut u64, n: usize) {
    let mut i = 0;
    while i < n {
        // SAFETY: in bounds per the caller.
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
}

impl Headers {
    pub const ZERO: Headers = Headers {
        saddr: [0; 2],
        daddr: [0; 2],
        sport: 0,
        dport: 0,
        family: 0,
        proto: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        _pad: [0; 7],
    };

    /// `[u64; 2]` as the byte array maps and events key addresses by.
    #[inline(always)]
    pub fn bytes(a: &[u64; 2]) -> [u8; 16] {
        // SAFETY: same size, plain data.
        unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(*a) }
    }
}

/// Writes two words into a 16-byte address field that lies at an 8-aligned offset of an
/// 8-aligned struct (DropEvent's saddr/daddr).
///
/// # Safety
/// `dst` must be 8-aligned.
#[inline(always)]
unsafe fn put_addr(dst: *mut [u8; 16], a: &[u64; 2]) {
    let d = dst.cast::<u64>();
    // SAFETY: per the caller.
    unsafe {
        d.write(a[0]);
        d.add(1).write(a[1]);
    }
}

/// The bytes read at once from the IP header, 8-aligned so its addresses load as words.
#[repr(C, align(8))]
struct Peek([u8; PEEK]);

/// Bytes read at once from the IP header: IPv6's fixed header (40) and the first 20 of a
/// transport header, so the common packet (IPv4 without options, IPv6 without extension
/// headers) takes one read. Always inside the skb's buffer: the linear part holds at least
/// the IP header, and `skb_shared_info` (hundreds of bytes) follows its end.
const PEEK: usize = 60;

/// Fills `h` from the packet headers.
#[inline(always)]
fn parse<const TYPED: bool>(skb: u64, h: &mut Headers) -> Result<Extent, NotParsed> {
    let protocol = u16::from_be(field::<TYPED, u16>(skb, get!(OFFSETS.skb_protocol))?);
    if protocol != ETH_P_IP && protocol != ETH_P_IPV6 {
        return Err(NotParsed::NotIp);
    }
    let head: u64 = field::<TYPED, u64>(skb, get!(OFFSETS.skb_head))?;
    let nh: u16 = field::<TYPED, u16>(skb, get!(OFFSETS.skb_network_header))?;
    let tail: u32 = field::<TYPED, u32>(skb, get!(OFFSETS.skb_tail))?;
    let ip = head + nh as u64;
    let linear_end = head + tail as u64;
    let mut peek = core::mem::MaybeUninit::<Peek>::uninit();
    // SAFETY: the helper fills all PEEK bytes or fails (then nothing is read from it).
    let buf = unsafe {
        read_into(&mut (*peek.as_mut_ptr()).0, ip)?;
        &mut (*peek.as_mut_ptr()).0
    };
    let words = buf.as_ptr().cast::<u32>();
    // The transport header's offset from `ip`, and whether `buf` holds its first 20 bytes.
    let (l4, in_buf) = if protocol == ETH_P_IP {
        if buf[0] >> 4 != 4 {
            return Err(NotParsed::NotIp);
        }
        h.family = AF_INET;
        h.proto = buf[9];
        // SAFETY: 4-aligned words of the 8-aligned buffer (bytes 12..20).
        unsafe {
            h.saddr[0] = core::ptr::read(words.add(3)) as u64;
            h.daddr[0] = core::ptr::read(words.add(4)) as u64;
        }
        let ihl = ((buf[0] & 0x0f) as u64) * 4;
        // A non-first fragment has no transport header: keep the addresses, no ports.
        if u16::from_be_bytes([buf[6], buf[7]]) & 0x1fff != 0 {
            return Ok(Extent {
                ip,
                headers_end: ip + ihl,
                linear_end,
            });
        }
        (ihl, ihl == 20)
    } else {
        if buf[0] >> 4 != 6 {
            return Err(NotParsed::NotIp);
        }
        h.family = AF_INET6;
        let quads = buf.as_ptr().cast::<u64>();
        // SAFETY: 8-aligned words of the 8-aligned buffer (bytes 8..40).
        unsafe {
            h.saddr = [core::ptr::read(quads.add(1)), core::ptr::read(quads.add(2))];
            h.daddr = [core::ptr::read(quads.add(3)), core::ptr::read(quads.add(4))];
        }
        let mut next = buf[6];
        let mut at = 40u64;
        // Bounded walk over the extension headers that commonly precede TCP/UDP.
        for _ in 0..4 {
            if next != NEXTHDR_HOP && next != NEXTHDR_ROUTING && next != NEXTHDR_DEST {
                break;
            }
            let ext: [u8; 2] = read(ip + at, 0)?;
            next = ext[0];
            at += (ext[1] as u64 + 1) * 8;
        }
        h.proto = next;
        (at, at == 40)
    };
    // Constant offsets into `buf` only (the 5.10 verifier refuses a variable stack offset):
    // the transport header at 20 or 40, else read where it is, over the IP header (its
    // addresses are copied already).
    let th: &[u8] = if !in_buf {
        read_into(&mut buf[..20], ip + l4)?;
        &buf[..20]
    } else if l4 == 20 {
        &buf[20..40]
    } else {
        &buf[40..60]
    };
    let l4 = ip + l4;
    let headers_end = match h.proto {
        IPPROTO_TCP => {
            h.sport = u16::from_be_bytes([th[0], th[1]]);
            h.dport = u16::from_be_bytes([th[2], th[3]]);
            h.tcp_flags = th[13];
            l4 + ((th[12] >> 4) as u64) * 4
        }
        IPPROTO_UDP | IPPROTO_SCTP => {
            h.sport = u16::from_be_bytes([th[0], th[1]]);
            h.dport = u16::from_be_bytes([th[2], th[3]]);
            // SCTP's common header is 12 bytes; UDP's 8.
            l4 + if h.proto == IPPROTO_UDP { 8 } else { 12 }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            h.icmp_type = th[0];
            h.icmp_code = th[1];
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

/// How `port` is watched (`tracer_common::port` bits; 0 for port 0).
#[inline(always)]
fn port_bits(p: u16) -> u8 {
    if p == 0 {
        return 0;
    }
    PORTS.get(p as u32).copied().unwrap_or(0)
}

/// Whether (addr, port) is a watched pair (only for ports PORTS marks so: rare).
#[inline(always)]
fn watched_pair(family: u8, addr: &[u64; 2], p: u16) -> bool {
    let key = AddrPort {
        addr: Headers::bytes(addr),
        family,
        _pad: 0,
        port: p,
    };
    WATCH_ADDR_PORT.get_ptr(&key).is_some()
}

/// The watched port this packet matches, if any: destination first (the published port of an
/// inbound packet), then source (a reply, e.g. the RST or SYN-ACK of the service).
#[inline(always)]
fn matched_port(h: &Headers) -> Option<u16> {
    let (d, s) = (port_bits(h.dport), port_bits(h.sport));
    if d & port::ANY != 0 {
        return Some(h.dport);
    }
    if s & port::ANY != 0 {
        return Some(h.sport);
    }
    if d & port::ADDR != 0 && watched_pair(h.family, &h.daddr, h.dport) {
        return Some(h.dport);
    }
    if s & port::ADDR != 0 && watched_pair(h.family, &h.saddr, h.sport) {
        return Some(h.sport);
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

/// Conntrack facts of the packet that its flow key holds: whether it had passed conntrack,
/// and its status bits (was it DNATed?). The nf_conn pointer is bits of an integer
/// (`_nfct`), not a typed pointer: its fields are read with `bpf_probe_read_kernel`.
/// Returns the nf_conn (0 without one) for `conntrack_origin`.
#[inline(always)]
fn conntrack_status<const TYPED: bool>(skb: u64, ev: &mut DropEvent) -> u64 {
    let (nfct_at, status_at) = (get!(OFFSETS.skb_nfct), get!(OFFSETS.ct_status));
    if nfct_at == ABSENT || status_at == ABSENT {
        return 0;
    }
    let nfct: u64 = field::<TYPED, u64>(skb, nfct_at).unwrap_or(0);
    // The low 3 bits carry ctinfo (NFCT_INFOMASK); the rest is the nf_conn pointer.
    let ct = nfct & !7u64;
    if ct == 0 {
        return 0;
    }
    ev.has_ct = 1;
    ev.ct_status = read::<u64>(ct, status_at).unwrap_or(0) as u32;
    ct
}

/// Where the client originally sent the packet, before any DNAT: read only for an event
/// that goes to the ring (a storm's aggregated drops do not need it). One read where the
/// port follows the address, as in every kernel's `nf_conntrack_tuple`.
#[inline(always)]
fn conntrack_origin(ct: u64, ev: &mut DropEvent) {
    let (daddr_at, dport_at) = (get!(OFFSETS.ct_orig_daddr), get!(OFFSETS.ct_orig_dport));
    if ct == 0 || daddr_at == ABSENT {
        return;
    }
    if dport_at == daddr_at + 16 {
        if let Ok(dst) = read::<[u8; 18]>(ct, daddr_at) {
            if ev.family == AF_INET {
                ev.orig_daddr[..4].copy_from_slice(&dst[..4]);
            } else {
                ev.orig_daddr.copy_from_slice(&dst[..16]);
            }
            ev.orig_dport = u16::from_be_bytes([dst[16], dst[17]]);
        }
        return;
    }
    if ev.family == AF_INET {
        if let Ok(a) = read::<[u8; 4]>(ct, daddr_at) {
            ev.orig_daddr[..4].copy_from_slice(&a);
        }
    } else if let Ok(a) = read::<[u8; 16]>(ct, daddr_at) {
        ev.orig_daddr = a;
    }
    if dport_at != ABSENT {
        ev.orig_dport = u16::from_be(read::<u16>(ct, dport_at).unwrap_or(0));
    }
}

/// The watched port a packet *to* it matches: its destination port, or its destination
/// (address, port) — the direction of a published port's traffic.
#[inline(always)]
fn matched_dport(h: &Headers) -> Option<u16> {
    let d = port_bits(h.dport);
    if d & port::ANY != 0 || (d & port::ADDR != 0 && watched_pair(h.family, &h.daddr, h.dport)) {
        return Some(h.dport);
    }
    None
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
/// `skb` is the tp_btf argument (typed).
#[inline(always)]
pub fn on_transmit(skb: u64) {
    if skb == 0 {
        return;
    }
    // Cheapest tests first: this runs for every packet every namespace sends.
    // Locally generated packets have no ingress device.
    let iif: u32 = field::<true, u32>(skb, get!(OFFSETS.skb_iif)).unwrap_or(0);
    if iif == 0 {
        return;
    }
    let dev: u64 = field::<true, u64>(skb, get!(OFFSETS.skb_dev)).unwrap_or(0);
    if dev == 0 || bridge_port(dev) {
        return;
    }
    let ifindex: u32 = field::<true, u32>(dev, get!(OFFSETS.dev_ifindex)).unwrap_or(0);
    if iif == ifindex || elsewhere(netns_of::<true>(skb, dev)) {
        return;
    }
    let mut h = Headers::ZERO;
    if parse::<true>(skb, &mut h).is_err() {
        return;
    }
    if let Some(port) = matched_dport(&h) {
        count_flow(port, flow::FORWARDED, h.proto);
    }
}

/// Copies `dst.len()` bytes of kernel memory at `src` into `dst` (in place: a `read::<[u8;
/// N]>` copies its result once more, on a stack that has 512 bytes).
#[inline(always)]
fn read_into(dst: &mut [u8], src: u64) -> Result<(), NotParsed> {
    // SAFETY: a fault-tolerant kernel read of dst.len() bytes into dst.
    let r = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            dst.as_mut_ptr().cast(),
            dst.len() as u32,
            src as *const core::ffi::c_void,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(NotParsed::Unreadable)
    }
}

/// Whether `dev` is a bridge's port: a packet queued there was already counted when the
/// IP layer queued it on the bridge (a container behind docker0 would count twice).
#[inline(always)]
fn bridge_port(dev: u64) -> bool {
    let (at, bit) = (get!(OFFSETS.dev_priv_flags), get!(OFFSETS.iff_bridge_port));
    if at == ABSENT || bit == 0 {
        return false;
    }
    let flags: u32 = field::<true, u32>(dev, at).unwrap_or(0);
    flags & bit != 0
}

/// The netfilter trail of `skb` if this CPU's slot holds it, taken. Only frees in the watched
/// namespace take it: the probes write it there only, and a trail left behind by a packet
/// freed elsewhere (forwarded into a container) has no hook open, so a later packet at the
/// same address that inherits it is told nothing false; the first probe of each packet
/// starts the slot anew anyway.
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
/// `TYPED`: `skb` is the tp_btf argument itself, a pointer the verifier knows as a
/// `struct sk_buff`: direct loads, and `bpf_skb_output` may copy its payload (`--snaplen`);
/// the classic tracepoint's `skb` is a plain number and keeps the linear part only.
#[inline(always)]
pub fn on_drop<const TYPED: bool>(skb: u64, location: u64, reason: u32) {
    // First: one array lookup the verifier inlines (reasons past IGNORED_LEN are never
    // ignored).
    if IGNORED.get(reason).is_some_and(|v| *v != 0) {
        return;
    }
    observe::<TYPED>(skb, kind::DROP, reason, location, 0, 0);
}

/// icmp_send: the kernel answers `skb` with an ICMP error (a REJECT, or a routing error).
/// `TYPED`: from tp_btf or fentry (not the kprobe).
#[inline(always)]
pub fn on_icmp_send<const TYPED: bool>(skb: u64, icmp_type: u8, icmp_code: u8) {
    observe::<TYPED>(skb, kind::ICMP_SENT, 0, 0, icmp_type, icmp_code);
}

/// tcp_send_reset: the TCP stack answers `skb` with a RST (`reason`: enum sk_rst_reason).
#[inline(always)]
pub fn on_rst(skb: u64, reason: u32) {
    observe::<true>(skb, kind::RST_SENT, reason, 0, 0, 0);
}

/// A free at a teardown site with no specific reason (see WatchConfig::skip_teardown): a FIN
/// or RST (without SYN) that TCP's receive function freed, a late segment of a connection
/// already closed, which TIME_WAIT answers and then discards (tcp_v4_rcv's do_time_wait
/// path); or what a closing socket's queue purge freed. Normal teardown, not a drop anyone
/// is paged for.
#[inline(always)]
fn late_teardown(h: &Headers, reason: u32, at: u64) -> bool {
    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    if get!(CONFIG.skip_teardown) == 0
        || h.proto != IPPROTO_TCP
        || reason != get!(CONFIG.teardown_reason)
    {
        return false;
    }
    let Some(sites) = TEARDOWN.get(0) else {
        return false;
    };
    let closing = h.tcp_flags & (FIN | RST) != 0 && h.tcp_flags & SYN == 0;
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
fn send_payload(skb: u64, ev: &DropEvent, ip: u64, snaplen: u32) {
    let Ok(data) = field::<true, u64>(skb, get!(OFFSETS.skb_data)) else {
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
    icmp_type: u8,
    icmp_code: u8,
) {
    if skb == 0 {
        return;
    }
    let dev: u64 = field::<TYPED, u64>(skb, get!(OFFSETS.skb_dev)).unwrap_or(0);
    let netns = netns_of::<TYPED>(skb, dev);
    if elsewhere(netns) {
        return;
    }
    let trail = if event_kind == kind::DROP {
        take_trail(skb)
    } else {
        0
    };
    // Per-CPU scratch, one slot per event kind like DROP_SCRATCH (programs of different
    // kinds nest on a CPU): on the stack it took the drop program past 512 bytes.
    let Some(slot) = HEADERS.get_ptr_mut(event_kind as u32) else {
        return;
    };
    // SAFETY: this program's own per-CPU slot (see DROP_SCRATCH), 8-aligned, 6 words.
    let h = unsafe {
        zero_words(slot.cast(), core::mem::size_of::<Headers>() / 8);
        &mut *slot
    };
    let extent = match parse::<TYPED>(skb, h) {
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
    let port = match matched_port(h) {
        Some(port) => port,
        None if get!(CONFIG.match_all) != 0 => h.dport,
        None => return,
    };
    if event_kind == kind::DROP {
        if late_teardown(h, reason, location) {
            bump(stat::TEARDOWN);
            return;
        }
        count(reason, port, h.proto);
    }
    emit::<TYPED>(skb, dev, h, &extent, event_kind, port, |ev| {
        ev.location = location;
        ev.reason = reason;
        ev.netns = netns;
        if event_kind == kind::DROP {
            ev.nf_trail = trail;
        } else {
            ev.icmp_type = icmp_type;
            ev.icmp_code = icmp_code;
        }
    });
}

/// A watched packet's event: built in per-CPU scratch space (240 bytes: with the parsing
/// state it would not fit the 512-byte BPF stack), aggregated per flow, sent to the ring.
#[inline(always)]
fn emit<const TYPED: bool>(
    skb: u64,
    dev: u64,
    h: &Headers,
    extent: &Extent,
    event_kind: u8,
    port: u16,
    fill: impl FnOnce(&mut DropEvent),
) {
    let Some(slot) = DROP_SCRATCH.get_ptr_mut(event_kind as u32) else {
        return;
    };
    let headers = get!(CONFIG.capture_headers) != 0;
    // Without captured headers only the event's head goes to the ring: only it is zeroed.
    let words = if headers {
        core::mem::size_of::<DropEvent>() / 8
    } else {
        EVENT_HEAD / 8
    };
    // SAFETY: the per-CPU slot of this event kind belongs to the one program that emits it,
    // and the kernel never runs a program nested inside itself on a CPU (see DROP_SCRATCH);
    // it is 8-aligned, as are saddr and daddr in it (offsets 56 and 72).
    let ev = unsafe {
        zero_words(slot.cast(), words);
        put_addr(core::ptr::addr_of_mut!((*slot).saddr), &h.saddr);
        put_addr(core::ptr::addr_of_mut!((*slot).daddr), &h.daddr);
        &mut *slot
    };
    ev.kind = event_kind;
    ev.family = h.family;
    ev.proto = h.proto;
    ev.sport = h.sport;
    ev.dport = h.dport;
    ev.tcp_flags = h.tcp_flags;
    ev.icmp_type = h.icmp_type;
    ev.icmp_code = h.icmp_code;
    fill(ev);
    let ct = conntrack_status::<TYPED>(skb, ev);
    // SAFETY: a helper call without arguments.
    ev.ktime_ns = unsafe { bpf_ktime_get_ns() };
    ev.port = port;
    let burst = get!(CONFIG.flow_burst);
    if burst != 0 && !admit(ev, burst) {
        return;
    }
    conntrack_origin(ct, ev);
    if dev != 0 {
        ev.dev_ifindex = field::<TYPED, u32>(dev, get!(OFFSETS.dev_ifindex)).unwrap_or(0);
    }
    let iif: u32 = field::<TYPED, u32>(skb, get!(OFFSETS.skb_iif)).unwrap_or(0);
    ev.ifindex = if iif != 0 { iif } else { ev.dev_ifindex };
    ev.len = field::<TYPED, u32>(skb, get!(OFFSETS.skb_len)).unwrap_or(0);
    if headers && event_kind == kind::DROP {
        let snaplen = get!(CONFIG.snaplen);
        capture(ev, extent, snaplen);
        if TYPED && snaplen > ev.hdr_len as u32 && ev.len > ev.hdr_len as u32 {
            send_payload(skb, ev, extent.ip, snaplen);
        }
    }
    // Default wakeup policy: the kernel wakes the reader only when it had caught up with this
    // record, checked at commit, so a storm costs one wakeup per batch and none is lost (a
    // query of pending data before the output, as before, raced the reader and left events
    // waiting for its timer while the ring filled).
    let sent = if headers {
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
