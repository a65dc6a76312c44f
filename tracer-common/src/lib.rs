//! Plain `#[repr(C)]` data that crosses the kernel/userspace boundary.
//!
//! Every type here is read by the eBPF programs (tracer-ebpf) and written or decoded by the
//! loader (tracer). Field order is chosen so that no implicit padding exists: the verifier and
//! `aya::Pod` both need fully initialised bytes.
#![no_std]

/// Address families as the kernel numbers them (`AF_INET`, `AF_INET6`).
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Byte offsets into kernel structures, read from the running kernel's BTF in userspace and
/// handed to the programs as a global, because Rust eBPF cannot emit CO-RE relocations yet:
/// one compiled layout would be right for one kernel build only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `sk_buff.head` (unsigned char *)
    pub skb_head: u32,
    /// `sk_buff.network_header` (u16, offset from head)
    pub skb_network_header: u32,
    /// `sk_buff.protocol` (__be16, ETH_P_*)
    pub skb_protocol: u32,
    /// `sk_buff.dev` (struct net_device *)
    pub skb_dev: u32,
    /// `sk_buff.skb_iif` (int, ingress ifindex)
    pub skb_iif: u32,
    /// `sk_buff.len` (unsigned int)
    pub skb_len: u32,
    /// `sk_buff.tail` (sk_buff_data_t: an offset from head on 64-bit kernels): where the
    /// linear part of the packet ends; bytes past it in the head buffer are not the packet.
    pub skb_tail: u32,
    /// `sk_buff.data` (unsigned char *): where `bpf_skb_output` starts copying.
    pub skb_data: u32,
    /// `sk_buff.sk` (struct sock *)
    pub skb_sk: u32,
    /// `net_device.ifindex` (int)
    pub dev_ifindex: u32,
    /// `net_device.nd_net` (possible_net_t, whose first member is `struct net *net`)
    pub dev_nd_net: u32,
    /// `sock.__sk_common.skc_net` (possible_net_t)
    pub sk_net: u32,
    /// `net.ns.inum` (unsigned int): the namespace's nsfs inode, as `stat /run/netns/X` shows
    pub net_ns_inum: u32,
    /// Offsets of `skbaddr`, `location` and `reason` in the classic `skb/kfree_skb` tracepoint
    /// record (from its tracefs `format`), used only by the fallback program.
    pub tp_skbaddr: u32,
    pub tp_location: u32,
    pub tp_reason: u32,
    /// `sk_buff._nfct` (unsigned long: nf_conn pointer | ctinfo in the low 3 bits), or ABSENT
    /// on kernels built without conntrack.
    pub skb_nfct: u32,
    /// `nf_conn.status` (unsigned long, IPS_* bits).
    pub ct_status: u32,
    /// `nf_conn.tuplehash[IP_CT_DIR_ORIGINAL].tuple.dst.u3` and `.dst.u.all`: where the client
    /// originally sent the packet, before any DNAT.
    pub ct_orig_daddr: u32,
    pub ct_orig_dport: u32,
    /// `task_struct.real_parent`, `.tgid`, `.comm`, `.nsproxy`, `.mm`
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_nsproxy: u32,
    pub task_mm: u32,
    /// `nsproxy.net_ns`
    pub nsproxy_net_ns: u32,
    /// `mm_struct.arg_start`, `.arg_end`: the process's command line in its own memory.
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    /// `nf_hook_state.hook` (u8 since 5.x's rework, unsigned int before: its low byte is the
    /// hook number either way), or ABSENT.
    pub nf_state_hook: u32,
    /// `flowi4`: `__fl_common.flowic_iif`, `.flowic_proto`, `saddr`, `daddr`,
    /// `uli.ports.sport`, `.dport` (ABSENT when missing).
    pub fl4_iif: u32,
    pub fl4_proto: u32,
    pub fl4_saddr: u32,
    pub fl4_daddr: u32,
    pub fl4_sport: u32,
    pub fl4_dport: u32,
    /// `fib_table.tb_id`, `fib_nh_common.nhc_dev`, `net_device.name`.
    pub fib_tb_id: u32,
    pub nhc_dev: u32,
    pub dev_name: u32,
    /// `flowi6`: like the flowi4 fields (ABSENT when missing).
    pub fl6_iif: u32,
    pub fl6_proto: u32,
    pub fl6_saddr: u32,
    pub fl6_daddr: u32,
    pub fl6_sport: u32,
    pub fl6_dport: u32,
    /// `fib6_result.nh`, `.fib6_type`; `fib6_table.tb6_id`; `fib6_nh.nh_common`.
    pub fib6_res_nh: u32,
    pub fib6_res_type: u32,
    pub fib6_tb_id: u32,
    pub fib6_nh_common: u32,
    /// `net_device.priv_flags` (ABSENT when missing) and IFF_BRIDGE_PORT's value there (0
    /// when unknown): a bridge's delivery to its port is not a second forwarding.
    pub dev_priv_flags: u32,
    pub iff_bridge_port: u32,
}

