//! The forwarding side: the kernel's routing decision for a watched port's packets, and the
//! packets it forwarded.
//!
//! tp_btf fib_table_lookup (optional, probed at start): one lookup in one routing table.
//!   TP_PROTO(u32 tb_id, const struct flowi4 *flp, const struct fib_nh_common *nhc, int err)
//!   -- checked on 6.18 (before 5.? the first argument was `struct fib_table *`; userspace
//!   loads this program only for the prototype above).
//!   It fires for every routed packet of every namespace: the namespace (of the route's
//!   device) is checked first. An inbound lookup carries no ports (unless fib rules dissect
//!   the flow): it is matched to a watched port by the container's address.
//! tp_btf net_dev_queue (optional): TP_PROTO(struct sk_buff *skb) -- every packet queued for
//!   transmission; one that arrived on another device was forwarded (skb.rs `on_transmit`).
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{ABSENT, AF_INET, AddrPort, RouteSample, flow};

use crate::{
    maps::{CONFIG, OFFSETS, ROUTES, WATCH_ADDR_PORT, WATCH_DADDR, WATCH_PORT},
    skb::{count_flow, on_transmit, read},
};

/// RT_TABLE_LOCAL: a lookup that succeeds there delivers locally.
const TABLE_LOCAL: u32 = 255;
/// -EAGAIN: "not in this table, try the next rule" — part of every normal lookup.
const EAGAIN: i32 = -11;

#[btf_tracepoint(function = "fib_table_lookup")]
pub fn fib_table_lookup(ctx: BtfTracePointContext) -> i32 {
    let tb_id: u64 = ctx.arg(0);
    let flp: u64 = ctx.arg(1);
    let nhc: u64 = ctx.arg(2);
    let err: i64 = ctx.arg(3);
    on_route(tb_id as u32, flp, nhc, err as i32);
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
fn watched(daddr: [u8; 4], dport: u16) -> Option<u16> {
    if dport != 0 {
        if WATCH_PORT.get_ptr(&dport).is_some() {
            return Some(dport);
        }
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&daddr);
        let key = AddrPort {
            addr,
            family: AF_INET,
            _pad: 0,
            port: dport,
        };
        if WATCH_ADDR_PORT.get_ptr(&key).is_some() {
            return Some(dport);
        }
    }
    // SAFETY: a plain u16 the loader wrote before attaching.
    unsafe { WATCH_DADDR.get(&daddr) }.copied()
}

/// The namespace of the route's device, 0 when there is none or it cannot be read.
#[inline(always)]
fn route_netns(nhc: u64) -> (u64, u32) {
    let off = OFFSETS.load();
    if nhc == 0 || off.nhc_dev == ABSENT {
        return (0, 0);
    }
    let dev: u64 = read(nhc, off.nhc_dev).unwrap_or(0);
    let net: u64 = if dev == 0 {
        0
    } else {
        read(dev, off.dev_nd_net).unwrap_or(0)
    };
    let inum = if net == 0 {
        0
    } else {
        read(net, off.net_ns_inum).unwrap_or(0)
    };
    (dev, inum)
}

/// One routing lookup: kept when it is in the watched namespace (known from the route's
/// device) or, failed and deviceless, about a watched destination.
#[inline(always)]
fn on_route(tb_id: u32, flp: u64, nhc: u64, err: i32) {
    let off = OFFSETS.load();
    if flp == 0 || err == EAGAIN || off.fl4_daddr == ABSENT || off.fl4_saddr == ABSENT {
        return;
    }
    let daddr: [u8; 4] = read(flp, off.fl4_daddr).unwrap_or([0; 4]);
    let dport = if off.fl4_dport == ABSENT {
        0
    } else {
        u16::from_be(read::<u16>(flp, off.fl4_dport).unwrap_or(0))
    };
    let port = watched(daddr, dport);
    let (dev, inum) = route_netns(nhc);
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
    let saddr: [u8; 4] = read(flp, off.fl4_saddr).unwrap_or([0; 4]);
    let oif: u32 = if dev == 0 {
        0
    } else {
        read(dev, off.dev_ifindex).unwrap_or(0)
    };
    let key = (u32::from_be_bytes(saddr) as u64) << 32 | u32::from_be_bytes(daddr) as u64;
    // Per routed packet: the same decision as last time for this pair is not written again
    // (a map lookup instead of an LRU update and the reads below).
    // SAFETY: a plain-data value the programs write whole.
    if let Some(seen) = unsafe { ROUTES.get(&key) }
        && seen.table == tb_id
        && seen.err == err
        && seen.oif == oif
    {
        return;
    }
    let mut sample = RouteSample {
        // SAFETY: a helper call without arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        saddr,
        daddr,
        dport,
        table: tb_id,
        err,
        oif,
        ..RouteSample::default()
    };
    if off.fl4_sport != ABSENT {
        sample.sport = u16::from_be(read::<u16>(flp, off.fl4_sport).unwrap_or(0));
    }
    if off.fl4_iif != ABSENT {
        sample.iif = read(flp, off.fl4_iif).unwrap_or(0);
    }
    if off.fl4_proto != ABSENT {
        sample.proto = read(flp, off.fl4_proto).unwrap_or(0);
    }
    if dev != 0 && off.dev_name != ABSENT {
        sample.dev = read(dev, off.dev_name).unwrap_or([0; 16]);
    }
    let _ = ROUTES.insert(&key, &sample, 0);
}
