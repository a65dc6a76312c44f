//! `droptrace watch`: discover → load → observe → report, until Ctrl-C/SIGTERM or --duration.
use std::{
    collections::BTreeMap,
    io::Write,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};
use tracer_common::{AF_INET, AF_INET6, AddrPort, WatchConfig};

use crate::{
    error::Error,
    event::{self, Clock, Namer, Observed},
    kernel::{self, btf::KernelBtf, kallsyms::Symbols},
    loader::{HookChoice, LoadOptions, Totals, Tracer},
    netns::{IfNames, Netns},
    output::{CounterRecord, Format, Printer, StartRecord, SummaryRecord},
};

/// What `watch` was asked to do (already validated by the CLI).
#[derive(Clone, Debug, Default)]
pub struct WatchRequest {
    pub ports: Vec<u16>,
    pub addrs: Vec<SocketAddr>,
    pub netns: Option<String>,
    pub duration: Option<Duration>,
    pub json: bool,
    pub include_teardown: bool,
    pub ring_bytes: Option<u32>,
    pub hook: HookChoice,
}

pub fn addr_port(sa: &SocketAddr) -> AddrPort {
    let mut key = AddrPort {
        port: sa.port(),
        ..Default::default()
    };
    match sa.ip() {
        IpAddr::V4(v4) => {
            key.family = AF_INET;
            key.addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            key.family = AF_INET6;
            key.addr = v6.octets();
        }
    }
    key
}

pub async fn run<W: Write>(req: WatchRequest, out: W) -> Result<SummaryRecord, Error> {
    if req.ports.is_empty() && req.addrs.is_empty() {
        return Err(Error::NoPorts);
    }
    kernel::check_privileges()?;
    let netns = match &req.netns {
        Some(spec) => Netns::resolve(spec)?,
        None => Netns::current()?,
    };
    let btf = KernelBtf::from_sys()?;
    let offsets = btf.kernel_offsets()?;
    let reasons = btf.drop_reasons()?;
    drop(btf);

    let opts = LoadOptions {
        offsets,
        config: WatchConfig {
            netns: netns.inode,
            match_all: 0,
        },
        ports: req.ports.clone(),
        addr_ports: req.addrs.iter().map(addr_port).collect(),
        ignored_reasons: reasons.ignored(req.include_teardown),
        ring_bytes: req.ring_bytes,
        hook: req.hook,
    };
    let mut tracer = Tracer::load(&opts)?;
    let ring = tracer.take_ring()?;
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, until it is dropped,
    // which only happens when the AsyncFd itself drops.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::Io(format!("polling the event ring: {e}")))?;

    let clock = Clock::now();
    let mut namer = Namer {
        clock,
        reasons,
        symbols: Symbols::from_proc(),
        ifnames: IfNames::new(&netns),
    };
    let format = if req.json {
        Format::Json
    } else {
        Format::Human
    };
    let mut printer = Printer::new(out, format);
    let io_err = |e: std::io::Error| Error::Io(format!("writing output: {e}"));
    let now = || event::rfc3339(chrono::Utc::now());

    printer
        .start(&StartRecord {
            kind: "start",
            time: now(),
            version: env!("CARGO_PKG_VERSION"),
            kernel: kernel::release(),
            netns: netns.inode,
            netns_name: netns.name.clone(),
            ports: req.ports.clone(),
            addrs: req.addrs.iter().map(|a| a.to_string()).collect(),
            hook: tracer.hook.name(),
            notes: tracer.notes.clone(),
        })
        .map_err(io_err)?;

    let started = Instant::now();
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::Io(e.to_string()))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Error::Io(e.to_string()))?;
    let deadline = req.duration.map(|d| tokio::time::Instant::now() + d);
    let mut delivered = 0u64;

    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => break,
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(|e| Error::Io(format!("polling the event ring: {e}")))?;
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    if let Some(ev) = event::decode(&item) {
                        delivered += 1;
                        emit(&mut printer, namer.observe(&ev)).map_err(io_err)?;
                    }
                }
                guard.clear_ready();
            }
        }
    }
    // Events already in the ring when we stopped still belong to this run.
    {
        let rb = ring.get_mut();
        while let Some(item) = rb.next() {
            if let Some(ev) = event::decode(&item) {
                delivered += 1;
                emit(&mut printer, namer.observe(&ev)).map_err(io_err)?;
            }
        }
    }
    let totals = tracer.totals()?;
    let summary = summarize(
        &totals,
        &namer,
        delivered,
        started.elapsed(),
        tracer.hook.name(),
        now(),
    );
    printer.summary(&summary).map_err(io_err)?;
    drop(tracer);
    Ok(summary)
}

fn emit<W: Write>(printer: &mut Printer<W>, observed: Observed) -> std::io::Result<()> {
    match observed {
        Observed::Drop(rec) => printer.drop_line(&rec),
        Observed::Signal(sig) => printer.signal_line(&sig),
    }
}

fn summarize(
    totals: &Totals,
    namer: &Namer,
    delivered: u64,
    elapsed: Duration,
    hook: &'static str,
    time: String,
) -> SummaryRecord {
    let mut by_reason = BTreeMap::new();
    let mut by_port = BTreeMap::new();
    let mut counters = Vec::new();
    let mut drops = 0;
    for (&(reason, port, proto), &packets) in &totals.counters {
        let name = namer.reasons.name(reason);
        *by_reason.entry(name.clone()).or_insert(0) += packets;
        *by_port.entry(port).or_insert(0) += packets;
        drops += packets;
        counters.push(CounterRecord {
            reason: name,
            port,
            proto: event::proto_name(proto),
            packets,
        });
    }
    counters.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.reason.cmp(&b.reason)));
    SummaryRecord {
        kind: "summary",
        time,
        duration_s: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
        drops,
        events: delivered,
        lost: totals.ring_lost,
        by_reason,
        by_port,
        counters,
        uncounted: totals.counter_full,
        read_errors: totals.read_errors,
        hook,
    }
}
