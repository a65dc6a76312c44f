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
//! tracepoints fib:fib_table_lookup and fib6:fib6_table_lookup (the fallback where the
//!   tp_btf programs cannot load, as on a prototype droptrace has no program for): their
//!   records (layout from the format files) name no namespace; see `on_route_record`.
//! tp_btf net_dev_queue (optional): TP_PROTO(struct sk_buff *skb) -- every packet queued for
//!   transmission; one that arrived on another device was forwarded (skb.rs `on_transmit`).
//!
//! Cost: a routed packet takes several lookups (input, output, the local table first), each
//! running these programs, so "not ours" is decided first and cheaply: the namespace (a few
//! direct loads through the typed arguments), then the addresses' bits in ADDRS and the
//! port's byte in PORTS (array lookups the verifier inlines); the hash maps are consulted
//! only on a hit.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes},
    macros::{btf_tracepoint, tracepoint},
    maps::Array,
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::{
    ABSENT, AF_INET, AF_INET6, AddrPort, FibRecord, RouteKey, RouteSample, addr_slot, flow, port,
};

use crate::{
    maps::{
        ADDRS, FIB_RECORDS, LAST_ROUTE, LOCAL_ADDRS, PORTS, ROUTES, WATCH_ADDR_PORT, WATCH_DADDR,
        WATCH_DADDR6, WATCH_IFINDEX, WATCH_IFNAME, get,
    },
    skb::{count_flow, field, on_transmit, read},
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

#[tracepoint(category = "fib", name = "fib_table_lookup")]
pub fn fib_table_lookup_tp(ctx: TracePointContext) -> u32 {
    on_route_record(&ctx, 0, AF_INET);
    0
}

#[tracepoint(category = "fib6", name = "fib6_table_lookup")]
pub fn fib6_table_lookup_tp(ctx: TracePointContext) -> u32 {
    on_route_record(&ctx, 1, AF_INET6);
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
        let bits = PORTS.get(dport as u32).copied().unwrap_or(0);
        if bits & port::ANY != 0 {
            return Some(dport);
        }
        let key = AddrPort {
            addr: *daddr,
            family,
            _pad: 0,
            port: dport,
        };
        if bits & port::ADDR != 0 && WATCH_ADDR_PORT.get_ptr(&key).is_some() {
            return Some(dport);
        }
    }
    container_port(family, daddr)
}

/// Whether `addr`'s bit is set in `bits` (ADDRS: it may be a watched container; LOCAL_ADDRS:
/// a local address). A clear bit says it is not one; a set bit needs the exact lookup.
#[inline(always)]
fn marked(bits: &Array<u64>, addr: &[u8; 16]) -> bool {
    let slot = addr_slot(addr);
    bits.get(slot / 64)
        .is_some_and(|word| word & (1u64 << (slot % 64)) != 0)
}

/// The watched port of a container address (WATCH_DADDR, WATCH_DADDR6), if it is one.
#[inline(always)]
fn container_port(family: u8, addr: &[u8; 16]) -> Option<u16> {
    if !marked(&ADDRS, addr) {
        return None;
    }
    // SAFETY: plain u16 values the loader wrote before attaching.
    unsafe {
        if family == AF_INET {
            let v4 = [addr[0], addr[1], addr[2], addr[3]];
            WATCH_DADDR.get(&v4).copied()
        } else {
            WATCH_DADDR6.get(addr).copied()
        }
    }
}

/// A successful lookup that neither reaches a watched container nor delivers to this
/// namespace, for traffic of no watched container (replies from elsewhere, other hosts):
/// nothing a verdict cites, nothing counted.
#[inline(always)]
fn unrelated(port: Option<u16>, err: i32, tb_id: u32, family: u8, key: &RouteKey) -> bool {
    port.is_none()
        && err == 0
        && tb_id != TABLE_LOCAL
        && !marked(&LOCAL_ADDRS, &key.daddr)
        // A watched container's replies: their decisions are evidence too.
        && container_port(family, &key.saddr).is_none()
}

