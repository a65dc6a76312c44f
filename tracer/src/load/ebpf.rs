//! Loads the embedded eBPF object, probes which drop hook this kernel accepts, fills the watch
//! maps and attaches. Everything it creates is owned by `Tracer`: dropping it (or the process
//! dying, even by SIGKILL) closes the fds and the kernel detaches the programs. Nothing is
//! pinned.
use std::{collections::BTreeMap, fs, net::IpAddr, sync::Arc};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, CgroupAttachMode, FEntry, FExit, KProbe, TracePoint},
};
use tracer_common::{
    AF_INET, AddrPort, CounterKey, DropFlowCount, DropFlowKey, FlowKey, KernelOffsets, NO_FIELD,
    Process, RouteKey, RouteSample, WatchConfig, stat,
};

use std::os::fd::{AsFd, AsRawFd};

use crate::{
    discover::netns::Netns,
    error::Error,
    load::filter::{self, Filter},
    load::kernel::{inspect::Capabilities, tracefs},
    load::nfprobe::HookProbes,
};

/// The object built by build.rs from tracer-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/droptrace"));

/// The kernel side's object, for `cargo xtask bench`, which loads its empty `bench_floor`
/// program as the floor beside droptrace's.
pub fn object() -> &'static [u8] {
    EBPF_OBJECT
}

/// Which program carries the drop path on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropHook {
    /// tp_btf/kfree_skb: typed arguments, no tracefs needed.
    TpBtf,
    /// tracepoint/skb/kfree_skb: the fallback, through tracefs.
    Tracepoint,
    /// No drop hook: `droptrace record` loads only the change probes.
    None,
}

impl DropHook {
    pub fn name(self) -> &'static str {
        match self {
            DropHook::TpBtf => "tp_btf/kfree_skb",
            DropHook::Tracepoint => "tracepoint/skb/kfree_skb",
            DropHook::None => "none",
        }
    }
}

/// Which drop hook the user allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HookChoice {
    #[default]
    Auto,
    #[value(name = "tp_btf")]
    TpBtf,
    Tracepoint,
}

/// What to load and watch.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub offsets: KernelOffsets,
    pub config: WatchConfig,
    pub ignored_reasons: Vec<u32>,
    /// Ring buffer size in bytes (a power of two, at least a page); None keeps the default.
    pub ring_bytes: Option<u32>,
    /// The change ring's size in bytes (a power of two); None keeps the default (256 KiB).
    pub changes_ring_bytes: Option<u32>,
    pub hook: HookChoice,
    /// What the running kernel offers (probed once, before loading).
    pub caps: Capabilities,
    /// Let the kernel side report its anomalies (aya-log); off, each costs one check.
    pub kernel_log: bool,
    /// Hook the routing decision and count forwarded packets (off only to measure their cost).
    pub forwarding_hooks: bool,
    /// Which routing-decision programs: tp_btf, else the classic tracepoints (`Tracepoint`
    /// forces the fallback, to test it).
    pub route_hook: HookChoice,
    /// The watched namespace's interfaces (ifindex, name): the classic fib records name only
    /// interfaces.
    pub interfaces: Vec<(u32, String)>,
}

/// A tp_btf program, and the leading tracepoint arguments (C types) it reads: the verifier
/// refuses a program that reads an argument the running kernel's prototype lacks.
#[derive(Debug)]
pub struct TpVariant {
    pub program: &'static str,
    pub args: &'static [&'static str],
    /// What the kernels that need this variant do not show, for the start line's notes.
    pub lost: Option<&'static str>,
}

/// A BTF-typed tracepoint and its programs, most informative first.
pub struct TpHook {
    pub tracepoint: &'static str,
    pub variants: &'static [TpVariant],
}

pub const KFREE_SKB: TpHook = TpHook {
    tracepoint: "kfree_skb",
    variants: &[
        TpVariant {
            program: "kfree_skb_btf",
            args: &["struct sk_buff *", "void *", "enum skb_drop_reason"],
            lost: None,
        },
        // Before Linux 5.17: no reason argument. What that loses is said once, for this
        // program and the tracepoint fallback alike (the watch's start line).
        TpVariant {
            program: "kfree_skb_btf_no_reason",
            args: &["struct sk_buff *", "void *"],
            lost: None,
        },
    ],
};

const ICMP_SEND: TpHook = TpHook {
    tracepoint: "icmp_send",
    variants: &[TpVariant {
        program: "icmp_send",
        args: &["struct sk_buff *", "int", "int"],
        lost: None,
    }],
};

const TCP_SEND_RESET: TpHook = TpHook {
    tracepoint: "tcp_send_reset",
    variants: &[
        TpVariant {
            program: "tcp_send_reset",
            args: &["struct sock *", "struct sk_buff *", "enum sk_rst_reason"],
            lost: None,
        },
        TpVariant {
            program: "tcp_send_reset_no_reason",
            args: &["struct sock *", "struct sk_buff *"],
            // Linux 6.10 made the tracepoint fire for every RST (19822a980e19); before, only
            // for RSTs sent by a full socket.
            lost: Some(
                "tcp_send_reset on this kernel (before Linux 6.10) fires only for RSTs sent by a socket: RSTs answering a closed port are not seen (the NO_SOCKET drop still is)",
            ),
        },
    ],
};

const PROCESS_EXEC: TpHook = TpHook {
    tracepoint: "sched_process_exec",
    variants: &[TpVariant {
        program: "process_exec",
        args: &["struct task_struct *", "pid_t", "struct linux_binprm *"],
        lost: None,
    }],
};

const FIB_LOOKUP: TpHook = TpHook {
    tracepoint: "fib_table_lookup",
    variants: &[TpVariant {
        program: "fib_table_lookup",
        args: &["u32", "struct flowi4 *", "struct fib_nh_common *", "int"],
        lost: None,
    }],
};

const FIB6_LOOKUP: TpHook = TpHook {
    tracepoint: "fib6_table_lookup",
    variants: &[TpVariant {
        program: "fib6_table_lookup",
        args: &[
            "struct net *",
            "struct fib6_result *",
            "struct fib6_table *",
            "struct flowi6 *",
        ],
        lost: None,
    }],
};

const NET_DEV_QUEUE: TpHook = TpHook {
    tracepoint: "net_dev_queue",
    variants: &[TpVariant {
        program: "net_dev_queue",
        args: &["struct sk_buff *"],
        lost: None,
    }],
};

/// Every BTF-typed tracepoint droptrace may hook: the prototypes to read before loading.
pub const TP_HOOKS: &[&TpHook] = &[
    &KFREE_SKB,
    &ICMP_SEND,
    &TCP_SEND_RESET,
    &PROCESS_EXEC,
    &FIB_LOOKUP,
    &FIB6_LOOKUP,
    &NET_DEV_QUEUE,
];

