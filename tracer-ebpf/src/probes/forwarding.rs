//! The forwarding side: the kernel's routing decision for a watched port's packets, and the
//! packets it forwarded.
//!
//! tp_btf fib_table_lookup (optional, probed at start): one IPv4 lookup in one routing table.
//!   TP_PROTO(u32 tb_id, const struct flowi4 *flp, const struct fib_nh_common *nhc, int err)
//!   -- checked on 5.10, 6.1, 6.12 and 6.18 (before 5.3 the third argument was a
//!   `struct fib_nh *`; userspace loads this program only for the prototype above).
//!   It fires for every routed packet of every namespace: the namespace (of the route's
//!   device) is checked first. An inbound lookup carries no ports (unless fib rules dissect
//!   the flow): it is matched to a watched port by the container's address.
//! tp_btf fib6_table_lookup (optional): the same for IPv6.
//!   TP_PROTO(const struct net *net, const struct fib6_result *res,
//!            struct fib6_table *table, const struct flowi6 *flp) -- since 5.1.
//!   The namespace is an argument: checked before anything else is read.
//! tp_btf net_dev_queue (optional): TP_PROTO(struct sk_buff *skb) -- every packet queued for
//!   transmission; one that arrived on another device was forwarded (skb.rs `on_transmit`).
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{ABSENT, AF_INET, AF_INET6, AddrPort, RouteKey, RouteSample, flow};

use crate::{
    maps::{CONFIG, OFFSETS, ROUTES, WATCH_ADDR_PORT, WATCH_DADDR, WATCH_DADDR6, WATCH_PORT},
    skb::{count_flow, on_transmit, read},
};

/// RT_TABLE_LOCAL: a lookup that succeeds there delivers locally.
const TABLE_LOCAL: u32 = 255;
/// -EAGAIN: "not in this table, try the next rule" — part of every normal lookup.
const EAGAIN: i32 = -11;
/// Route types (`RTN_*`) of an IPv6 result.
const RTN_UNICAST: u8 = 1;
const RTN_LOCAL: u8 = 2;
const RTN_UNREACHABLE: u8 = 7;
const RTN_PROHIBIT: u8 = 8;
const RTN_THROW: u8 = 9;

#[btf_tracepoint(function = "fib_table_lookup")]
pub fn fib_table_lookup(ctx: BtfTracePointContext) -> i32 {
    let tb_id: u64 = ctx.arg(0);
    let flp: u64 = ctx.arg(1);
    let nhc: u64 = ctx.arg(2);
    let err: i64 = ctx.arg(3);
    on_route(tb_id as u32, flp, nhc, err as i32);
    0
}

#[btf_tracepoint(function = "fib6_table_lookup")]
pub fn fib6_table_lookup(ctx: BtfTracePointContext) -> i32 {
    let net: u64 = ctx.arg(0);
    let res: u64 = ctx.arg(1);
    let table: u64 = ctx.arg(2);
    let flp: u64 = ctx.arg(3);
    on_route6(net, res, table, flp);
    0
}

#[btf_tracepoint(function = "net_dev_queue")]
pub fn net_dev_queue(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    on_transmit(skb);
    0
}

/// The watched port a lookup's destination matches: its port when the lookup carries one
/// (fib rules that dissect the flow), else a watched container address.
#[inline(always)]
fn watched(family: u8, daddr: &[u8; 16], dport: u16) -> Option<u16> {
    if dport != 0 {
        if WATCH_PORT.get_ptr(&dport).is_some() {
            return Some(dport);
        }
        let key = AddrPort {
            addr: *daddr,
            family,
            _pad: 0,
            port: dport,
        };
        if WATCH_ADDR_PORT.get_ptr(&key).is_some() {
            return Some(dport);
        }
    }
    // SAFETY: plain u16 values the loader wrote before attaching.
    unsafe {
        if family == AF_INET {
            let v4 = [daddr[0], daddr[1], daddr[2], daddr[3]];
            WATCH_DADDR.get(&v4).copied()
        } else {
            WATCH_DADDR6.get(daddr).copied()
        }
    }
}

/// A device's ifindex and namespace inode (0s when it cannot be read).
#[inline(always)]
fn device(dev: u64) -> (u32, u32) {
    let off = OFFSETS.load();
    if dev == 0 {
        return (0, 0);
    }
    let ifindex = read(dev, off.dev_ifindex).unwrap_or(0);
    let net: u64 = read(dev, off.dev_nd_net).unwrap_or(0);
    let inum = if net == 0 {
        0
    } else {
        read(net, off.net_ns_inum).unwrap_or(0)
    };
    (ifindex, inum)
}

/// One IPv4 routing lookup: kept when it is in the watched namespace (known from the route's
/// device) or, failed and deviceless, about a watched destination.
#[inline(always)]
fn on_route(tb_id: u32, flp: u64, nhc: u64, err: i32) {
    let off = OFFSETS.load();
    if flp == 0 || err == EAGAIN || off.fl4_daddr == ABSENT || off.fl4_saddr == ABSENT {
        return;
    }
    let mut daddr = [0u8; 16];
    let v4: [u8; 4] = read(flp, off.fl4_daddr).unwrap_or([0; 4]);
    daddr[..4].copy_from_slice(&v4);
    let dport = port_at(flp, off.fl4_dport);
    let port = watched(AF_INET, &daddr, dport);
    let dev: u64 = if nhc == 0 || off.nhc_dev == ABSENT {
        0
    } else {
        read(nhc, off.nhc_dev).unwrap_or(0)
    };
    let (oif, inum) = device(dev);
    let cfg = CONFIG.load();
    let ours = if dev != 0 {
        cfg.netns == 0 || inum == cfg.netns
    } else {
        port.is_some()
    };
    if !ours {
        return;
    }
    let kind = match err {
        0 if tb_id == TABLE_LOCAL => flow::ROUTED_LOCAL,
        0 => flow::ROUTED_FORWARD,
        _ => flow::ROUTE_FAILED,
    };
    if let Some(port) = port {
        count_flow(port, kind, 0);
    }
    let mut key = RouteKey {
        saddr: [0; 16],
        daddr,
    };
    let s4: [u8; 4] = read(flp, off.fl4_saddr).unwrap_or([0; 4]);
    key.saddr[..4].copy_from_slice(&s4);
    let lookup = Lookup {
        family: AF_INET,
        table: tb_id,
        err,
        oif,
        dev,
        dport,
        flp,
        sport_at: off.fl4_sport,
        iif_at: off.fl4_iif,
        proto_at: off.fl4_proto,
    };
    remember(&key, &lookup);
}

