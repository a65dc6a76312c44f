//! `droptrace watch`: discover → load → observe → report, until Ctrl-C/SIGTERM or --duration.
mod changes;
mod observer;
mod routes;

use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::Notify,
};
use tracer_common::{AF_INET, AF_INET6, AddrPort, WatchConfig};

use crate::{
    attribute::verdict::{Book, VerdictRecord},
    discover::{
        self, Engine, PublishedPort,
        netns::{IfNames, Netns},
    },
    error::Error,
    load::{
        ebpf::{self, HookChoice, LoadOptions, Tracer},
        kernel::{
            self,
            btf::{DropReasons, KernelBtf},
            inspect::Capabilities,
            kallsyms::{self, LiveSymbols},
        },
    },
    observe::{
        changes::{ChangeRecord, NftMonitor, Resolver},
        correlate::Answers,
        event::{self, Clock, Namer},
        payload::Payloads,
        rtnl::RtnlMonitor,
        state::{self, Snapshot},
        tracerules::{self, RuleTracer, TRACE_TABLE},
    },
    report::{
        evidence::{Bundle, PcapSink},
        metrics::{self, Exporter},
        output::{Format, Printer, StartRecord, SummaryRecord},
        sink::{MetricsSink, Progress, Sink, Sinks},
    },
};
use changes::ChangeLog;
use observer::Observer;

/// What `watch` was asked to do (already validated by the CLI).
#[derive(Clone, Debug, Default)]
pub struct WatchRequest {
    pub ports: Vec<u16>,
    pub addrs: Vec<SocketAddr>,
    pub netns: Option<String>,
    pub duration: Option<Duration>,
    pub json: bool,
    pub include_teardown: bool,
    /// One event per drop: no in-kernel aggregation (see WatchConfig::flow_burst).
    pub every_drop: bool,
    pub ring_bytes: Option<u32>,
    pub hook: HookChoice,
    pub trace_rules: bool,
    /// Print the kernel side's anomaly reports (aya-log) on stderr.
    pub kernel_log: bool,
    /// Leave the routing and forwarding hooks out (to measure what they cost).
    pub no_forwarding_hooks: bool,
    /// Which routing-decision programs (`Tracepoint` forces the classic fallback).
    pub routing_hook: HookChoice,
    /// Container engine socket (a path or a `unix://` URL) to discover published ports from
    /// (default: $DOCKER_HOST, $CONTAINER_HOST, Docker's socket, Podman's; when no --port is
    /// given).
    pub docker_host: Option<String>,
    /// Watch only this container's published ports.
    pub container: Option<String>,
    /// Notified once the probes are attached and the start line is out (for the demo).
    pub ready: Option<Arc<Notify>>,
    /// Ends the run like Ctrl-C when notified (for the demo).
    pub stop: Option<Arc<Notify>>,
    /// No human start banner on stderr (the demo prints its own).
    pub quiet: bool,
    /// Serve Prometheus metrics on this address.
    pub metrics: Option<SocketAddr>,
    /// Write the dropped packets' headers here as pcapng.
    pub pcap: Option<PathBuf>,
    /// Bytes of each captured packet to keep, payload included (None: headers only).
    pub snaplen: Option<u32>,
    /// Write an evidence bundle into this directory.
    pub evidence: Option<PathBuf>,
    /// Drop the capabilities no longer needed once attached (the CLI does; the demo, which
    /// keeps building namespaces in the same process, does not).
    pub drop_privileges: bool,
    /// The recorder's journal: None reads the default one when it exists.
    pub journal: Option<PathBuf>,
}

/// Asks the container engine for published ports when the user gave none, or named a socket
/// or a container. A missing engine is an error only when the user asked for it.
async fn resolve_engine(req: &WatchRequest) -> Result<(Option<Engine>, Vec<PublishedPort>), Error> {
    let asked = req.docker_host.is_some() || req.container.is_some();
    if !asked && !(req.ports.is_empty() && req.addrs.is_empty()) {
        return Ok((None, Vec::new()));
    }
    match discover::find_engine(req.docker_host.as_deref(), asked).await? {
        Ok((engine, ports)) => Ok((Some(engine), ports)),
        // No engine and no --port: fall back to the DNAT rules of the namespace.
        Err(_) => Ok((None, Vec::new())),
    }
}