impl TpHook {
    /// The program written for this kernel's prototype (`args`, from its BTF).
    pub fn variant_for(&self, args: Option<&[String]>) -> Result<&'static TpVariant, String> {
        let Some(args) = args else {
            return Err(format!("this kernel has no tracepoint {}", self.tracepoint));
        };
        self.variants
            .iter()
            .find(|v| {
                v.args.len() <= args.len()
                    && v.args.iter().zip(args).all(|(want, have)| want == have)
            })
            .ok_or_else(|| {
                format!(
                    "its prototype here ({}) is not one droptrace has a program for",
                    args.join(", ")
                )
            })
    }
}

/// What an optional hook needs from the kernel, asked of the capability inspector.
pub enum Need {
    Tracepoint(&'static TpHook),
    /// The tracepoint, else a kernel function reached by fentry, else by kprobe.
    TracepointOrFunction(&'static TpHook, &'static str),
    /// The tracepoint with a program for its prototype, else its classic record.
    TracepointOrRecord(&'static TpHook),
    /// Netfilter links (Linux 6.4), else fentry/fexit on `nf_hook_slow`.
    NetfilterLinksOrTrampolines,
    CgroupLinks,
}

/// A hook droptrace does without when it must: the name it has in the start line's
/// `signals`, what it needs, and what is lost without it (the start line's note).
pub struct OptionalHook {
    pub signal: &'static str,
    pub name: &'static str,
    pub need: Need,
    pub lost: &'static str,
}

pub const ICMP_SIGNAL: OptionalHook = OptionalHook {
    signal: "icmp_send",
    name: "icmp_send (tracepoint, fentry or kprobe)",
    need: Need::TracepointOrFunction(&ICMP_SEND, "__icmp_send"),
    lost: "a REJECT cannot be told from a DROP by the ICMP error it sends (rule names still tell)",
};

pub const RST_SIGNAL: OptionalHook = OptionalHook {
    signal: "tcp_send_reset",
    name: "tracepoint tcp_send_reset",
    need: Need::Tracepoint(&TCP_SEND_RESET),
    lost: "RSTs sent for closed ports are not seen (the NO_SOCKET drop still is)",
};

pub const NETFILTER_PROBES: OptionalHook = OptionalHook {
    signal: "netfilter_hooks",
    name: "netfilter hook probes",
    need: Need::NetfilterLinksOrTrampolines,
    lost: "the hook of a NETFILTER_DROP is inferred from conntrack and the destination address instead",
};

pub const SYSCTL_WRITES: OptionalHook = OptionalHook {
    signal: "sysctl_writes",
    name: "cgroup/sysctl",
    need: Need::CgroupLinks,
    lost: "who changed forwarding sysctls is not recorded",
};

pub const LEGACY_REPLACES: OptionalHook = OptionalHook {
    signal: "iptables_legacy_replace",
    name: "cgroup/setsockopt",
    need: Need::CgroupLinks,
    lost: "iptables-legacy changes are not attributed",
};

pub const ROUTE_DECISIONS: OptionalHook = OptionalHook {
    signal: "routing_decisions",
    name: "tracepoint fib_table_lookup",
    need: Need::TracepointOrRecord(&FIB_LOOKUP),
    lost: "the kernel's routing decision for the watched ports is not shown",
};

pub const ROUTE_DECISIONS6: OptionalHook = OptionalHook {
    signal: "routing_decisions_ipv6",
    name: "tracepoint fib6_table_lookup",
    need: Need::TracepointOrRecord(&FIB6_LOOKUP),
    lost: "the kernel's IPv6 routing decision for the watched ports is not shown",
};

pub const FORWARDED_PACKETS: OptionalHook = OptionalHook {
    signal: "forwarded_packets",
    name: "tracepoint net_dev_queue",
    need: Need::Tracepoint(&NET_DEV_QUEUE),
    lost: "packets forwarded to the watched ports are not counted",
};

pub const EXEC_RECORDS: OptionalHook = OptionalHook {
    signal: "process_exec",
    name: "tracepoint sched_process_exec",
    need: Need::Tracepoint(&PROCESS_EXEC),
    lost: "nf_tables changes are attributed from /proc only (short-lived tools may be gone)",
};

/// The tracepoint the change probes need a prototype of (`Capabilities::probe`).
pub const CHANGE_TRACEPOINTS: [&str; 1] = [PROCESS_EXEC.tracepoint];

/// Every optional hook, in the order they are attached.
pub const OPTIONAL_HOOKS: &[&OptionalHook] = &[
    &ICMP_SIGNAL,
    &RST_SIGNAL,
    &NETFILTER_PROBES,
    &SYSCTL_WRITES,
    &LEGACY_REPLACES,
    &EXEC_RECORDS,
    &ROUTE_DECISIONS,
    &ROUTE_DECISIONS6,
    &FORWARDED_PACKETS,
];

impl OptionalHook {
    /// Why the hook cannot run on a kernel with `caps`, if it cannot.
    pub fn missing(&self, caps: &Capabilities) -> Option<String> {
        match &self.need {
            Need::Tracepoint(tp) => {
                let args = caps.prototypes.get(tp.tracepoint).cloned().flatten();
                tp.variant_for(args.as_deref()).err()
            }
            Need::TracepointOrRecord(tp) => caps
                .prototypes
                .get(tp.tracepoint)
                .cloned()
                .flatten()
                .is_none()
                .then(|| format!("this kernel has no tracepoint {}", tp.tracepoint)),
            Need::TracepointOrFunction(tp, function) => {
                let args = caps.prototypes.get(tp.tracepoint).cloned().flatten();
                let tracepoint = tp.variant_for(args.as_deref()).err()?;
                (!caps.trampolines && !caps.kprobes).then(|| {
                    format!("{tracepoint}, and neither fentry nor kprobes can reach {function}")
                })
            }
            Need::NetfilterLinksOrTrampolines => (!caps.netfilter_links && !caps.trampolines)
                .then(|| "netfilter links need Linux >= 6.4 and this kernel has neither them nor BPF trampolines for fentry on nf_hook_slow".into()),
            Need::CgroupLinks => match (&caps.cgroup2_root, caps.cgroup_links) {
                (None, _) => Some(
                    "no cgroup v2 hierarchy is mounted: mount -t cgroup2 none /sys/fs/cgroup/unified".into(),
                ),
                // Without links aya would fall back to BPF_PROG_ATTACH, which outlives a killed
                // process: droptrace never leaves a program behind, so it does without.
                (_, false) => Some("cgroup bpf_links need Linux >= 5.7".into()),
                _ => None,
            },
        }
    }

    /// The start line's sentence for this hook, unavailable because of `why`.
    pub fn unavailable(&self, why: &str) -> String {
        format!("{} unavailable ({why}): {}", self.name, self.lost)
    }
}

/// The loaded and attached kernel side.
pub struct Tracer {
    ebpf: Ebpf,
    pub hook: DropHook,
    /// Optional signal tracepoints that attached (icmp_send, tcp_send_reset).
    pub signals: Vec<&'static str>,
    /// Netfilter hook probes in the watched namespace, when the kernel has them.
    hook_probes: Option<HookProbes>,
    /// Sentences about precision lost or host changes made (tracefs mounted, fallback used).
    pub notes: Vec<String>,
    caps: Capabilities,
}

/// Exact totals read from the per-CPU maps.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    /// (reason value, port, proto) → packets.
    pub counters: BTreeMap<(u32, u16, u8), u64>,
    /// Drop events the ring could not take.
    pub ring_lost: u64,
    /// Signal events (ICMP errors, RSTs) the ring could not take.
    pub signals_lost: u64,
    /// Late FINs and RSTs of closed connections, counted and not reported.
    pub teardown: u64,
    /// (port, `flow::*`, proto) → packets: what the kernel did with the watched ports' packets.
    pub flows: BTreeMap<(u16, u8, u8), u64>,
    pub events: u64,
    pub counter_full: u64,
    pub read_errors: u64,
    /// `--snaplen` payload copies the kernel could not hand over (perf buffer full).
    pub payload_lost: u64,
    /// Drops and signals counted in no flow (DROP_FLOWS full), each sent as an event.
    pub flow_full: u64,
}

fn raise_memlock() {
    // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones ignore it.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid struct; failure only means old kernels may refuse maps.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

fn open_object(opts: &LoadOptions, offsets: &KernelOffsets) -> Result<Ebpf, Error> {
    let btf = aya_btf();
    let mut loader = EbpfLoader::new();
    // aya-log-ebpf's own switch: 0 turns every log statement into one load and a branch.
    let log_level: u8 = if opts.kernel_log {
        aya_log::Level::Trace as u8
    } else {
        0
    };
    loader
        .override_global("OFFSETS", offsets, true)
        .override_global("CONFIG", &opts.config, true)
        .override_global(aya_log::LEVEL, &log_level, true);
    if let Some(bytes) = opts.ring_bytes {
        loader.map_max_entries("EVENTS", bytes);
    }
    if let Some(bytes) = opts.changes_ring_bytes {
        loader.map_max_entries("CHANGES", bytes);
    }
    // The same parse the attach functions use, not one more of the loader's own.
    if let Ok(btf) = &btf {
        loader.btf(btf);
    }
    loader
        .load(EBPF_OBJECT)
        .map_err(|e| Error::Load(e.to_string()))
}

/// Where tracefs is: the host's mount, else one made once in droptrace's own mount
/// namespace (the host is unchanged), then remembered in `caps`.
fn tracefs_root(
    caps: &mut Capabilities,
    notes: &mut Vec<String>,
) -> Result<std::path::PathBuf, Error> {
    if let Some(root) = &caps.tracefs {
        return Ok(root.clone());
    }
    let root = tracefs::mount_private()?;
    notes.push(format!(
        "tracefs is not mounted on this host: mounted it at {} in droptrace's own mount namespace for the tracepoint fallback (the host is unchanged)",
        root.display()
    ));
    caps.tracefs = Some(root.clone());
    Ok(root)
}

/// Offsets of the classic tracepoint's record fields, mounting tracefs privately if the host
/// has it nowhere.
fn tracepoint_offsets(caps: &mut Capabilities, notes: &mut Vec<String>) -> Result<[u32; 3], Error> {
    let root = tracefs_root(caps, notes)?;
    let format_path = root.join("events/skb/kfree_skb/format");
    let format = fs::read_to_string(&format_path)
        .map_err(|e| Error::Attach(format!("{}: {e}", format_path.display())))?;
    let offs = tracefs::field_offsets(&format, &["skbaddr", "location"]).ok_or_else(|| {
        Error::Attach(format!(
            "{} has no skbaddr or location field: its layout is not one droptrace knows",
            format_path.display()
        ))
    })?;
    // Before Linux 5.17 the record has no reason: the program then reports none.
    let reason = tracefs::field_offsets(&format, &["reason"]).map_or(NO_FIELD, |r| r[0]);
    Ok([offs[0], offs[1], reason])
}

impl Tracer {
    pub fn load(opts: &LoadOptions) -> Result<Self, Error> {
        raise_memlock();
        let mut notes = Vec::new();
        let mut caps = opts.caps.clone();

        let mut ebpf = open_object(opts, &opts.offsets)?;
        let tried = match opts.hook {
            HookChoice::Tracepoint => Err("not requested (--drop-hook tracepoint)".to_string()),
            _ => attach_tp_hook(&mut ebpf, &KFREE_SKB, &opts.caps),
        };
        let hook = match tried {
            Ok(lost) => {
                notes.extend(lost.map(str::to_string));
                DropHook::TpBtf
            }
            Err(why) if opts.hook == HookChoice::TpBtf => {
                return Err(Error::Attach(format!("tp_btf/kfree_skb: {why}")));
            }
            Err(why) => {
                notes.push(format!(
                    "tp_btf/kfree_skb unavailable ({why}); using the classic skb:kfree_skb tracepoint"
                ));
                let [skbaddr, location, reason] = tracepoint_offsets(&mut caps, &mut notes)?;
                let offsets = KernelOffsets {
                    tp_skbaddr: skbaddr,
                    tp_location: location,
                    tp_reason: reason,
                    ..opts.offsets
                };
                // Globals are frozen when the object is created: reopen it with the offsets.
                drop(ebpf);
                ebpf = open_object(opts, &offsets)?;
                attach_tracepoint(&mut ebpf)?;
                DropHook::Tracepoint
            }
        };
        let mut tracer = Self {
            ebpf,
            hook,
            signals: Vec::new(),
            hook_probes: None,
            notes,
            caps,
        };
        tracer.enable(&ICMP_SIGNAL, |t| attach_icmp(&mut t.ebpf, &t.caps));
        tracer.enable(&RST_SIGNAL, |t| {
            attach_tp_hook(&mut t.ebpf, &TCP_SEND_RESET, &t.caps)
        });
        if opts.forwarding_hooks {
            tracer.fill_interfaces(&opts.interfaces)?;
            for (hook, record) in [
                (&ROUTE_DECISIONS, &FIB_RECORD),
                (&ROUTE_DECISIONS6, &FIB6_RECORD),
            ] {
                tracer.enable(hook, |t| t.attach_route_hook(record, opts.route_hook));
            }
            tracer.enable(&FORWARDED_PACKETS, |t| {
                attach_tp_hook(&mut t.ebpf, &NET_DEV_QUEUE, &t.caps)
            });
        }
        tracer.fill_ignored(&opts.ignored_reasons)?;
        Ok(tracer)
    }

    /// Only the change probes (`attach_change_probes`), for `droptrace record`: no drop hook,
    /// no packet program, so nothing runs per packet. The object's maps are still created;
    /// they are kernel memory, not the recorder's.
    pub fn load_changes_only(opts: &LoadOptions) -> Result<Self, Error> {
        raise_memlock();
        let mut tracer = Self {
            ebpf: open_object(opts, &opts.offsets)?,
            hook: DropHook::None,
            signals: Vec::new(),
            hook_probes: None,
            notes: Vec::new(),
            caps: opts.caps.clone(),
        };
        tracer.attach_change_probes();
        Ok(tracer)
    }

    /// Attaches an optional hook when the kernel has what it needs; otherwise, or when the
    /// kernel refuses it, its note. `attach` returns what the variant it loaded cannot see.
    fn enable(
        &mut self,
        hook: &OptionalHook,
        attach: impl FnOnce(&mut Self) -> Result<Option<&'static str>, String>,
    ) {
        if let Some(why) = hook.missing(&self.caps) {
            self.notes.push(hook.unavailable(&why));
            return;
        }
        match attach(self) {
            Ok(lost) => {
                self.signals.push(hook.signal);
                // Both routing hooks on the classic fallback say the same: once.
                let lost = lost.filter(|l| !self.notes.iter().any(|n| n == l));
                self.notes.extend(lost.map(str::to_string));
            }
            Err(why) => self.notes.push(hook.unavailable(&refusal(&why))),
        }
    }

    /// Puts every key of `keys` (with the value 1) into the set-like hash map `name`.
    fn fill_set<'k, K: aya::Pod + 'k>(
        &mut self,
        name: &str,
        keys: impl IntoIterator<Item = &'k K>,
    ) -> Result<(), Error> {
        let map_err = |e: aya::maps::MapError| Error::Load(format!("{name}: {e}"));
        let mut set: HashMap<_, K, u8> = HashMap::try_from(self.map_mut(name)?).map_err(map_err)?;
        for key in keys {
            set.insert(key, &1u8, 0).map_err(map_err)?;
        }
        Ok(())
    }

    /// Puts every (key, value) of `pairs` into the hash map `name`.
    fn fill_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
        pairs: &[(K, V)],
    ) -> Result<(), Error> {
        let map_err = |e: aya::maps::MapError| Error::Load(format!("{name}: {e}"));
        let mut map: HashMap<_, K, V> = HashMap::try_from(self.map_mut(name)?).map_err(map_err)?;
        for (key, value) in pairs {
            map.insert(key, value, 0).map_err(map_err)?;
        }
        Ok(())
    }

    /// What to watch, given once the namespace's state is read (the programs load while it
    /// is): until then the programs match nothing.
    /// - `ports`: watched ports; `addr_ports`: watched (address, port) pairs, the containers'
    ///   among them;
    /// - `local_addrs`: the namespace's own addresses (a routing lookup toward one is kept
    ///   as evidence: local delivery of a published port nothing translated).
    pub fn watch(
        &mut self,
        ports: &[u16],
        addr_ports: &[AddrPort],
        local_addrs: &[IpAddr],
    ) -> Result<(), Error> {
        self.fill_set("WATCH_ADDR_PORT", addr_ports)?;
        // A container address stands for the first of its watched ports.
        let mut v4: Vec<([u8; 4], u16)> = Vec::new();
        let mut v6: Vec<([u8; 16], u16)> = Vec::new();
        for pair in addr_ports {
            if pair.family == AF_INET {
                let addr: [u8; 4] = pair.addr[..4].try_into().expect("4 bytes");
                if !v4.iter().any(|(a, _)| *a == addr) {
                    v4.push((addr, pair.port));
                }
            } else if !v6.iter().any(|(a, _)| *a == pair.addr) {
                v6.push((pair.addr, pair.port));
            }
        }
        self.fill_map("WATCH_DADDR", &v4)?;
        self.fill_map("WATCH_DADDR6", &v6)?;
        let filter = Filter::new(ports, addr_ports, local_addrs);
        self.fill_array("PORTS", &filter.ports)?;
        self.fill_array("ADDRS", &filter.addr_words)?;
        self.fill_array("LOCAL_ADDRS", &filter.local_words)
    }

    /// Sets the given entries of the array map `name`.
    fn fill_array<V: aya::Pod>(
        &mut self,
        name: &str,
        entries: &BTreeMap<u32, V>,
    ) -> Result<(), Error> {
        let map_err = |e: aya::maps::MapError| Error::Load(format!("{name}: {e}"));
        let mut array: aya::maps::Array<_, V> =
            aya::maps::Array::try_from(self.map_mut(name)?).map_err(map_err)?;
        for (index, value) in entries {
            array.set(*index, value, 0).map_err(map_err)?;
        }
        Ok(())
    }

    /// The drop reasons the drop program skips (IGNORED). One the array cannot hold (none
    /// of today's kernels has one) is left reported, and logged.
    fn fill_ignored(&mut self, reasons: &[u32]) -> Result<(), Error> {
        let (kept, beyond) = filter::ignored(reasons);
        for r in beyond {
            self.notes.push(format!(
                "drop reason {r} is beyond the kernel filter's table ({}): its drops are reported, not skipped",
                tracer_common::IGNORED_LEN
            ));
        }
        let entries: BTreeMap<u32, u8> = kept.into_iter().map(|r| (r, 1)).collect();
        self.fill_array("IGNORED", &entries)
    }

    /// The culprit probes: sysctl writes and iptables-legacy replacements (cgroup programs
    /// linked to the cgroup v2 root beside any other program, never refusing anything) and
    /// program starts (to name nf_tables committers). Each is optional; what is missing
    /// becomes a note.
    pub fn attach_change_probes(&mut self) {
        self.enable(&SYSCTL_WRITES, |t| t.attach_cgroup("sysctl_write"));
        self.enable(&LEGACY_REPLACES, |t| t.attach_cgroup("ipt_replace"));
        self.enable(&EXEC_RECORDS, |t| {
            attach_tp_hook(&mut t.ebpf, &PROCESS_EXEC, &t.caps)
        });
    }

    /// Loads program `name` and links it to the cgroup v2 root (bpf_link: detached when
    /// droptrace's fd closes, even after SIGKILL).
    fn attach_cgroup(&mut self, name: &str) -> Result<Option<&'static str>, String> {
        let root = self.caps.cgroup2_root.clone().unwrap_or_default();
        let cgroup = std::fs::File::open(&root)
            .map_err(|e| format!("cannot open {}: {e}", root.display()))?;
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing"))?;
        load_and_link_cgroup(program, &cgroup).map(|()| None)
    }