/// A device's ifindex and namespace inode (0s when it cannot be read); `dev` is a typed
/// pointer (read from a tp_btf argument).
#[inline(always)]
fn device(dev: u64) -> (u32, u32) {
    if dev == 0 {
        return (0, 0);
    }
    let ifindex = field::<true, u32>(dev, get!(OFFSETS.dev_ifindex)).unwrap_or(0);
    let net: u64 = field::<true, u64>(dev, get!(OFFSETS.dev_nd_net)).unwrap_or(0);
    let inum = if net == 0 {
        0
    } else {
        field::<true, u32>(net, get!(OFFSETS.net_ns_inum)).unwrap_or(0)
    };
    (ifindex, inum)
}

/// A ROUTES key from two addresses as words (IPv4 in the low half of the first): written
/// by words, where `RouteKey::default()` and byte copies become calls to the object's
/// memset loop on every lookup.
#[inline(always)]
fn route_key(saddr: [u64; 2], daddr: [u64; 2]) -> RouteKey {
    let mut key = core::mem::MaybeUninit::<RouteKey>::uninit();
    let w = key.as_mut_ptr().cast::<u64>();
    // SAFETY: RouteKey is two 16-byte arrays, 8-aligned (tracer_common): four words.
    unsafe {
        w.write(saddr[0]);
        w.add(1).write(saddr[1]);
        w.add(2).write(daddr[0]);
        w.add(3).write(daddr[1]);
        key.assume_init()
    }
}

/// One routing lookup, as any of the programs above reads it.
struct Lookup {
    family: u8,
    table: u32,
    err: i32,
    key: RouteKey,
    dport: u16,
    /// The chosen device's ifindex (0 without one).
    oif: u32,
}

impl Lookup {
    fn kind(&self) -> u8 {
        match self.err {
            0 if self.table == TABLE_LOCAL => flow::ROUTED_LOCAL,
            0 => flow::ROUTED_FORWARD,
            _ => flow::ROUTE_FAILED,
        }
    }
}

/// One IPv4 routing lookup: kept when it is in the watched namespace (known from the route's
/// device) or, failed and deviceless, about a watched destination.
#[inline(always)]
fn on_route(tb_id: u32, flp: u64, nhc: u64, err: i32) {
    let (daddr_at, saddr_at, dev_at) = (
        get!(OFFSETS.fl4_daddr),
        get!(OFFSETS.fl4_saddr),
        get!(OFFSETS.nhc_dev),
    );
    if flp == 0 || err == EAGAIN || daddr_at == ABSENT || saddr_at == ABSENT {
        return;
    }
    // The namespace first: most lookups on a host are other namespaces'.
    let dev: u64 = if nhc == 0 || dev_at == ABSENT {
        0
    } else {
        field::<true, u64>(nhc, dev_at).unwrap_or(0)
    };
    let (oif, inum) = device(dev);
    let netns = get!(CONFIG.netns);
    if dev != 0 && netns != 0 && inum != netns {
        return;
    }
    let d4: u32 = field::<true, u32>(flp, daddr_at).unwrap_or(0);
    let s4: u32 = field::<true, u32>(flp, saddr_at).unwrap_or(0);
    let key = route_key([s4 as u64, 0], [d4 as u64, 0]);
    let dport = port_at(flp, get!(OFFSETS.fl4_dport));
    let port = watched(AF_INET, &key.daddr, dport);
    if unrelated(port, err, tb_id, AF_INET, &key) {
        return;
    }
    // Without a device, only a failed lookup about a watched destination is ours.
    if dev == 0 && port.is_none() {
        return;
    }
    let lookup = Lookup {
        family: AF_INET,
        table: tb_id,
        err,
        key,
        dport,
        oif,
    };
    decided(&lookup, port, |sample| {
        from_flowi(
            sample,
            flp,
            get!(OFFSETS.fl4_sport),
            get!(OFFSETS.fl4_iif),
            get!(OFFSETS.fl4_proto),
        );
        device_name(sample, dev);
    });
}