/// What a run produced, for callers that act on it (the demo).
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub summary: SummaryRecord,
    /// The closing verdicts.
    pub verdicts: Vec<VerdictRecord>,
    pub changes: Vec<ChangeRecord>,
    /// Precision lost and host changes made, as in the start line.
    pub notes: Vec<String>,
}

pub fn addr_port(sa: &SocketAddr) -> AddrPort {
    AddrPort {
        addr: tracer_common::addr_bytes(sa.ip()),
        family: if sa.is_ipv4() { AF_INET } else { AF_INET6 },
        _pad: 0,
        port: sa.port(),
    }
}

/// Events each flow sends per CPU per second before the kernel only counts it: enough for
/// the first verdict and a few examples, few enough that a storm costs almost nothing.
const FLOW_BURST: u32 = 5;

/// The event ring with `--every-drop`: at this machine's flood rate (150k drops/s of
/// 112-byte events) about a second of a storm, which covers a verdict's diagnosis (state
/// read, waiting for the nftables monitor) while the ring is not drained.
const EVERY_DROP_RING: u32 = 16 << 20;

/// How often the loop ticks when no event wakes it.
const DRAIN_TICK: Duration = Duration::from_millis(50);

/// Handles every event in the ring, then flushes the sinks once; how many there were.
async fn drain(
    rb: &mut RingBuf<MapData>,
    obs: &mut Observer<'_>,
    tracer: &Tracer,
) -> std::io::Result<usize> {
    // Payload records precede their events: read them first, so every event finds its own.
    if let Some(p) = obs.payloads.as_mut() {
        p.drain();
    }
    let mut n = 0;
    while let Some(item) = rb.next() {
        n += 1;
        if let Some(ev) = event::decode(&item) {
            obs.handle(&ev, tracer).await?;
        }
    }
    obs.sinks.flush()?;
    Ok(n)
}

/// In a storm (a drain of at least STORM_BATCH events), the loop lets the ring fill for
/// STORM_WAIT before the next drain: the kernel wakes the reader whenever it has caught up,
/// which at 150k events/s was a sleep and a wakeup every few events, half the CPU spent.
const STORM_BATCH: usize = 64;
const STORM_WAIT: Duration = Duration::from_millis(2);

/// What the pcap keeps of each dropped packet, said in the start line (and so in the
/// bundle's report): no payload unless asked.
fn capture_note(req: &WatchRequest) -> Option<String> {
    if req.pcap.is_none() && req.evidence.is_none() {
        return None;
    }
    Some(match req.snaplen {
        None => "packets captured: each dropped packet's headers only (IP through TCP/UDP/ICMP), no payload byte; --snaplen N keeps more".into(),
        Some(n) => format!(
            "packets captured: up to {n} bytes of each dropped packet from its IP header, payload included (--snaplen): the files can hold what the packets carried"
        ),
    })
}

/// How to run a command in the watched namespace, for the fixes droptrace prints.
fn exec_prefix(req: &WatchRequest, ns: &Netns) -> String {
    match &req.netns {
        None => String::new(),
        Some(spec) if !spec.contains('/') => format!("ip netns exec {spec} "),
        Some(_) => format!("nsenter --net={} ", ns.path.display()),
    }
}

/// The translated side of each watched port (container address and port from its DNAT, or
/// from Docker's filter rule), so the kernel filter also matches packets after DNAT.
fn translated_tuples(snap: &Snapshot, ports: &[u16]) -> Vec<AddrPort> {
    let mut out = Vec::new();
    for &port in ports {
        for dnat in snap.dnats_for(port) {
            if let Some((addr, to_port)) = dnat.to {
                out.push(addr_port(&SocketAddr::new(addr, to_port.unwrap_or(port))));
            }
        }
        for hint in snap.published_hints(port) {
            out.push(addr_port(&SocketAddr::new(
                IpAddr::V4(hint.container),
                hint.port,
            )));
        }
    }
    out.sort_by_key(|a| (a.addr, a.port));
    out.dedup();
    out
}