    /// Prints the kernel side's log records (aya-log) on stderr as they come, from a task of
    /// the event loop. Once only: it takes the log ring out of the object.
    pub fn forward_kernel_log(&mut self) -> Result<(), Error> {
        let logger = aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, KernelLog)
            .map_err(|e| Error::Load(format!("kernel log: {e}")))?;
        // SAFETY: the logger owns its ring's fd and keeps it open until it is dropped, which
        // happens only with the AsyncFd.
        let mut logger = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        }
        .map_err(|e| Error::Io(format!("polling the kernel log: {e}")))?;
        tokio::spawn(async move {
            while let Ok(mut guard) = logger.readable_mut().await {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
        Ok(())
    }

    /// The CHANGES ring, taken out of the object (once).
    pub fn take_changes(&mut self) -> Result<RingBuf<MapData>, Error> {
        let map = self
            .ebpf
            .take_map("CHANGES")
            .ok_or_else(|| Error::Load("map CHANGES missing or already taken".into()))?;
        RingBuf::try_from(map).map_err(|e| Error::Load(format!("CHANGES: {e}")))
    }

    /// The identity the exec probe recorded for `pid`, if it started while we watched.
    pub fn exec_identity(&self, pid: u32) -> Option<Process> {
        let map = self.ebpf.map("EXECS")?;
        let execs: HashMap<_, u32, Process> = HashMap::try_from(map).ok()?;
        execs.get(&pid, 0).ok()
    }

    /// The netfilter hook probes: BPF netfilter links in the watched namespace (Linux 6.4),
    /// else fentry/fexit on `nf_hook_slow` (every namespace's packets pass there; the
    /// programs keep the watched namespace's).
    pub fn attach_hook_probes(&mut self, ns: &Netns) {
        self.enable(&NETFILTER_PROBES, |t| {
            if !t.caps.netfilter_links {
                attach_fentry(&mut t.ebpf, "nf_hook_enter", "nf_hook_slow")?;
                attach_fexit(&mut t.ebpf, "nf_hook_exit", "nf_hook_slow")?;
                return Ok(Some(
                    "the netfilter hook is observed through fentry/fexit on nf_hook_slow (this kernel has no netfilter links, Linux 6.4)",
                ));
            }
            let fd = match t.ebpf.map("NF_TRAIL") {
                Some(aya::maps::Map::PerCpuArray(data)) => data.fd().as_fd().as_raw_fd(),
                _ => return Err("map NF_TRAIL missing from the eBPF object".into()),
            };
            t.hook_probes = Some(HookProbes::attach(ns, fd)?);
            Ok(None)
        });
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map, Error> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| Error::Load(format!("map {name} missing from the eBPF object")))
    }

    /// The event ring, taken out of the object (once).
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, Error> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| Error::Load("map EVENTS missing or already taken".into()))?;
        RingBuf::try_from(map).map_err(|e| Error::Load(format!("EVENTS: {e}")))
    }

    /// `--snaplen`'s payload map (PAYLOADS), where the drop program can copy payloads
    /// (tp_btf: a typed sk_buff); otherwise a sentence saying what is kept instead.
    pub fn take_payloads(&mut self, snaplen: u32) -> Result<aya::maps::Map, String> {
        if self.hook != DropHook::TpBtf {
            return Err(format!(
                "--snaplen {snaplen}: the drop hook is {}, which cannot copy page fragments: only each packet's linear part is kept",
                self.hook.name()
            ));
        }
        self.ebpf
            .take_map("PAYLOADS")
            .ok_or_else(|| "map PAYLOADS missing from the eBPF object".to_string())
    }

    /// Reads the exact counters and the program's health counters.
    pub fn totals(&self) -> Result<Totals, Error> {
        let map_err =
            |what: &str, e: aya::maps::MapError| Error::Io(format!("reading {what}: {e}"));
        let mut totals = Totals::default();
        let counters_map = self
            .ebpf
            .map("COUNTERS")
            .ok_or_else(|| Error::Load("map COUNTERS missing".into()))?;
        let counters: PerCpuHashMap<_, CounterKey, u64> =
            PerCpuHashMap::try_from(counters_map).map_err(|e| map_err("COUNTERS", e))?;
        for item in counters.iter() {
            let (key, values) = item.map_err(|e| map_err("COUNTERS", e))?;
            let sum: u64 = values.iter().sum();
            *totals
                .counters
                .entry((key.reason, key.port, key.proto))
                .or_default() += sum;
        }
        let read = |index: u32| self.stat(index);
        totals.ring_lost = read(stat::RING_LOST)?;
        totals.events = read(stat::EVENTS)?;
        totals.counter_full = read(stat::COUNTER_FULL)?;
        totals.read_errors = read(stat::READ_ERRORS)?;
        totals.payload_lost = read(stat::PAYLOAD_LOST)?;
        totals.signals_lost = read(stat::SIGNALS_LOST)?;
        totals.teardown = read(stat::TEARDOWN)?;
        totals.flow_full = read(stat::FLOW_FULL)?;
        totals.flows = self.flows()?;
        Ok(totals)
    }

    /// One of the kernel side's own counters (`tracer_common::stat`), summed over CPUs.
    pub fn stat(&self, index: u32) -> Result<u64, Error> {
        let map_err = |e: aya::maps::MapError| Error::Io(format!("reading STATS: {e}"));
        let stats_map = self
            .ebpf
            .map("STATS")
            .ok_or_else(|| Error::Load("map STATS missing".into()))?;
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(stats_map).map_err(map_err)?;
        Ok(stats.get(&index, 0).map_err(map_err)?.iter().sum())
    }

    /// The FLOWS counters summed over CPUs.
    fn flows(&self) -> Result<BTreeMap<(u16, u8, u8), u64>, Error> {
        let map_err = |e: aya::maps::MapError| Error::Io(format!("reading FLOWS: {e}"));
        let map = self
            .ebpf
            .map("FLOWS")
            .ok_or_else(|| Error::Load("map FLOWS missing".into()))?;
        let flows: PerCpuHashMap<_, FlowKey, u64> =
            PerCpuHashMap::try_from(map).map_err(map_err)?;
        let mut out = BTreeMap::new();
        for item in flows.iter() {
            let (key, values) = item.map_err(map_err)?;
            *out.entry((key.port, key.kind, key.proto)).or_default() += values.iter().sum::<u64>();
        }
        Ok(out)
    }

    /// The in-kernel aggregation's flows, each summed over CPUs (first and last: the earliest
    /// and latest any CPU saw).
    pub fn drop_flows(&self) -> Result<Vec<(DropFlowKey, DropFlowCount)>, Error> {
        let map_err = |e: aya::maps::MapError| Error::Io(format!("reading DROP_FLOWS: {e}"));
        let map = self
            .ebpf
            .map("DROP_FLOWS")
            .ok_or_else(|| Error::Load("map DROP_FLOWS missing".into()))?;
        let flows: PerCpuHashMap<_, DropFlowKey, DropFlowCount> =
            PerCpuHashMap::try_from(map).map_err(map_err)?;
        let mut out = Vec::new();
        for item in flows.iter() {
            let (key, values) = item.map_err(map_err)?;
            let mut sum = DropFlowCount::default();
            for v in values.iter().filter(|v| v.packets > 0) {
                sum.packets += v.packets;
                sum.sent += v.sent;
                if sum.first_ns == 0 || v.first_ns < sum.first_ns {
                    sum.first_ns = v.first_ns;
                }
                sum.last_ns = sum.last_ns.max(v.last_ns);
            }
            out.push((key, sum));
        }
        Ok(out)
    }

    /// Every routing decision kept (one per source and destination, at most 4096).
    pub fn routes(&self) -> Vec<RouteSample> {
        let Some(map) = self.ebpf.map("ROUTES") else {
            return Vec::new();
        };
        let Ok(routes) = HashMap::<_, RouteKey, RouteSample>::try_from(map) else {
            return Vec::new();
        };
        routes
            .iter()
            .filter_map(Result::ok)
            .map(|(_, v)| v)
            .collect()
    }

    /// The last routing decision the kernel made for packets from `src` to `dst`, if one was
    /// seen in the watched namespace.
    pub fn route(&self, src: IpAddr, dst: IpAddr) -> Option<RouteSample> {
        let map = self.ebpf.map("ROUTES")?;
        let routes: HashMap<_, RouteKey, RouteSample> = HashMap::try_from(map).ok()?;
        let key = RouteKey {
            saddr: tracer_common::addr_bytes(src),
            daddr: tracer_common::addr_bytes(dst),
        };
        routes.get(&key, 0).ok()
    }
}