/// Offset value meaning "this kernel has no such field": the program skips the read.
pub const ABSENT: u32 = u32::MAX;

impl KernelOffsets {
    /// All zero: the value compiled into the object before the loader overrides it.
    pub const ZERO: Self = Self {
        skb_head: 0,
        skb_network_header: 0,
        skb_protocol: 0,
        skb_dev: 0,
        skb_iif: 0,
        skb_len: 0,
        skb_tail: 0,
        skb_data: 0,
        skb_sk: 0,
        dev_ifindex: 0,
        dev_nd_net: 0,
        sk_net: 0,
        net_ns_inum: 0,
        tp_skbaddr: 0,
        tp_location: 0,
        tp_reason: 0,
        skb_nfct: ABSENT,
        ct_status: ABSENT,
        ct_orig_daddr: ABSENT,
        ct_orig_dport: ABSENT,
        task_real_parent: 0,
        task_tgid: 0,
        task_comm: 0,
        task_nsproxy: 0,
        task_mm: 0,
        nsproxy_net_ns: 0,
        mm_arg_start: 0,
        mm_arg_end: 0,
        nf_state_hook: 0,
        fl4_iif: 0,
        fl4_proto: 0,
        fl4_saddr: 0,
        fl4_daddr: 0,
        fl4_sport: 0,
        fl4_dport: 0,
        fib_tb_id: 0,
        nhc_dev: 0,
        dev_name: 0,
        fl6_iif: 0,
        fl6_proto: 0,
        fl6_saddr: 0,
        fl6_daddr: 0,
        fl6_sport: 0,
        fl6_dport: 0,
        fib6_res_nh: 0,
        fib6_res_type: 0,
        fib6_tb_id: 0,
        fib6_nh_common: 0,
        dev_priv_flags: 0,
        iff_bridge_port: 0,
    };
}

/// Settings of one run, passed as a global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchConfig {
    /// nsfs inode of the network namespace to report; 0 reports every namespace.
    pub netns: u32,
    /// Non-zero: report every watched drop, even without a port/address match (debugging).
    pub match_all: u32,
    /// Non-zero: copy each dropped packet's headers (from its IP header through its transport
    /// header, never past the linear part) into the event, for `--pcap` / `--evidence`.
    pub capture_headers: u32,
    /// Non-zero: frees with `teardown_reason` at a teardown site are counted in
    /// `stat::TEARDOWN` instead of reported as drops: a FIN or RST that TCP's receive
    /// function frees (a late segment of a closed connection, which TIME_WAIT answers and
    /// discards), or anything a closing socket's queue purge frees (kernels before
    /// QUEUE_PURGE give such frees no reason).
    pub skip_teardown: u32,
    /// NOT_SPECIFIED's value, or REASON_UNREPORTED on a kernel without reasons.
    pub teardown_reason: u32,
    /// In-kernel aggregation: events each flow (`DropFlowKey`) may send per CPU in each
    /// FLOW_INTERVAL_NS; the rest are only counted in DROP_FLOWS. 0 sends every event
    /// (`--every-drop`).
    pub flow_burst: u32,
    /// `--snaplen`: bytes to keep of each captured packet from its IP header, payload included
    /// (at most SNAP_MAX); 0 keeps the headers only. Bytes past the linear part come through
    /// `bpf_skb_output` (PAYLOADS), where the program can call it.
    pub snaplen: u32,
}