/// The ports to watch (asked for, or every published one) and the address/port pairs the
/// kernel filter must also match (the translated side of each, so packets after DNAT count).
fn watched_ports(
    req: &WatchRequest,
    published: &[PublishedPort],
    before: &Snapshot,
) -> Result<(Vec<u16>, Vec<AddrPort>), Error> {
    let mut ports = req.ports.clone();
    if req.ports.is_empty() {
        ports.extend(published.iter().map(|p| p.host_port));
    }
    ports.sort_unstable();
    ports.dedup();
    if ports.is_empty() && req.addrs.is_empty() {
        return Err(Error::NoPorts);
    }
    let mut addr_ports: Vec<AddrPort> = req.addrs.iter().map(addr_port).collect();
    addr_ports.extend(translated_tuples(before, &ports));
    for p in published.iter().filter(|p| ports.contains(&p.host_port)) {
        if let (Some(ip), Some(port)) = (p.container_ip, p.container_port) {
            addr_ports.push(addr_port(&SocketAddr::new(ip, port)));
        }
    }
    Ok((ports, addr_ports))
}

/// `--trace-rules`' tracer, or the note of a table a killed run left (`removed_leftover`,
/// removed while the state was read); with its notes.
fn rule_tracer(
    req: &WatchRequest,
    netns: &Netns,
    removed_leftover: bool,
) -> (Option<RuleTracer>, Vec<String>) {
    if !req.trace_rules {
        let removed = removed_leftover.then(|| {
            format!(
                "removed nftables table inet {TRACE_TABLE} left by an earlier droptrace run that was killed"
            )
        });
        return (None, removed.into_iter().collect());
    }
    match RuleTracer::start(netns, &req.ports) {
        Ok(rt) => (
            Some(rt),
            vec![format!(
                "--trace-rules: added nftables table inet {TRACE_TABLE} (nftrace on the watched ports); it is removed on exit"
            )],
        ),
        Err(why) => (
            None,
            vec![format!(
                "--trace-rules unavailable: {why}; rule counters name the rule instead"
            )],
        ),
    }
}

/// Whatever ends the run (Ctrl-C, SIGTERM, --duration, the demo) sends `true` on `stop`,
/// which the loop and every wait inside it watch.
fn spawn_stopper(
    (mut sigint, mut sigterm): (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
    req: &WatchRequest,
    stop: tokio::sync::watch::Sender<bool>,
) -> tokio::task::JoinHandle<()> {
    let deadline = req.duration.map(|d| tokio::time::Instant::now() + d);
    let demo_stop = req.stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
            _ = async {
                match demo_stop {
                    Some(stop) => stop.notified().await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        let _ = stop.send(true);
    })
}

/// The loop: drains the change ring and the event ring on their wakeups and on a short
/// tick, until `stop` turns true; then what the rings still hold, which belongs to this run.
async fn observe(
    obs: &mut Observer<'_>,
    tracer: &Tracer,
    (ring, changes_ring): (&mut Ring, &mut Ring),
    mut stop_seen: tokio::sync::watch::Receiver<bool>,
    started: Instant,
) -> Result<(), Error> {
    let io_err = |e: std::io::Error| Error::Io(format!("writing output: {e}"));
    loop {
        tokio::select! {
            _ = stop_seen.wait_for(|stop| *stop) => break,
            guard = changes_ring.readable_mut() => {
                let mut guard = guard.map_err(|e| Error::Io(format!("polling the change ring: {e}")))?;
                obs.drain_changes(guard.get_inner_mut(), tracer).await.map_err(io_err)?;
                guard.clear_ready();
            }
            _ = tokio::time::sleep(Duration::from_millis(200)), if obs.changes.polled() => {
                obs.drain_changes(changes_ring.get_mut(), tracer).await.map_err(io_err)?;
            }
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(|e| Error::Io(format!("polling the event ring: {e}")))?;
                obs.drain_changes(changes_ring.get_mut(), tracer).await.map_err(io_err)?;
                let n = drain(guard.get_inner_mut(), obs, tracer).await.map_err(io_err)?;
                guard.clear_ready();
                // A storm keeps this branch ready, and the tick below never fires then.
                obs.tick(tracer, started, false).map_err(io_err)?;
                obs.check_routes(tracer).await.map_err(io_err)?;
                if n >= STORM_BATCH {
                    tokio::time::sleep(STORM_WAIT).await;
                }
            }
            // The tick: the sinks' second (flow lines, progress, metrics), and a drain that
            // does not depend on a wakeup.
            _ = tokio::time::sleep(DRAIN_TICK) => {
                drain(ring.get_mut(), obs, tracer).await.map_err(io_err)?;
                obs.tick(tracer, started, false).map_err(io_err)?;
                obs.check_routes(tracer).await.map_err(io_err)?;
            }
        }
    }
    // Events already in the ring when we stopped still belong to this run.
    obs.drain_changes(changes_ring.get_mut(), tracer)
        .await
        .map_err(io_err)?;
    drain(ring.get_mut(), obs, tracer).await.map_err(io_err)?;
    Ok(())
}