/// Where the kernel side's log records go: stderr, one line each, never stdout (which may be
/// JSON Lines for a machine).
struct KernelLog;

/// How many times each distinct kernel report was seen: a storm repeats one report per lost
/// event, and printing each would keep droptrace busy (and stderr full) long after Ctrl-C.
static REPORTS_SEEN: std::sync::Mutex<BTreeMap<String, u64>> =
    std::sync::Mutex::new(BTreeMap::new());

/// Each report is printed the first few times, then once at every power of ten.
fn worth_printing(seen: u64) -> bool {
    let mut n = seen;
    while n >= 10 && n.is_multiple_of(10) {
        n /= 10;
    }
    seen <= 5 || (seen >= 10 && n == 1)
}

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let text = record.args().to_string();
        let seen = REPORTS_SEEN
            .lock()
            .map(|mut m| {
                let n = m.entry(text.clone()).or_default();
                *n += 1;
                *n
            })
            .unwrap_or(1);
        if !worth_printing(seen) {
            return;
        }
        if seen > 5 {
            eprintln!(
                "droptrace: kernel {} (seen {seen} times): {text}",
                record.level()
            );
        } else {
            eprintln!("droptrace: kernel {}: {text}", record.level());
        }
    }

    fn flush(&self) {}
}

/// The kernel's BTF as aya parses it, once per process: aya's tp_btf loader resolves the
/// tracepoint's type id in its own `Btf`, so it cannot use the inspector's (btf-rs, mapped).
/// Each parse of vmlinux BTF costs megabytes and milliseconds. Kept until `release_btf`.
fn aya_btf() -> Result<Arc<Btf>, String> {
    let mut cached = AYA_BTF.lock().unwrap_or_else(|e| e.into_inner());
    match &*cached {
        Some(parsed) => parsed.clone(),
        None => {
            let parsed = Btf::from_sys_fs()
                .map(Arc::new)
                .map_err(|e| format!("kernel BTF: {e}"));
            *cached = Some(parsed.clone());
            parsed
        }
    }
}