/// The aggregation interval of `WatchConfig::flow_burst`.
pub const FLOW_INTERVAL_NS: u64 = 1_000_000_000;

/// Key of the DROP_FLOWS per-CPU counters: what makes two drops (or two ICMP errors/RSTs
/// sent) "the same" in a storm. The client's port is left out on purpose: a client that
/// retries from a new port each time is still one flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DropFlowKey {
    /// IPv4 in the first four bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Where the packet was freed (drops; 0 for signals).
    pub location: u64,
    /// `DropEvent::reason`.
    pub reason: u32,
    pub netns: u32,
    /// The watched port the packet matched (host byte order).
    pub port: u16,
    /// Netfilter hook trail (`DropEvent::nf_trail`).
    pub nf_trail: u16,
    pub proto: u8,
    pub family: u8,
    /// `kind::*`
    pub kind: u8,
    /// 0 not through conntrack, 1 conntrack without DNAT, 2 DNATed.
    pub dnat: u8,
    /// 1 when `port` is the packet's source port (a reply), else its destination port.
    pub port_is_source: u8,
    // Padding as three fields, not `[u8; 7]`: an odd-sized array is zeroed by a call to the
    // BPF object's memset loop, on every watched drop.
    pub _pad: u8,
    pub _pad2: u16,
    pub _pad4: u32,
}

impl DropFlowKey {
    /// The flow of an event (`port` already set): one derivation for both sides, so
    /// userspace finds the flow of each event it is sent.
    #[inline(always)]
    pub fn of(ev: &DropEvent) -> Self {
        Self {
            saddr: ev.saddr,
            daddr: ev.daddr,
            location: ev.location,
            reason: ev.reason,
            netns: ev.netns,
            port: ev.port,
            nf_trail: ev.nf_trail,
            proto: ev.proto,
            family: ev.family,
            kind: ev.kind,
            dnat: match (ev.has_ct, ev.ct_status & ct::IPS_DST_NAT) {
                (0, _) => 0,
                (_, 0) => 1,
                _ => 2,
            },
            port_is_source: (ev.port != ev.dport) as u8,
            _pad: 0,
            _pad2: 0,
            _pad4: 0,
        }
    }
}

/// Value of DROP_FLOWS, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropFlowCount {
    /// Every packet of the flow (exact).
    pub packets: u64,
    /// Of which handed to the event ring (each became an event, or a counted ring loss).
    pub sent: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// Start of the current interval, and events sent in it.
    pub window_ns: u64,
    pub window_sent: u64,
}

/// Where the teardown sites lie in kernel text (the TEARDOWN map's one entry, written once
/// /proc/kallsyms has been read): [start, end) pairs, zeros while unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TeardownSites {
    /// TEARDOWN_RCV_SITES receive functions (FIN/RST only), then queue purges.
    pub ranges: [u64; 2 * TEARDOWN_SITES],
}

/// Teardown sites: tcp_v4_rcv and tcp_v6_rcv, then four queue purges.
pub const TEARDOWN_SITES: usize = 6;
pub const TEARDOWN_RCV_SITES: usize = 2;

impl WatchConfig {
    pub const ZERO: Self = Self {
        netns: 0,
        match_all: 0,
        capture_headers: 0,
        skip_teardown: 0,
        teardown_reason: 0,
        flow_burst: 0,
        snaplen: 0,
    };
}

/// Key of the WATCH_ADDR_PORT map: an (address, port) pair matched against source or
/// destination. IPv4 addresses occupy the first four bytes of `addr`, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrPort {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: u8,
    /// Host byte order.
    pub port: u16,
}

/// Key of the exact per-CPU drop counters: one slot per (drop reason, watched port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CounterKey {
    pub reason: u32,
    /// The watched port the packet matched on (host byte order).
    pub port: u16,
    /// IPPROTO_* of the packet.
    pub proto: u8,
    pub _pad: u8,
}