/// One IPv6 routing lookup in the watched namespace. A miss in the local table is the first
/// step of every lookup (the main table is next), like IPv4's -EAGAIN: skipped.
#[inline(always)]
fn on_route6(net: u64, res: u64, table: u64, flp: u64) {
    let off = OFFSETS.load();
    let cfg = CONFIG.load();
    if net == 0 || res == 0 || table == 0 || flp == 0 {
        return;
    }
    if cfg.netns != 0 && read::<u32>(net, off.net_ns_inum).unwrap_or(0) != cfg.netns {
        return;
    }
    if off.fl6_daddr == ABSENT
        || off.fl6_saddr == ABSENT
        || off.fib6_res_type == ABSENT
        || off.fib6_tb_id == ABSENT
    {
        return;
    }
    let tb_id: u32 = read(table, off.fib6_tb_id).unwrap_or(0);
    let rtn: u8 = read(res, off.fib6_res_type).unwrap_or(0);
    let err = match rtn {
        RTN_UNICAST | RTN_LOCAL => 0,
        RTN_UNREACHABLE => -113, // -EHOSTUNREACH, as the tracepoint reports it
        RTN_PROHIBIT => -13,     // -EACCES
        RTN_THROW => EAGAIN,
        // RTN_BLACKHOLE and the rest: -EINVAL
        _ => -22,
    };
    if err == EAGAIN || (err != 0 && tb_id == TABLE_LOCAL) {
        return;
    }
    let daddr: [u8; 16] = read(flp, off.fl6_daddr).unwrap_or([0; 16]);
    let dport = port_at(flp, off.fl6_dport);
    let port = watched(AF_INET6, &daddr, dport);
    let kind = match err {
        0 if tb_id == TABLE_LOCAL || rtn == RTN_LOCAL => flow::ROUTED_LOCAL,
        0 => flow::ROUTED_FORWARD,
        _ => flow::ROUTE_FAILED,
    };
    if let Some(port) = port {
        count_flow(port, kind, 0);
    }
    let nh: u64 = if off.fib6_res_nh == ABSENT || off.nhc_dev == ABSENT {
        0
    } else {
        read(res, off.fib6_res_nh).unwrap_or(0)
    };
    let dev: u64 = if nh == 0 || off.fib6_nh_common == ABSENT {
        0
    } else {
        read(nh, off.fib6_nh_common + off.nhc_dev).unwrap_or(0)
    };
    let key = RouteKey {
        saddr: read(flp, off.fl6_saddr).unwrap_or([0; 16]),
        daddr,
    };
    let lookup = Lookup {
        family: AF_INET6,
        table: tb_id,
        err,
        oif: device(dev).0,
        dev,
        dport,
        flp,
        sport_at: off.fl6_sport,
        iif_at: off.fl6_iif,
        proto_at: off.fl6_proto,
    };
    remember(&key, &lookup);
}

/// A port of a flowi (host byte order), 0 when this kernel has no such field.
#[inline(always)]
fn port_at(flp: u64, at: u32) -> u16 {
    if at == ABSENT {
        0
    } else {
        u16::from_be(read::<u16>(flp, at).unwrap_or(0))
    }
}

/// What `remember` needs of one lookup.
struct Lookup {
    family: u8,
    table: u32,
    err: i32,
    oif: u32,
    dev: u64,
    dport: u16,
    flp: u64,
    /// Offsets in the flowi of its source port, ingress ifindex and protocol.
    sport_at: u32,
    iif_at: u32,
    proto_at: u32,
}

/// Keeps the lookup's decision for its (source, destination), for a verdict's evidence.
#[inline(always)]
fn remember(key: &RouteKey, l: &Lookup) {
    // Per routed packet: the same decision as last time for this pair is not written again
    // (a map lookup instead of an LRU update and the reads below).
    // SAFETY: a plain-data value the programs write whole.
    if let Some(seen) = unsafe { ROUTES.get(key) }
        && seen.table == l.table
        && seen.err == l.err
        && seen.oif == l.oif
    {
        return;
    }
    let off = OFFSETS.load();
    let mut sample = RouteSample {
        // SAFETY: a helper call without arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        saddr: key.saddr,
        daddr: key.daddr,
        dport: l.dport,
        sport: port_at(l.flp, l.sport_at),
        table: l.table,
        err: l.err,
        oif: l.oif,
        family: l.family,
        ..RouteSample::default()
    };
    if l.iif_at != ABSENT {
        sample.iif = read(l.flp, l.iif_at).unwrap_or(0);
    }
    if l.proto_at != ABSENT {
        sample.proto = read(l.flp, l.proto_at).unwrap_or(0);
    }
    if l.dev != 0 && off.dev_name != ABSENT {
        sample.dev = read(l.dev, off.dev_name).unwrap_or([0; 16]);
    }
    let _ = ROUTES.insert(key, &sample, 0);
}