static AYA_BTF: std::sync::Mutex<Option<Result<Arc<Btf>, String>>> = std::sync::Mutex::new(None);

/// Frees aya's parse of the kernel BTF once every program is loaded (`droptrace record`,
/// which runs for months, keeps megabytes less), and gives the freed heap back to the system.
pub fn release_btf() {
    AYA_BTF.lock().unwrap_or_else(|e| e.into_inner()).take();
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Parses aya's BTF on a thread of its own, while the caller reads the kernel's offsets and
/// capabilities: it is needed only when the programs load.
pub fn parse_btf_early() {
    std::thread::spawn(|| {
        let _ = aya_btf();
    });
}

/// Loads and attaches the program written for this kernel's prototype of `hook`; returns
/// what that variant cannot see, if anything.
fn attach_tp_hook(
    ebpf: &mut Ebpf,
    hook: &TpHook,
    caps: &Capabilities,
) -> Result<Option<&'static str>, String> {
    let args = caps.prototypes.get(hook.tracepoint).cloned().flatten();
    let variant = hook.variant_for(args.as_deref())?;
    attach_tp_btf(ebpf, variant.program, hook.tracepoint)?;
    Ok(variant.lost)
}

/// A routing-decision tracepoint's classic form, the fallback of its tp_btf program.
struct ClassicRecord {
    hook: &'static TpHook,
    /// tracefs directory under events/, the program, and its record's index in FIB_RECORDS.
    event: &'static str,
    program: &'static str,
    index: u32,
}