/// What the kernel did with a watched port's packets (`FLOWS` per-CPU counters).
pub mod flow {
    /// Forwarded: queued for transmission on a device after arriving on another one.
    pub const FORWARDED: u8 = 0;
    /// A routing lookup (fib_table_lookup) chose a route in a table other than `local`.
    pub const ROUTED_FORWARD: u8 = 1;
    /// A routing lookup chose local delivery (the `local` table).
    pub const ROUTED_LOCAL: u8 = 2;
    /// A routing lookup failed with an error other than "try the next table".
    pub const ROUTE_FAILED: u8 = 3;
}

/// Key of the FLOWS counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The watched port the packet matched on (host byte order).
    pub port: u16,
    /// `flow::*`
    pub kind: u8,
    /// IPPROTO_* of the packet.
    pub proto: u8,
}

/// The last routing decision seen for an IPv4 (source, destination) pair of the watched
/// namespace (`ROUTES`); rewritten only when the decision changes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteSample {
    /// When this decision was first seen.
    pub ktime_ns: u64,
    /// Source and destination of the lookup (IPv4 in the first four bytes).
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// The routing table consulted (255 local, 254 main).
    pub table: u32,
    /// 0, or the lookup's negative errno.
    pub err: i32,
    /// Ingress ifindex of the lookup, and the chosen device's ifindex (0 if none).
    pub iif: u32,
    pub oif: u32,
    /// The chosen device's name, NUL-padded.
    pub dev: [u8; 16],
    pub proto: u8,
    /// AF_INET or AF_INET6.
    pub family: u8,
    pub _pad: [u8; 2],
}

/// The netfilter hooks the packet a CPU is processing passed (NF_TRAIL's one per-CPU slot):
/// a packet's hooks, routing and a drop inside them run in one call chain on one CPU, so
/// the slot of the CPU that frees it holds its trail, when `skb` is that packet's address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trail {
    pub skb: u64,
    /// `nfprobe::bit` values.
    pub bits: u32,
    pub _pad: u32,
}

/// Where the fields of a classic fib tracepoint's record lie (`fib:fib_table_lookup` at
/// index 0 of FIB_RECORDS, `fib6:fib6_table_lookup` at 1), from its format file; ABSENT for
/// a field the record lacks. Ports are host byte order in the record; `err` is the lookup's
/// negative errno; `name` is the chosen device's name ("-" without one).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FibRecord {
    pub tb_id: u32,
    pub err: u32,
    pub iif: u32,
    pub src: u32,
    pub dst: u32,
    pub sport: u32,
    pub dport: u32,
    pub proto: u32,
    pub name: u32,
    /// Non-zero: `name` is a `__data_loc` word (length << 16 | offset of the string in the
    /// record), as before the field became a fixed array.
    pub name_data_loc: u32,
}