/// What discovery found: where to watch and what.
struct Found {
    engine: Option<Engine>,
    published: Vec<PublishedPort>,
    netns: Arc<Netns>,
    /// The namespace's state before any drop of this run, so rule counters that move later
    /// name the rule.
    before: Snapshot,
    ports: Vec<u16>,
    addr_ports: Vec<AddrPort>,
    monitor: Option<NftMonitor>,
    monitor_note: Option<String>,
    rtnl: Option<RtnlMonitor>,
    /// A table a killed `--trace-rules` run left was removed.
    removed_leftover: bool,
}

/// Discovery's first half: the engine's published ports and the namespace; its state is
/// read on a blocking thread meanwhile (the programs load in the same time).
struct Discovering {
    engine: Option<Engine>,
    published: Vec<PublishedPort>,
    netns: Arc<Netns>,
    monitor: Option<NftMonitor>,
    monitor_note: Option<String>,
    rtnl: Option<RtnlMonitor>,
    capture: tokio::task::JoinHandle<(Snapshot, bool)>,
}

/// Discover: the engine's published ports, the namespace, and its state (being read).
async fn discover(req: &WatchRequest) -> Result<Discovering, Error> {
    let (engine, published) = resolve_engine(req).await?;
    let netns = Arc::new(discover::watched_netns(
        req.netns.as_deref(),
        engine.as_ref(),
    )?);
    // Started first: `nft monitor` needs a moment to subscribe, and every ruleset change
    // after the start line must be seen.
    let (monitor, monitor_note) = match NftMonitor::start(&netns) {
        Ok(m) => (Some(m), None),
        Err(why) => (None, Some(why)),
    };
    // Subscribed before the start line too; a namespace it cannot open only loses the
    // authors of address and route changes, which the verdict's note then points to.
    let (rtnl, rtnl_note) = match RtnlMonitor::start(&netns) {
        Ok(m) => (Some(m), None),
        Err(why) => (None, Some(why)),
    };
    let monitor_note = match (monitor_note, rtnl_note) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    };
    let capture = {
        let ns = Arc::clone(&netns);
        let tidy = !req.trace_rules;
        tokio::task::spawn_blocking(move || {
            let removed = tidy && tracerules::remove_leftover(&ns);
            (state::capture(&ns), removed)
        })
    };
    Ok(Discovering {
        engine,
        published,
        netns,
        monitor,
        monitor_note,
        rtnl,
        capture,
    })
}

/// Discovery's second half, once the state is read: the ports to watch.
async fn watched(req: &WatchRequest, d: Discovering) -> Result<Found, Error> {
    let (before, removed_leftover) = d
        .capture
        .await
        .map_err(|e| Error::Io(format!("reading the namespace's state: {e}")))?;
    let mut published = d.published;
    if d.engine.is_none() && req.ports.is_empty() && req.addrs.is_empty() {
        published = discover::from_rules(&before);
    }
    if let Some(wanted) = &req.container {
        published = discover::select_container(published, wanted)?;
    }
    let (ports, addr_ports) = watched_ports(req, &published, &before)?;
    Ok(Found {
        engine: d.engine,
        published,
        netns: d.netns,
        before,
        ports,
        addr_ports,
        monitor: d.monitor,
        monitor_note: d.monitor_note,
        rtnl: d.rtnl,
        removed_leftover,
    })
}

/// A ring the event loop polls.
type Ring = AsyncFd<RingBuf<MapData>>;

fn pollable(ring: RingBuf<MapData>, what: &str) -> Result<Ring, Error> {
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, until it is dropped,
    // which only happens when the AsyncFd itself drops.
    unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::Io(format!("polling the {what}: {e}")))
}

/// What hidden kernel addresses cost, for the start line.
const HIDDEN_ADDRESSES: &str = "/proc/kallsyms shows no kernel addresses (droptrace lacks CAP_SYSLOG, or kernel.kptr_restrict is 2): drop locations are printed as raw addresses, and late FINs and socket-close purges are reported as drops";

