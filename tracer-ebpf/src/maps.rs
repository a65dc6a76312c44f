//! Maps and load-time globals. Names are the contract with `tracer/src/load/ebpf.rs`.
use crate::skb::Headers;
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, PerfEventByteArray, RingBuf},
};
use tracer_common::{
    ADDR_WORDS, AddrPort, CounterKey, DropEvent, DropFlowCount, DropFlowKey, FibRecord, FlowKey,
    IGNORED_LEN, KernelOffsets, PORTS_LEN, Process, RouteKey, RouteSample, TeardownSites, Trail,
    WatchConfig, kind, stat,
};

/// One decision as LAST_ROUTE keeps it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastRoute {
    pub key: RouteKey,
    pub table: u32,
    pub err: i32,
    pub oif: u32,
    pub _pad: u32,
}

/// A load-time constant: a `.rodata` global the loader sets (`override_global`) and aya
/// freezes, so the verifier knows every field read from it as a constant. That is what lets a
/// typed program load `*(skb + OFFSETS.skb_dev)` directly (a BTF pointer plus a known
/// offset) instead of calling `bpf_probe_read_kernel`. Read field by field with `get!`: a
/// whole-struct read copies every field on every run (≈50 loads for KernelOffsets).
#[repr(transparent)]
pub struct Frozen<T>(T);

impl<T: Copy> Frozen<T> {
    pub const fn new(value: T) -> Self {
        Self(value)
    }

    /// The whole value (for programs that do not run per packet).
    #[inline(always)]
    pub fn load(&self) -> T {
        // SAFETY: a plain read of our own static; volatile so the compiler does not fold
        // the placeholder the object was built with.
        unsafe { core::ptr::read_volatile(&self.0) }
    }

    #[inline(always)]
    pub fn as_ptr(&self) -> *const T {
        &self.0
    }
}

/// One field of a `Frozen` global: `get!(OFFSETS.skb_dev)`.
macro_rules! get {
    ($global:ident . $field:ident) => {
        // SAFETY: a volatile read of one field of a static (see `Frozen`).
        unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!(
                (*$crate::maps::$global.as_ptr()).$field
            ))
        }
    };
}
pub(crate) use get;

/// Field offsets of the running kernel, resolved from its BTF by the loader.
#[unsafe(no_mangle)]
pub static OFFSETS: Frozen<KernelOffsets> = Frozen::new(KernelOffsets::ZERO);

/// Namespace filter and switches of this run.
#[unsafe(no_mangle)]
pub static CONFIG: Frozen<WatchConfig> = Frozen::new(WatchConfig::ZERO);

/// `--snaplen`'s packet bytes past the linear part, from `bpf_skb_output` (one buffer per
/// CPU; userspace opens them only when asked for a snaplen).
#[map]
pub static PAYLOADS: PerfEventByteArray = PerfEventByteArray::new(0);

/// How each port (host byte order) is watched, `tracer_common::port` bits: every packet's
/// first filter, matched against source or destination port. An array lookup is a few
/// instructions the verifier inlines.
#[map]
pub static PORTS: Array<u8> = Array::with_max_entries(PORTS_LEN, 0);

/// `tracer_common::addr_slot` bits of the watched containers' addresses (WATCH_DADDR,
/// WATCH_DADDR6): a lookup whose addresses have no bit set is left after one array lookup
/// each.
#[map]
pub static ADDRS: Array<u64> = Array::with_max_entries(ADDR_WORDS, 0);

/// The same for the namespace's own addresses: routing lookups toward them are kept as
/// evidence. No exact map behind it: an address that only shares a local address's slot
/// costs one kept sample, no wrong verdict (a sample is cited only for a verdict's own
/// pair). Apart from ADDRS so a reply the host sends (from a local address) costs no
/// container lookup.
#[map]
pub static LOCAL_ADDRS: Array<u64> = Array::with_max_entries(ADDR_WORDS, 0);

/// Watched (address, port) pairs, matched against (saddr, sport) or (daddr, dport).
#[map]
pub static WATCH_ADDR_PORT: HashMap<AddrPort, u8> = HashMap::with_max_entries(1024, 0);

/// Drop reasons that are not drops for us (SKB_CONSUMED, socket-teardown purges, …), 1 at
/// their index; the loader fills it with the values this kernel's BTF gives those names.
#[map]
pub static IGNORED: Array<u8> = Array::with_max_entries(IGNORED_LEN, 0);

/// Exact drop counts per (reason, port, proto), kept whether or not the ring took the event.
#[map]
pub static COUNTERS: PerCpuHashMap<CounterKey, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// Per flow of drops (and of ICMP errors/RSTs sent), per CPU: exact counts, and how many
/// events the flow sent in the current interval (see WatchConfig::flow_burst). Bounded: a
/// flow that finds it full is counted in stat::FLOW_FULL and sends every event instead.
/// Per-CPU, so a storm driven from several cores never contends on a counter.
#[map]
pub static DROP_FLOWS: PerCpuHashMap<DropFlowKey, DropFlowCount> =
    PerCpuHashMap::with_max_entries(4096, 0);