/// An address as the kernel side keys it (AddrPort, RouteKey): IPv4 in the first four
/// bytes, the rest zero.
pub fn addr_bytes(ip: core::net::IpAddr) -> [u8; 16] {
    match ip {
        core::net::IpAddr::V4(v4) => {
            let mut out = [0; 16];
            let o = v4.octets();
            out[0] = o[0];
            out[1] = o[1];
            out[2] = o[2];
            out[3] = o[3];
            out
        }
        core::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// The watch filter's first test, one array lookup where hash lookups in a row cost tens of
/// nanoseconds each: PORTS holds one byte per port (`port::*` bits), ADDRS one bit per
/// `addr_slot` of the addresses the routing hooks keep (containers, the namespace's own).
pub mod port {
    /// Every packet to or from this port is watched (WATCH_PORT).
    pub const ANY: u8 = 1;
    /// Some (address, port) pairs of this port are watched: look in WATCH_ADDR_PORT.
    pub const ADDR: u8 = 2;
}
/// Entries of PORTS: one per port.
pub const PORTS_LEN: u32 = 1 << 16;
/// ADDRS is a bitmap of `ADDR_SLOTS` bits in u64 words.
pub const ADDR_SLOTS: u32 = 1 << 16;
pub const ADDR_WORDS: u32 = ADDR_SLOTS / 64;
/// IGNORED: one byte per drop reason below this (the kernel's reasons are a few hundred).
pub const IGNORED_LEN: u32 = 1024;

/// An address's bit in ADDRS (either side computes it the same way): its 16-bit words
/// folded by XOR, IPv4 in the first four bytes. Distinct container addresses of one subnet
/// differ in their last word, so they rarely share a slot; a shared slot only costs the
/// exact lookup that follows.
#[inline(always)]
pub fn addr_slot(addr: &[u8; 16]) -> u32 {
    let w = |i: usize| u16::from_be_bytes([addr[i], addr[i + 1]]);
    (w(0) ^ w(2) ^ w(4) ^ w(6) ^ w(8) ^ w(10) ^ w(12) ^ w(14)) as u32
}

/// Key of the ROUTES map: a lookup's (source, destination), IPv4 in the first four bytes of
/// each. 8-aligned so the kernel side zeroes and copies it by words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// Indexes of the per-CPU STATS array: the program's own health, reported in the summary.
pub mod stat {
    /// Drop events the ring buffer could not take (the counters still counted the drop).
    pub const RING_LOST: u32 = 0;
    /// Events handed to the ring buffer.
    pub const EVENTS: u32 = 1;
    /// Drops not counted in COUNTERS because the map was full.
    pub const COUNTER_FULL: u32 = 2;
    /// Kernel memory reads that failed (skb or header not readable).
    pub const READ_ERRORS: u32 = 3;
    /// Signal events (ICMP errors, RSTs sent) the ring buffer could not take.
    pub const SIGNALS_LOST: u32 = 4;
    /// Late FINs and RSTs of closed connections, not reported (see WatchConfig::skip_teardown).
    pub const TEARDOWN: u32 = 5;
    /// Drops (or signals) counted in no flow because DROP_FLOWS was full: each was sent as
    /// an event of its own instead.
    pub const FLOW_FULL: u32 = 6;
    /// `--snaplen` payload records PAYLOADS could not take (the event keeps its linear bytes).
    pub const PAYLOAD_LOST: u32 = 7;
    pub const COUNT: u32 = 8;
}

/// What a ring event reports.
/// `DropEvent::reason` of a RST whose kernel gives no `enum sk_rst_reason` (before 6.10).
pub const RST_REASON_UNKNOWN: u32 = u32::MAX;
/// The drop reason of a kernel that reports none (before Linux 5.17): userspace infers the
/// cause from the freeing function instead.
pub const REASON_UNREPORTED: u32 = u32::MAX;
/// A tracepoint record field this kernel's format does not have.
pub const NO_FIELD: u32 = u32::MAX;

pub mod kind {
    /// The packet was freed with a drop reason (kfree_skb).
    pub const DROP: u8 = 0;
    /// The kernel sent an ICMP error about this packet (icmp_send): a REJECT, or an error.
    pub const ICMP_SENT: u8 = 1;
    /// The kernel's TCP stack answered this packet with a RST (tcp_send_reset).
    pub const RST_SENT: u8 = 2;
    /// Not an event: the scratch slot of the transmit counter (net_dev_queue).
    pub const TRANSMIT: u8 = 3;
    /// How many kinds (one program, and one scratch slot, each).
    pub const COUNT: u32 = 4;
}

/// IPS_* bits of `nf_conn.status` (uapi nf_conntrack_common.h, stable).
pub mod ct {
    pub const IPS_DST_NAT: u32 = 1 << 5;
    pub const IPS_DST_NAT_DONE: u32 = 1 << 8;
    pub const IPS_UNTRACKED: u32 = 1 << 12;
}

/// One watched packet the kernel dropped, or answered with an ICMP error or a RST.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the event.
    pub ktime_ns: u64,
    /// Drop: return address where the skb was freed (`location` of kfree_skb). Else 0.
    pub location: u64,
    /// Drop: `enum skb_drop_reason`. RST_SENT: `enum sk_rst_reason`. ICMP_SENT: 0.
    pub reason: u32,
    /// nsfs inode of the skb's network namespace (0 when it could not be read).
    pub netns: u32,
    /// `skb->skb_iif` when set (the ingress device), else `skb->dev->ifindex`.
    pub ifindex: u32,
    /// `skb->dev->ifindex` (0 when the skb had no device).
    pub dev_ifindex: u32,
    /// `skb->len`.
    pub len: u32,
    /// Low 32 bits of the conntrack entry's status (IPS_*), when `has_ct`.
    pub ct_status: u32,
    /// AF_INET or AF_INET6.
    pub family: u8,
    /// IPPROTO_* of the transport header.
    pub proto: u8,
    /// TCP flags byte (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 …); 0 for other protocols.
    pub tcp_flags: u8,
    /// ICMP_SENT: the type/code sent. Otherwise: the packet's own ICMP type/code, if ICMP.
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// `kind::*`
    pub kind: u8,
    /// 1 when the packet had a conntrack entry attached (it had passed conntrack).
    pub has_ct: u8,
    pub _pad: u8,
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// Original destination port from conntrack (host byte order), when `has_ct`.
    pub orig_dport: u16,
    /// Netfilter hook probes this packet passed (tracer's `nfprobe::bit`), 0 without probes.
    pub nf_trail: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Original destination address from conntrack, when `has_ct` (IPv4 in the first 4 bytes).
    pub orig_daddr: [u8; 16],
    /// Valid bytes of `hdr` (0 unless header capture is on).
    pub hdr_len: u16,
    /// The watched port the kernel matched the packet on (its destination port, else its
    /// source port), as in its flow (`DropFlowKey`).
    pub port: u16,
    pub _pad3: [u8; 4],
    /// The packet from its IP header on: IPv6 (40) + the largest TCP header (60) nearly fit.
    pub hdr: [u8; HDR_LEN],
}

/// Bytes of each dropped packet's linear part the event can carry, from the IP header: an IPv6
/// header (40) with extension headers and the largest TCP header (60) fit.
pub const HDR_LEN: usize = 128;

/// The most `--snaplen` keeps of one packet.
pub const SNAP_MAX: u32 = 1024;

/// What precedes the packet bytes in a PAYLOADS record (`bpf_skb_output` appends `len` bytes
/// copied from `skb->data`): which drop event they belong to, and where `skb->data` lies
/// relative to the IP header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PayloadMeta {
    /// The drop event's `ktime_ns` and `location`: the pair identifies it.
    pub ktime_ns: u64,
    pub location: u64,
    /// `skb->data` minus the IP header's address: positive when the stack had already pulled
    /// the IP (and transport) header, negative when data still points at the MAC header.
    pub data_from_ip: i32,
    /// Bytes appended after this header.
    pub len: u32,
}