/// What a kernel without drop reasons loses, for the start line.
const NO_REASONS: &str = "this kernel reports no drop reasons (before Linux 5.17): each drop's reason is inferred from the kernel function that freed it (`inferred_reason`; `reason` is null), a function droptrace does not know is reported by its name only, and the exact counters cannot be split by reason";

/// The kernel's teardown sites (tracer_common::TEARDOWN_SITES): TCP's receive functions
/// (their late FINs and RSTs), then the functions a closing socket's queues are purged in
/// (where kernels without the QUEUE_PURGE reason free with none; measured on 6.1).
const TEARDOWN_SITES: [&str; tracer_common::TEARDOWN_SITES] = [
    "tcp_v4_rcv",
    "tcp_v6_rcv",
    "sk_stream_kill_queues",
    "inet_sock_destruct",
    "skb_queue_purge",
    "skb_rbtree_purge",
];

/// Arms the kernel's filter of teardown frees (see WatchConfig::skip_teardown), unless they
/// are asked for; its sites follow once /proc/kallsyms is read (`teardown_sites`).
fn teardown_filter(
    mut config: WatchConfig,
    reasons: &DropReasons,
    include_teardown: bool,
) -> WatchConfig {
    let reason = if reasons.reported() {
        reasons.value("NOT_SPECIFIED")
    } else {
        Some(tracer_common::REASON_UNREPORTED)
    };
    if let (Some(reason), false) = (reason, include_teardown) {
        config.skip_teardown = 1;
        config.teardown_reason = reason;
    }
    config
}

/// Functions drops of published ports usually come from, besides the teardown sites: placed
/// in kernel text while the programs load, so a first verdict names where its packet died
/// without a scan of /proc/kallsyms (≈30 ms) on its way.
const DROP_SITES: [&str; 12] = [
    "nf_hook_slow",
    "ip_error",
    "ip_forward",
    "ip6_forward",
    "__udp4_lib_rcv",
    "__udp6_lib_rcv",
    "ip_rcv_finish_core",
    "ip_rcv_core",
    "ip6_rcv_core",
    "ip_local_deliver_finish",
    "icmp_rcv",
    "tcp_rcv_state_process",
];

/// How long the start may wait for the kernel sites: reading /proc/kallsyms takes about a
/// second in an emulated guest, and runs while the programs load.
const KERNEL_SITES_WAIT: Duration = Duration::from_secs(10);

type Places = Vec<Option<(String, (u64, u64))>>;

/// Reads where the teardown sites, then the drop sites, are, on a thread of its own started
/// before the programs load.
fn kernel_sites() -> std::sync::mpsc::Receiver<Places> {
    let (tx, rx) = std::sync::mpsc::channel();
    let names: Vec<&str> = TEARDOWN_SITES.iter().chain(&DROP_SITES).copied().collect();
    std::thread::spawn(move || tx.send(kallsyms::function_places(&names)));
    rx
}

/// What loading made: the kernel side attached, its two rings, what the kernel offers, the
/// drop reasons' names and the functions already placed, for the observer.
struct Loaded {
    tracer: Tracer,
    /// `--snaplen`'s payload buffers, when asked for and the drop hook can fill them.
    payloads: Option<Payloads>,
    ring: Ring,
    changes_ring: Ring,
    caps: Capabilities,
    reasons: DropReasons,
    symbols: LiveSymbols,
}