/// What the kernel did with the watched ports' packets: forwarded, routed (per `flow::*`).
#[map]
pub static FLOWS: PerCpuHashMap<FlowKey, u64> = PerCpuHashMap::with_max_entries(1024, 0);

/// The last routing decision per (source, destination) pair in the watched namespace, for a
/// verdict's evidence.
#[map]
pub static ROUTES: LruHashMap<RouteKey, RouteSample> = LruHashMap::with_max_entries(4096, 0);

/// The last decision each routing program wrote to ROUTES on this CPU (index 0 IPv4, 1
/// IPv6: one program each, and the kernel never nests a program inside itself): a storm's
/// repeats of one decision are recognised with a few loads, before the ROUTES lookup.
#[map]
pub static LAST_ROUTE: PerCpuArray<LastRoute> = PerCpuArray::with_max_entries(2, 0);

/// The watched ports' translated IPv4 addresses (the containers) → their port: an inbound
/// route lookup carries no port, only the destination.
#[map]
pub static WATCH_DADDR: HashMap<[u8; 4], u16> = HashMap::with_max_entries(1024, 0);

/// The same for IPv6 containers.
#[map]
pub static WATCH_DADDR6: HashMap<[u8; 16], u16> = HashMap::with_max_entries(1024, 0);

/// Where the teardown sites are (see WatchConfig::skip_teardown); zeros until the loader has
/// read /proc/kallsyms.
#[map]
pub static TEARDOWN: Array<TeardownSites> = Array::with_max_entries(1, 0);

/// The classic fib tracepoints' record layouts (index 0 IPv4, 1 IPv6), for the fallback
/// programs; written by the loader before it attaches them.
#[map]
pub static FIB_RECORDS: Array<FibRecord> = Array::with_max_entries(2, 0);

/// The watched namespace's interfaces, by index and by name (name → index): a classic fib
/// record names no namespace, only interfaces.
#[map]
pub static WATCH_IFINDEX: HashMap<u32, u8> = HashMap::with_max_entries(256, 0);
#[map]
pub static WATCH_IFNAME: HashMap<[u8; 16], u32> = HashMap::with_max_entries(256, 0);

/// The program's own health counters, indexed by `tracer_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// The netfilter hook probes the CPU's current packet passed (see `Trail`; written by the
/// loader's hand-assembled BPF_PROG_TYPE_NETFILTER probes, tracer/src/load/nfprobe.rs, or the
/// nf_hook_slow trampolines; read and cleared on drop). One slot per CPU: no lock, no
/// allocation per packet, where a hash keyed by skb took an LRU insert per packet.
#[map]
pub static NF_TRAIL: PerCpuArray<Trail> = PerCpuArray::with_max_entries(1, 0);

/// Drop events for userspace. The loader may resize it (`map_max_entries`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Sysctl writes and iptables-legacy replacements, with their authors. A ring of its own so a
/// drop storm cannot crowd out the one event that names the culprit.
#[map]
pub static CHANGES: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// pid → identity of every program started in the watched namespace (see probes/exec.rs).
#[map]
pub static EXECS: LruHashMap<u32, Process> = LruHashMap::with_max_entries(8192, 0);

/// Per-CPU scratch space for building a DropEvent (too large for the stack with the parser),
/// one slot per program, indexed by the event kind it emits (`tracer_common::kind`). Different
/// tracing programs nest on one CPU (a softirq drop inside a process-context `icmp_send`), so
/// they must not share a slot; the kernel never nests a program inside itself (its `active`
/// recursion guard skips the inner run).
#[map]
pub static DROP_SCRATCH: PerCpuArray<DropEvent> = PerCpuArray::with_max_entries(kind::COUNT, 0);

/// Per-CPU scratch space for a packet's headers (`skb::Headers`), one slot per event kind as
/// in DROP_SCRATCH.
#[map]
pub static HEADERS: PerCpuArray<Headers> = PerCpuArray::with_max_entries(kind::COUNT, 0);

/// Per-CPU scratch space for building a Process (too large for the 512-byte BPF stack).
#[map]
pub static SCRATCH: PerCpuArray<Process> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: the slot is a valid, aligned u64 of this CPU's copy. Programs of different
        // types (a cgroup sysctl program, a softirq drop) can interrupt each other on one CPU
        // between a load and a store, so the increment is one atomic add instruction (the
        // target's core has no AtomicU64 to say it with).
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({slot} + 0) += {one}",
                slot = in(reg) slot,
                one = in(reg) 1u64,
            )
        };
    }
}