/// A DropEvent without its header bytes: what the ring carries when no header is captured
/// (half the ring space per event in a storm). `hdr` is the last field.
pub const EVENT_HEAD: usize = core::mem::size_of::<DropEvent>() - HDR_LEN;

impl Default for DropEvent {
    fn default() -> Self {
        Self {
            ktime_ns: 0,
            location: 0,
            reason: 0,
            netns: 0,
            ifindex: 0,
            dev_ifindex: 0,
            len: 0,
            ct_status: 0,
            family: 0,
            proto: 0,
            tcp_flags: 0,
            icmp_type: 0,
            icmp_code: 0,
            kind: 0,
            has_ct: 0,
            _pad: 0,
            sport: 0,
            dport: 0,
            orig_dport: 0,
            nf_trail: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            orig_daddr: [0; 16],
            hdr_len: 0,
            port: 0,
            _pad3: [0; 4],
            hdr: [0; HDR_LEN],
        }
    }
}

/// What a CHANGES ring event reports.
pub mod change {
    /// A write to a forwarding-relevant sysctl (cgroup/sysctl), before it is applied.
    pub const SYSCTL: u32 = 1;
    /// An iptables-legacy table replacement (setsockopt IPT_SO_SET_REPLACE / IP6T_…).
    pub const IPT_REPLACE: u32 = 2;
}