/// Load: the kernel side for this kernel (its capabilities inspected once), attached, with
/// its two rings.
fn load(req: &WatchRequest, netns: &Netns) -> Result<Loaded, Error> {
    let sites = kernel_sites();
    ebpf::parse_btf_early();
    let btf = KernelBtf::from_sys()?;
    let reasons = btf.drop_reasons();
    let tracepoints: Vec<&'static str> = ebpf::TP_HOOKS.iter().map(|h| h.tracepoint).collect();
    let caps = Capabilities::probe(&btf, &tracepoints);
    let opts = LoadOptions {
        offsets: btf.kernel_offsets()?,
        config: teardown_filter(
            WatchConfig {
                netns: netns.inode,
                capture_headers: u32::from(req.pcap.is_some() || req.evidence.is_some()),
                snaplen: req.snaplen.unwrap_or(0),
                flow_burst: if req.every_drop { 0 } else { FLOW_BURST },
                ..WatchConfig::ZERO
            },
            &reasons,
            req.include_teardown,
        ),
        ignored_reasons: reasons.ignored(req.include_teardown),
        ring_bytes: req.ring_bytes.or(req.every_drop.then_some(EVERY_DROP_RING)),
        changes_ring_bytes: None,
        hook: req.hook,
        caps: caps.clone(),
        kernel_log: req.kernel_log,
        forwarding_hooks: !req.no_forwarding_hooks,
        route_hook: req.routing_hook,
        interfaces: netns.interfaces(),
    };
    drop(btf);
    let mut tracer = Tracer::load(&opts)?;
    if !reasons.reported() {
        tracer.notes.push(NO_REASONS.to_string());
    }
    if req.kernel_log {
        tracer.forward_kernel_log()?;
    }
    let places = sites.recv_timeout(KERNEL_SITES_WAIT).ok();
    match &places {
        _ if req.include_teardown => {}
        Some(places) => {
            let ranges: Vec<Option<(u64, u64)>> = places[..TEARDOWN_SITES.len()]
                .iter()
                .map(|p| p.as_ref().map(|(_, range)| *range))
                .collect();
            tracer.set_teardown_sites(&ranges)?;
        }
        None => tracer.notes.push(
            "reading /proc/kallsyms took too long: late FINs and socket-close purges are reported as drops".into(),
        ),
    }
    if places
        .as_ref()
        .is_some_and(|p| p.iter().all(Option::is_none))
    {
        tracer.notes.push(HIDDEN_ADDRESSES.to_string());
    }
    let symbols = LiveSymbols::with_known(places.into_iter().flatten().flatten());
    tracer.attach_hook_probes(netns);
    tracer.attach_change_probes();
    let changes_ring = pollable(tracer.take_changes()?, "change ring")?;
    let ring = pollable(tracer.take_ring()?, "event ring")?;
    let payloads = req.snaplen.and_then(|n| {
        match tracer.take_payloads(n).and_then(|m| Payloads::open(m, n)) {
            Ok(p) => Some(p),
            Err(note) => {
                tracer.notes.push(note);
                None
            }
        }
    });
    Ok(Loaded {
        tracer,
        payloads,
        ring,
        changes_ring,
        caps,
        reasons,
        symbols,
    })
}

/// Report: the outputs asked for, in the order each record reaches them (the progress line
/// first, so the summary starts on a line of its own).
fn sinks<'w>(
    req: &WatchRequest,
    out: impl Write + 'w,
    exporter: Option<Exporter>,
) -> Result<Sinks<'w>, Error> {
    let mut sinks = Sinks::default();
    if !req.json && !req.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        sinks.push(Progress::default());
    }
    let format = if req.json {
        Format::Json
    } else {
        Format::Human
    };
    // Buffered: in a storm a write per line would cost more than everything else.
    sinks.push(Printer::new(
        std::io::BufWriter::with_capacity(1 << 16, out),
        format,
    ));
    if let Some(path) = &req.pcap {
        sinks.push(PcapSink::create(path, req.snaplen)?);
    }
    if let Some(dir) = &req.evidence {
        sinks.push(Bundle::create(dir, req.snaplen)?);
    }
    if let Some(exporter) = exporter {
        sinks.push(MetricsSink(exporter));
    }
    Ok(sinks)
}

/// `--metrics`: the listener bound before anything is loaded, so a taken port fails fast.
async fn serve_metrics(req: &WatchRequest) -> Result<Option<Exporter>, Error> {
    let Some(addr) = req.metrics else {
        return Ok(None);
    };
    let listener = metrics::bind(addr).await?;
    let exporter = Exporter::default();
    tokio::spawn(metrics::serve(listener, exporter.clone()));
    Ok(Some(exporter))
}

/// The start line: what is watched, how, and what precision is lost.
fn start_record(
    req: &WatchRequest,
    found: &Found,
    tracer: &Tracer,
    notes: &[String],
) -> StartRecord {
    StartRecord {
        kind: "start",
        time: event::rfc3339(chrono::Utc::now()),
        version: env!("CARGO_PKG_VERSION"),
        kernel: kernel::release(),
        netns: found.netns.inode,
        netns_name: found.netns.name.clone(),
        ports: found.ports.clone(),
        addrs: req.addrs.iter().map(|a| a.to_string()).collect(),
        published: found.published.clone(),
        engine: found.engine.clone(),
        hook: tracer.hook.name(),
        signals: tracer.signals.clone(),
        notes: notes.to_vec(),
    }
}