/// One IPv6 routing lookup in the watched namespace. A miss in the local table is the first
/// step of every lookup (the main table is next), like IPv4's -EAGAIN: skipped.
#[inline(always)]
fn on_route6(net: u64, res: u64, table: u64, flp: u64) {
    if net == 0 || res == 0 || table == 0 || flp == 0 {
        return;
    }
    let netns = get!(CONFIG.netns);
    if netns != 0 && field::<true, u32>(net, get!(OFFSETS.net_ns_inum)).unwrap_or(0) != netns {
        return;
    }
    let (daddr_at, saddr_at, type_at, tb_at) = (
        get!(OFFSETS.fl6_daddr),
        get!(OFFSETS.fl6_saddr),
        get!(OFFSETS.fib6_res_type),
        get!(OFFSETS.fib6_tb_id),
    );
    if daddr_at == ABSENT || saddr_at == ABSENT || type_at == ABSENT || tb_at == ABSENT {
        return;
    }
    let tb_id: u32 = field::<true, u32>(table, tb_at).unwrap_or(0);
    let rtn: u8 = field::<true, u8>(res, type_at).unwrap_or(0);
    let err = match rtn {
        RTN_UNICAST | RTN_LOCAL => 0,
        RTN_UNREACHABLE => -113, // -EHOSTUNREACH, as the tracepoint reports it
        RTN_PROHIBIT => -13,     // -EACCES
        RTN_THROW => EAGAIN,
        // RTN_BLACKHOLE and the rest: -EINVAL
        _ => -22,
    };
    if skipped6(tb_id, err) {
        return;
    }
    // struct in6_addr is a union of arrays: read as bytes.
    let key = route_key(
        read::<[u64; 2]>(flp, saddr_at).unwrap_or([0; 2]),
        read::<[u64; 2]>(flp, daddr_at).unwrap_or([0; 2]),
    );
    let dport = port_at(flp, get!(OFFSETS.fl6_dport));
    let port = watched(AF_INET6, &key.daddr, dport);
    if unrelated(port, err, tb_id, AF_INET6, &key) {
        return;
    }
    let (nh_at, common_at, dev_at) = (
        get!(OFFSETS.fib6_res_nh),
        get!(OFFSETS.fib6_nh_common),
        get!(OFFSETS.nhc_dev),
    );
    let nh: u64 = if nh_at == ABSENT || dev_at == ABSENT {
        0
    } else {
        field::<true, u64>(res, nh_at).unwrap_or(0)
    };
    let dev: u64 = if nh == 0 || common_at == ABSENT {
        0
    } else {
        field::<true, u64>(nh, common_at + dev_at).unwrap_or(0)
    };
    let lookup = Lookup {
        family: AF_INET6,
        table: tb_id,
        err,
        key,
        dport,
        oif: device(dev).0,
    };
    decided(&lookup, port, |sample| {
        from_flowi(
            sample,
            flp,
            get!(OFFSETS.fl6_sport),
            get!(OFFSETS.fl6_iif),
            get!(OFFSETS.fl6_proto),
        );
        device_name(sample, dev);
    });
}

/// An IPv6 lookup that decides nothing: "try the next table" (a throw, or a miss in the
/// local table that every lookup starts with).
#[inline(always)]
fn skipped6(tb_id: u32, err: i32) -> bool {
    err == EAGAIN || (err != 0 && tb_id == TABLE_LOCAL)
}