const FIB_RECORD: ClassicRecord = ClassicRecord {
    hook: &FIB_LOOKUP,
    event: "fib/fib_table_lookup",
    program: "fib_table_lookup_tp",
    index: 0,
};

const FIB6_RECORD: ClassicRecord = ClassicRecord {
    hook: &FIB6_LOOKUP,
    event: "fib6/fib6_table_lookup",
    program: "fib6_table_lookup_tp",
    index: 1,
};

/// What the classic fallback cannot be sure of, for the start line's notes.
const CLASSIC_ROUTES: &str = "the routing decisions come from the classic fib tracepoints, whose records name no namespace: lookups are matched to the watched namespace by interface (ingress index and chosen device name), so another namespace with the same interfaces and the same container addresses would be counted too";

impl Tracer {
    /// The routing-decision program for this kernel: tp_btf, else the classic tracepoint.
    fn attach_route_hook(
        &mut self,
        classic: &ClassicRecord,
        choice: HookChoice,
    ) -> Result<Option<&'static str>, String> {
        let btf = match choice {
            HookChoice::Tracepoint => Err("not requested".to_string()),
            _ => attach_tp_hook(&mut self.ebpf, classic.hook, &self.caps),
        };
        let why = match btf {
            Ok(lost) => return Ok(lost),
            Err(why) if choice == HookChoice::TpBtf => return Err(why),
            Err(why) => why,
        };
        self.attach_route_record(classic)
            .map(|()| Some(CLASSIC_ROUTES))
            .map_err(|e| format!("tp_btf: {why}; tracepoint: {e}"))
    }

    fn attach_route_record(&mut self, classic: &ClassicRecord) -> Result<(), String> {
        let root = tracefs_root(&mut self.caps, &mut self.notes).map_err(|e| e.to_string())?;
        let path = root.join("events").join(classic.event).join("format");
        let format = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let record = tracefs::fib_record(&format)
            .ok_or_else(|| format!("{} is not a layout droptrace knows", path.display()))?;
        let map = self.map_mut("FIB_RECORDS").map_err(|e| e.to_string())?;
        let mut records: aya::maps::Array<_, tracer_common::FibRecord> =
            aya::maps::Array::try_from(map).map_err(|e| e.to_string())?;
        records
            .set(classic.index, &record, 0)
            .map_err(|e| e.to_string())?;
        let program: &mut TracePoint = self
            .ebpf
            .program_mut(classic.program)
            .ok_or_else(|| format!("program {} missing", classic.program))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())?;
        program.load().map_err(|e| error_chain(&e))?;
        let (category, name) = classic.event.split_once('/').expect("category/name");
        program
            .attach(category, name)
            .map(drop)
            .map_err(|e| error_chain(&e))
    }

    /// Where the teardown sites are (see WatchConfig::skip_teardown), once known.
    pub fn set_teardown_sites(&mut self, ranges: &[Option<(u64, u64)>]) -> Result<(), Error> {
        let mut sites = tracer_common::TeardownSites::default();
        for (i, range) in ranges
            .iter()
            .take(tracer_common::TEARDOWN_SITES)
            .enumerate()
        {
            if let Some((start, end)) = range {
                sites.ranges[2 * i] = *start;
                sites.ranges[2 * i + 1] = *end;
            }
        }
        let map_err = |e: aya::maps::MapError| Error::Load(format!("TEARDOWN: {e}"));
        let mut map: aya::maps::Array<_, tracer_common::TeardownSites> =
            aya::maps::Array::try_from(self.map_mut("TEARDOWN")?).map_err(map_err)?;
        map.set(0, &sites, 0).map_err(map_err)
    }

    /// The watched namespace's interfaces, for the classic fib records.
    fn fill_interfaces(&mut self, interfaces: &[(u32, String)]) -> Result<(), Error> {
        let names: Vec<([u8; 16], u32)> = interfaces
            .iter()
            .map(|(index, name)| {
                let mut raw = [0u8; 16];
                let n = name.len().min(15);
                raw[..n].copy_from_slice(&name.as_bytes()[..n]);
                (raw, *index)
            })
            .collect();
        let indexes: Vec<u32> = interfaces.iter().map(|(i, _)| *i).collect();
        self.fill_set("WATCH_IFINDEX", &indexes)?;
        self.fill_map("WATCH_IFNAME", &names)
    }
}