/// `droptrace watch`: discover → load → announce → observe → finish. The resources of a run
/// (rings, probes, monitor, sinks) are made and dropped here, in that order.
pub async fn run<W: Write>(req: WatchRequest, out: W) -> Result<RunOutcome, Error> {
    kernel::check_privileges()?;
    // Before anything is loaded or changed: a Ctrl-C from here on ends the run cleanly
    // (summary printed, --trace-rules' table removed) instead of killing the process.
    let sigint = signal(SignalKind::interrupt()).map_err(|e| Error::Io(e.to_string()))?;
    let sigterm = signal(SignalKind::terminate()).map_err(|e| Error::Io(e.to_string()))?;
    let exporter = serve_metrics(&req).await?;
    let discovering = discover(&req).await?;
    let Loaded {
        mut tracer,
        payloads,
        mut ring,
        mut changes_ring,
        caps,
        reasons,
        symbols,
    } = load(&req, &discovering.netns)?;
    let mut found = watched(&req, discovering).await?;
    tracer.watch(&found.ports, &found.addr_ports, &found.before.local_addrs)?;
    let (rule_tracer, trace_notes) = rule_tracer(&req, &found.netns, found.removed_leftover);
    let mut notes = tracer.notes.clone();
    notes.extend(capture_note(&req));
    notes.extend(trace_notes);
    notes.extend(found.monitor_note.take());
    notes.extend(found.before.problems.iter().cloned());
    if let Some(e) = found.engine.as_ref().filter(|e| e.rootless) {
        notes.push(crate::report::words::rootless_note(&e.name, e.uid));
    }
    let start = start_record(&req, &found, &tracer, &notes);

    let (stop_tx, stopping) = tokio::sync::watch::channel(false);
    let mut obs = Observer {
        namer: Namer {
            clock: Clock::now(),
            reasons,
            symbols,
            ifnames: IfNames::new(&found.netns),
        },
        sinks: sinks(&req, out, exporter)?,
        exec_prefix: exec_prefix(&req, &found.netns),
        ports: found.ports,
        published: found.published,
        rootless: found.engine.as_ref().is_some_and(|e| e.rootless),
        before: found.before,
        latest: None,
        answers: Answers::default(),
        routing_answers: Answers::default(),
        book: Book::default(),
        rule_tracer,
        changes: ChangeLog::new(
            Resolver::new(caps.cgroup2_root.clone()),
            (found.monitor, found.rtnl),
            crate::journal::locate(req.journal.as_deref()),
        ),
        bundle_dir: req.evidence.clone(),
        payloads,
        first_verdict_seen: false,
        notes: notes.clone(),
        signals: tracer.signals.clone(),
        answered: Default::default(),
        delivered: 0,
        drops_seen: 0,
        ticked: Instant::now(),
        routes_checked: Instant::now(),
        flows: observer::FlowTally::new(!req.every_drop),
        fast: observer::FastLines::default(),
        netns: found.netns,
        stopping: stopping.clone(),
    };
    obs.fast = observer::FastLines::new(obs.sinks.take_templates());
    // Capabilities go before the start line: whoever reads "attached" may check them.
    if req.drop_privileges {
        kernel::drop_unneeded_capabilities();
    }
    obs.sinks
        .start(&start)
        .map_err(|e| Error::Io(format!("writing output: {e}")))?;
    obs.bundle_snapshot("start").await;
    if let Some(ready) = &req.ready {
        ready.notify_one();
    }

    let started = Instant::now();
    let stopper = spawn_stopper((sigint, sigterm), &req, stop_tx);
    let rings = (&mut ring, &mut changes_ring);
    observe(&mut obs, &tracer, rings, stopping, started).await?;
    // The demo runs watch again in the same process: no listener of this run stays behind.
    stopper.abort();
    let closing = obs.finish(&tracer, started).await;
    drop(tracer);
    let closing = closing?;
    Ok(RunOutcome {
        summary: closing.summary,
        verdicts: closing.verdicts,
        changes: closing.changes,
        notes,
    })
}