/// One lookup from a classic tracepoint's record (the fallback): the record names no
/// namespace, so the lookup is kept when its ingress interface (by index) and its chosen
/// device (by name) are interfaces of the watched namespace, or when it failed about a
/// watched destination.
#[inline(always)]
fn on_route_record(ctx: &TracePointContext, index: u32, family: u8) {
    let Some(f) = FIB_RECORDS.get(index) else {
        return;
    };
    // SAFETY: the offsets come from this tracepoint's own format file and lie inside the
    // record; read_at goes through bpf_probe_read_kernel, which cannot fault.
    let field = |at: u32| -> Option<u32> {
        (at != ABSENT).then(|| unsafe { ctx.read_at::<u32>(at as usize) }.ok())?
    };
    let (Some(tb_id), Some(err)) = (field(f.tb_id), field(f.err)) else {
        return;
    };
    let err = err as i32;
    if err == EAGAIN || (family == AF_INET6 && skipped6(tb_id, err)) || f.dst == ABSENT {
        return;
    }
    let key = RouteKey {
        saddr: record_addr(ctx, f.src, family),
        daddr: record_addr(ctx, f.dst, family),
    };
    let dport = record_port(ctx, f.dport);
    let port = watched(family, &key.daddr, dport);
    if unrelated(port, err, tb_id, family, &key) {
        return;
    }
    let name = record_name(ctx, f);
    // SAFETY: plain values the loader wrote before attaching.
    let oif = unsafe { WATCH_IFNAME.get(&name) }.copied().unwrap_or(0);
    let iif = field(f.iif).unwrap_or(0);
    let ours = if err == 0 {
        get!(CONFIG.netns) == 0 || (oif != 0 && WATCH_IFINDEX.get_ptr(&iif).is_some())
    } else {
        port.is_some()
    };
    if !ours {
        return;
    }
    let lookup = Lookup {
        family,
        table: tb_id,
        err,
        key,
        dport,
        oif,
    };
    decided(&lookup, port, |sample| {
        sample.sport = record_port(ctx, f.sport);
        sample.iif = iif;
        if f.proto != ABSENT {
            // SAFETY: as above.
            sample.proto = unsafe { ctx.read_at::<u8>(f.proto as usize) }.unwrap_or(0);
        }
        if err == 0 {
            sample.dev = name;
        }
    });
}

/// An address of a classic record, as RouteKey holds it (zeros when absent).
#[inline(always)]
fn record_addr(ctx: &TracePointContext, at: u32, family: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    if at == ABSENT {
        return out;
    }
    // SAFETY: see on_route_record.
    unsafe {
        if family == AF_INET {
            let v4: [u8; 4] = ctx.read_at(at as usize).unwrap_or([0; 4]);
            out[..4].copy_from_slice(&v4);
        } else {
            out = ctx.read_at(at as usize).unwrap_or([0; 16]);
        }
    }
    out
}

/// The chosen device's name in a classic record, NUL-padded as WATCH_IFNAME keys it.
#[inline(always)]
fn record_name(ctx: &TracePointContext, f: &FibRecord) -> [u8; 16] {
    let mut at = f.name;
    if at == ABSENT {
        return [0; 16];
    }
    if f.name_data_loc != 0 {
        // SAFETY: see on_route_record.
        let loc = unsafe { ctx.read_at::<u32>(at as usize) }.unwrap_or(0);
        at = loc & 0xffff;
    }
    // A string shorter than 16 bytes may be followed by anything: copied up to its NUL into
    // zeros (a loop clearing the tail cost the verifier half a second per program).
    let mut name = [0u8; 16];
    // SAFETY: as above; the helper reads through the kernel's fault-tolerant path.
    let src = unsafe { (ctx.as_ptr() as *const u8).add(at as usize) };
    // SAFETY: src is only read by the helper, into `name`.
    let _ = unsafe { bpf_probe_read_kernel_str_bytes(src, &mut name) };
    name
}

/// A port of a classic record (host byte order there), 0 when absent.
#[inline(always)]
fn record_port(ctx: &TracePointContext, at: u32) -> u16 {
    if at == ABSENT {
        return 0;
    }
    // SAFETY: see on_route_record.
    unsafe { ctx.read_at::<u16>(at as usize) }.unwrap_or(0)
}