/// How many ancestors of a process are recorded in the kernel.
pub const ANCESTORS: usize = 4;
/// Bytes of a command line recorded in the kernel (NUL-separated arguments).
pub const ARGS_LEN: usize = 256;

/// A parent process: pid and name, read in the kernel at the moment of the event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ancestor {
    pub pid: u32,
    pub comm: [u8; 16],
}

/// Who did something, captured in the kernel at the moment they did it: the process may be
/// gone a millisecond later.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Process {
    /// cgroup v2 id (the cgroup directory's inode): the systemd unit, the container.
    pub cgroup_id: u64,
    /// tgid (what users call the pid) and thread id.
    pub pid: u32,
    pub tid: u32,
    pub comm: [u8; 16],
    /// Parent, grandparent, … (pid 0 past init).
    pub ancestors: [Ancestor; ANCESTORS],
    /// Bytes of `args` that are valid.
    pub args_len: u32,
    pub _pad: u32,
    /// The command line, NUL-separated, as the process's memory held it.
    pub args: [u8; ARGS_LEN],
}

impl Default for Process {
    fn default() -> Self {
        Self {
            cgroup_id: 0,
            pid: 0,
            tid: 0,
            comm: [0; 16],
            ancestors: [Ancestor::default(); ANCESTORS],
            args_len: 0,
            _pad: 0,
            args: [0; ARGS_LEN],
        }
    }
}

/// A change to forwarding state or the firewall, with its author.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeEvent {
    pub ktime_ns: u64,
    /// `change::*`
    pub kind: u32,
    /// nsfs inode of the writer's network namespace.
    pub netns: u32,
    /// SYSCTL: `net/ipv4/ip_forward`. IPT_REPLACE: the table name (`nat`).
    pub name: [u8; 64],
    /// SYSCTL: the value before and the value written (text, as /proc/sys shows it).
    /// IPT_REPLACE: `ipv4`/`ipv6` in `new_value`.
    pub old_value: [u8; 16],
    pub new_value: [u8; 16],
    pub process: Process,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], made of integers and byte arrays only, with every
    // padding byte spelled out as a named field, so any bit pattern is valid.
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::WatchConfig {}
    unsafe impl aya::Pod for super::AddrPort {}
    unsafe impl aya::Pod for super::CounterKey {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::DropFlowKey {}
    unsafe impl aya::Pod for super::DropFlowCount {}
    unsafe impl aya::Pod for super::RouteSample {}
    unsafe impl aya::Pod for super::RouteKey {}
    unsafe impl aya::Pod for super::FibRecord {}
    unsafe impl aya::Pod for super::Trail {}
    unsafe impl aya::Pod for super::TeardownSites {}
    unsafe impl aya::Pod for super::DropEvent {}
    unsafe impl aya::Pod for super::Ancestor {}
    unsafe impl aya::Pod for super::Process {}
    unsafe impl aya::Pod for super::ChangeEvent {}
    unsafe impl aya::Pod for super::PayloadMeta {}
}

// The ring record's size is part of the contract with the decoder; a field added without
// updating both sides fails the build here instead of garbling events.
const _: () = assert!(core::mem::size_of::<DropEvent>() == 240);
const _: () = assert!(core::mem::size_of::<PayloadMeta>() == 24);
const _: () = assert!(core::mem::size_of::<Process>() == 376);
const _: () = assert!(core::mem::size_of::<DropFlowKey>() == 64);
const _: () = assert!(core::mem::offset_of!(DropEvent, hdr) == EVENT_HEAD);
// The kernel side zeroes events by 8-byte words and writes their addresses as two words.
const _: () =
    assert!(EVENT_HEAD.is_multiple_of(8) && core::mem::size_of::<DropEvent>().is_multiple_of(8));
const _: () = assert!(core::mem::align_of::<DropEvent>() == 8);
const _: () = assert!(core::mem::offset_of!(DropEvent, saddr).is_multiple_of(8));
const _: () = assert!(core::mem::offset_of!(DropEvent, daddr).is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<ChangeEvent>() == 488);