/// The sentence of a refusal worth a note: aya's error, or the verifier's last words (its
/// first lines describe the program, the refusal comes at the end).
fn refusal(why: &str) -> String {
    let mut lines = why.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default();
    let rest: Vec<&str> = lines.collect();
    // A helper this program type may not call on this kernel is the refusal's real sentence.
    let helper = rest
        .iter()
        .find(|l| l.contains("unknown func") || l.contains("helper call is not allowed"));
    let last = helper.or_else(|| {
        rest.iter()
            .rfind(|l| !l.starts_with("processed ") && !l.starts_with("verification time"))
    });
    match last {
        Some(last) if *last != first => format!("{first} … {last}"),
        _ => first.to_string(),
    }
}

/// What hooking `__icmp_send` itself (no tracepoint) sees differently.
const ICMP_BY_FUNCTION: &str = "ICMP errors are seen where the kernel starts to send them (__icmp_send: this kernel has no icmp_send tracepoint), so one its ICMP rate limit then suppresses still counts as an answer";

/// The ICMP errors the kernel sends: the tracepoint where the kernel has it, else fentry on
/// `__icmp_send`, else a kprobe there; each refusal is kept for the note if all fail.
fn attach_icmp(ebpf: &mut Ebpf, caps: &Capabilities) -> Result<Option<&'static str>, String> {
    let Need::TracepointOrFunction(tp, function) = ICMP_SIGNAL.need else {
        unreachable!("ICMP_SIGNAL needs a tracepoint or a function")
    };
    let mut refused = Vec::new();
    match attach_tp_hook(ebpf, tp, caps) {
        Ok(lost) => return Ok(lost),
        Err(why) => refused.push(format!("tracepoint: {why}")),
    }
    if caps.trampolines {
        match attach_fentry(ebpf, "icmp_send_fentry", function) {
            Ok(()) => return Ok(Some(ICMP_BY_FUNCTION)),
            Err(why) => refused.push(format!("fentry {function}: {why}")),
        }
    }
    if caps.kprobes {
        match attach_kprobe(ebpf, "icmp_send_kprobe", function) {
            Ok(()) => return Ok(Some(ICMP_BY_FUNCTION)),
            Err(why) => refused.push(format!("kprobe {function}: {why}")),
        }
    }
    Err(refused.join("; "))
}

/// Loads `program` (an FEntry or FExit) against kernel `function` and attaches it.
macro_rules! attach_trampoline {
    ($kind:ty, $ebpf:expr, $program:expr, $function:expr) => {{
        let btf = aya_btf()?;
        let program: &mut $kind = $ebpf
            .program_mut($program)
            .ok_or_else(|| format!("program {} missing", $program))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())?;
        program.load($function, &btf).map_err(|e| e.to_string())?;
        program.attach().map_err(|e| e.to_string())?;
        Ok(())
    }};
}

fn attach_fentry(ebpf: &mut Ebpf, program: &str, function: &str) -> Result<(), String> {
    attach_trampoline!(FEntry, ebpf, program, function)
}

fn attach_fexit(ebpf: &mut Ebpf, program: &str, function: &str) -> Result<(), String> {
    attach_trampoline!(FExit, ebpf, program, function)
}

fn attach_kprobe(ebpf: &mut Ebpf, program: &str, function: &str) -> Result<(), String> {
    let program: &mut KProbe = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    program.load().map_err(|e| e.to_string())?;
    program.attach(function, 0).map_err(|e| e.to_string())?;
    Ok(())
}

fn attach_tp_btf(ebpf: &mut Ebpf, program: &str, tracepoint: &str) -> Result<(), String> {
    let btf = aya_btf()?;
    let program: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    program.load(tracepoint, &btf).map_err(|e| e.to_string())?;
    program.attach().map_err(|e| e.to_string())?;
    Ok(())
}

/// Loads a cgroup program and links it to `cgroup`.
fn load_and_link_cgroup(
    program: &mut aya::programs::Program,
    cgroup: &std::fs::File,
) -> Result<(), String> {
    use aya::programs::Program;
    let attached = match program {
        Program::CgroupSysctl(p) => p
            .load()
            .and_then(|_| p.attach(cgroup, LINK_MODE).map(|_| ())),
        Program::CgroupSockopt(p) => p
            .load()
            .and_then(|_| p.attach(cgroup, LINK_MODE).map(|_| ())),
        _ => return Err("not a cgroup sysctl/sockopt program".into()),
    };
    attached.map_err(|e| error_chain(&e))
}

/// A cgroup bpf_link coexists with every other program on the cgroup (links are always
/// "multi"); BPF_LINK_CREATE rejects the BPF_F_ALLOW_MULTI flag, so the mode is Single (flags 0).
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