/// A port of a typed flowi (host byte order), 0 when this kernel has no such field.
#[inline(always)]
fn port_at(flp: u64, at: u32) -> u16 {
    if at == ABSENT {
        0
    } else {
        u16::from_be(field::<true, u16>(flp, at).unwrap_or(0))
    }
}

/// A sample's source port, ingress ifindex and protocol, read from the lookup's flowi.
#[inline(always)]
fn from_flowi(sample: &mut RouteSample, flp: u64, sport_at: u32, iif_at: u32, proto_at: u32) {
    sample.sport = port_at(flp, sport_at);
    if iif_at != ABSENT {
        sample.iif = field::<true, u32>(flp, iif_at).unwrap_or(0);
    }
    if proto_at != ABSENT {
        sample.proto = field::<true, u8>(flp, proto_at).unwrap_or(0);
    }
}

/// The chosen device's name (a char array: read as bytes).
#[inline(always)]
fn device_name(sample: &mut RouteSample, dev: u64) {
    let at = get!(OFFSETS.dev_name);
    if dev != 0 && at != ABSENT {
        sample.dev = read(dev, at).unwrap_or([0; 16]);
    }
}

/// A lookup of the watched namespace: counted for its port, and its decision kept for its
/// (source, destination), for a verdict's evidence. `fill` reads the rest of the sample.
#[inline(always)]
fn decided(l: &Lookup, port: Option<u16>, fill: impl FnOnce(&mut RouteSample)) {
    if let Some(port) = port {
        count_flow(port, l.kind(), 0);
    }
    // Per routed packet: the same decision as last time for this pair is not written again.
    // This CPU's last written decision first (a few loads), then ROUTES (a hash lookup
    // instead of an LRU update and the reads `fill` makes). A pair ROUTES evicted while it
    // stayed this CPU's last is not written back until another decision comes between:
    // only under more than ROUTES' 4096 pairs at once.
    let last = LAST_ROUTE.get_ptr_mut((l.family == AF_INET6) as u32);
    if let Some(last) = last {
        // SAFETY: this program's own per-CPU slot (see LAST_ROUTE).
        let last = unsafe { &*last };
        if same_key(&last.key, &l.key)
            && last.table == l.table
            && last.err == l.err
            && last.oif == l.oif
        {
            return;
        }
    }
    let remember = || {
        if let Some(last) = last {
            // SAFETY: as above.
            unsafe {
                (*last).key = l.key;
                (*last).table = l.table;
                (*last).err = l.err;
                (*last).oif = l.oif;
            }
        }
    };
    // SAFETY: a plain-data value the programs write whole.
    if let Some(seen) = unsafe { ROUTES.get(&l.key) }
        && seen.table == l.table
        && seen.err == l.err
        && seen.oif == l.oif
    {
        remember();
        return;
    }
    let mut sample = RouteSample {
        // SAFETY: a helper call without arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        saddr: l.key.saddr,
        daddr: l.key.daddr,
        dport: l.dport,
        table: l.table,
        err: l.err,
        oif: l.oif,
        family: l.family,
        ..RouteSample::default()
    };
    fill(&mut sample);
    if ROUTES.insert(&l.key, &sample, 0).is_ok() {
        remember();
    }
}

/// Two ROUTES keys compared by words (a byte comparison calls the object's memcmp loop).
#[inline(always)]
fn same_key(a: &RouteKey, b: &RouteKey) -> bool {
    let (a, b) = (
        (a as *const RouteKey).cast::<u64>(),
        (b as *const RouteKey).cast::<u64>(),
    );
    // SAFETY: RouteKey is four 8-aligned words (tracer_common).
    unsafe {
        a.read() == b.read()
            && a.add(1).read() == b.add(1).read()
            && a.add(2).read() == b.add(2).read()
            && a.add(3).read() == b.add(3).read()
    }
}