fn attach_tracepoint(ebpf: &mut Ebpf) -> Result<(), Error> {
    let program: &mut TracePoint = ebpf
        .program_mut("kfree_skb_tp")
        .ok_or_else(|| Error::Load("program kfree_skb_tp missing".into()))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| Error::Load(e.to_string()))?;
    program.load().map_err(|e| Error::Load(e.to_string()))?;
    program
        .attach("skb", "kfree_skb")
        .map_err(|e| Error::Attach(format!("skb:kfree_skb: {e}")))?;
    Ok(())
}

/// An error with its sources, on one line (aya's top-level messages omit the errno).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(&format!(": {s}"));
        cur = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tcp_send_reset_program_follows_the_kernels_prototype() {
        // `btf_trace_tcp_send_reset` as Debian's 6.1 and 6.12 kernels declare it (read with
        // KernelBtf::tracepoint_args in `cargo xtask vm` guests).
        let v6_1 = args(&["struct sock *", "struct sk_buff *"]);
        let v6_12 = args(&["struct sock *", "struct sk_buff *", "enum sk_rst_reason"]);
        assert_eq!(
            TCP_SEND_RESET.variant_for(Some(&v6_1)).unwrap().program,
            "tcp_send_reset_no_reason"
        );
        assert_eq!(
            TCP_SEND_RESET.variant_for(Some(&v6_12)).unwrap().program,
            "tcp_send_reset"
        );
    }

    #[test]
    fn a_missing_or_unknown_prototype_is_a_sentence_not_a_guess() {
        let none = ICMP_SEND.variant_for(None).unwrap_err();
        assert_eq!(none, "this kernel has no tracepoint icmp_send");
        // kfree_skb before drop reasons (5.10): (skb, location) only, its own program.
        let old = args(&["struct sk_buff *", "void *"]);
        assert_eq!(
            KFREE_SKB.variant_for(Some(&old)).unwrap().program,
            "kfree_skb_btf_no_reason"
        );
        let odd = args(&["struct sock *"]);
        let why = KFREE_SKB.variant_for(Some(&odd)).unwrap_err();
        assert!(why.contains("(struct sock *)"), "{why}");
    }

    #[test]
    fn every_hook_on_this_kernel_has_a_program_for_its_prototype() {
        let btf = crate::load::kernel::btf::KernelBtf::from_sys().expect("this kernel's BTF");
        for hook in TP_HOOKS {
            // icmp_send is a tracepoint since 6.14 only; what a kernel has must be loadable.
            let Some(args) = btf.tracepoint_args(hook.tracepoint) else {
                assert_ne!(hook.tracepoint, "kfree_skb", "no kfree_skb tracepoint");
                continue;
            };
            let args = Some(args);
            assert!(
                hook.variant_for(args.as_deref()).is_ok(),
                "{}: {:?}",
                hook.tracepoint,
                args
            );
        }
    }

    #[test]
    fn a_storm_of_one_kernel_report_prints_a_few_then_powers_of_ten() {
        let printed: Vec<u64> = (1..=2000).filter(|&n| worth_printing(n)).collect();
        assert_eq!(printed, [1, 2, 3, 4, 5, 10, 100, 1000]);
    }

    #[test]
    fn a_verifier_refusal_is_reported_by_its_last_words() {
        let log = "the BPF_PROG_LOAD syscall failed. Verifier output: reg type unsupported for arg#0 function tcp_send_reset#30\n0: R1=ctx() R10=fp0\nfunc 'tcp_send_reset' doesn't have 3-th argument\nprocessed 3 insns";
        assert_eq!(
            refusal(log),
            "the BPF_PROG_LOAD syscall failed. Verifier output: reg type unsupported for arg#0 function tcp_send_reset#30 … func 'tcp_send_reset' doesn't have 3-th argument"
        );
        assert_eq!(refusal("one line"), "one line");
        // The shape of a helper refused for the program type (a cgroup program on 5.10).
        let helper = "the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). Verifier output: ; #[cgroup_sysctl]\n0: (bf) r6 = r1\n12: (85) call bpf_get_current_pid_tgid#14\nunknown func bpf_get_current_pid_tgid#14\nprocessed 13 insns\n: Invalid argument (os error 22)";
        assert_eq!(
            refusal(helper),
            "the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). Verifier output: ; #[cgroup_sysctl] … unknown func bpf_get_current_pid_tgid#14"
        );
    }

    fn caps_of(btf: &crate::load::kernel::btf::KernelBtf) -> Capabilities {
        let names: Vec<&'static str> = TP_HOOKS.iter().map(|h| h.tracepoint).collect();
        Capabilities::probe(btf, &names)
    }

    #[test]
    fn on_this_kernel_every_optional_hook_has_what_it_needs() {
        let btf = crate::load::kernel::btf::KernelBtf::from_sys().expect("this kernel's BTF");
        let caps = caps_of(&btf);
        for hook in OPTIONAL_HOOKS {
            assert_eq!(hook.missing(&caps), None, "{}", hook.name);
        }
    }

    #[test]
    fn a_kernel_without_a_capability_gets_each_hooks_own_sentence() {
        // A kernel without netfilter links, the icmp_send tracepoint, BPF trampolines or
        // kprobes; and a host with no cgroup v2 mounted.
        let btf = crate::load::kernel::btf::KernelBtf::from_sys().expect("this kernel's BTF");
        let mut caps = caps_of(&btf);
        caps.netfilter_links = false;
        caps.trampolines = false;
        caps.kprobes = false;
        caps.cgroup2_root = None;
        caps.prototypes.insert("icmp_send", None);
        let notes: Vec<String> = OPTIONAL_HOOKS
            .iter()
            .filter_map(|h| h.missing(&caps).map(|why| h.unavailable(&why)))
            .collect();
        assert_eq!(
            notes,
            [
                "icmp_send (tracepoint, fentry or kprobe) unavailable (this kernel has no tracepoint icmp_send, and neither fentry nor kprobes can reach __icmp_send): a REJECT cannot be told from a DROP by the ICMP error it sends (rule names still tell)",
                "netfilter hook probes unavailable (netfilter links need Linux >= 6.4 and this kernel has neither them nor BPF trampolines for fentry on nf_hook_slow): the hook of a NETFILTER_DROP is inferred from conntrack and the destination address instead",
                "cgroup/sysctl unavailable (no cgroup v2 hierarchy is mounted: mount -t cgroup2 none /sys/fs/cgroup/unified): who changed forwarding sysctls is not recorded",
                "cgroup/setsockopt unavailable (no cgroup v2 hierarchy is mounted: mount -t cgroup2 none /sys/fs/cgroup/unified): iptables-legacy changes are not attributed",
            ]
        );
        caps.cgroup2_root = Some("/sys/fs/cgroup".into());
        caps.cgroup_links = false;
        assert_eq!(
            SYSCTL_WRITES.missing(&caps).as_deref(),
            Some("cgroup bpf_links need Linux >= 5.7")
        );
    }
}
