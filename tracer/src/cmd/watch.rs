//! `droptrace watch`: discover → load → observe → report, until Ctrl-C/SIGTERM or --duration.
use std::{
    collections::{BTreeMap, VecDeque},
    io::Write,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use std::sync::Arc;

use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::Notify,
};
use tracer_common::{AF_INET, AF_INET6, AddrPort, ChangeEvent, WatchConfig};

use crate::{
    attribute::verdict::{Book, Signature, VerdictRecord},
    attribute::{
        Answer, Attribution, Context, DropFacts, attribute,
        culprit::{culprit_for, needs_culprit},
    },
    discover::netns::{IfNames, Netns},
    discover::{self, Engine, PublishedPort},
    error::Error,
    load::ebpf::{self, HookChoice, LoadOptions, Totals, Tracer},
    load::kernel::{self, btf::KernelBtf, inspect::Capabilities, kallsyms::LiveSymbols},
    observe::changes::{self, ChangeRecord, Generation, NftMonitor, Resolver},
    observe::event::{self, Clock, DropRecord, Namer, Observed, SignalRecord},
    observe::state::{self, Snapshot, iptables},
    observe::tracerules::{self, RuleTracer, TRACE_TABLE},
    report::evidence::{self, Bundle, PcapSink},
    report::metrics::{self, Exporter, MetricsSnapshot},
    report::output::{CounterRecord, Format, Printer, StartRecord, SummaryRecord},
    report::words,
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
    pub trace_rules: bool,
    /// Print the kernel side's anomaly reports (aya-log) on stderr.
    pub kernel_log: bool,
    /// Container engine socket to discover published ports from (default /var/run/docker.sock
    /// when no --port is given).
    pub docker_host: Option<PathBuf>,
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
    /// Write an evidence bundle into this directory.
    pub evidence: Option<PathBuf>,
    /// Drop the capabilities no longer needed once attached (the CLI does; the demo, which
    /// keeps building namespaces in the same process, does not).
    pub drop_privileges: bool,
}

/// Asks the container engine for published ports when the user gave none, or named a socket
/// or a container. A missing engine is an error only when the user asked for it.
async fn resolve_engine(req: &WatchRequest) -> Result<(Option<Engine>, Vec<PublishedPort>), Error> {
    let asked = req.docker_host.is_some() || req.container.is_some();
    if !asked && !(req.ports.is_empty() && req.addrs.is_empty()) {
        return Ok((None, Vec::new()));
    }
    let socket = req
        .docker_host
        .clone()
        .unwrap_or_else(|| PathBuf::from(discover::DEFAULT_DOCKER_HOST));
    match discover::from_engine(&socket).await {
        Ok((engine, ports)) => Ok((Some(engine), ports)),
        Err(e) if asked => Err(e),
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

/// Everything that turns one ring event into output: naming, signal correlation,
/// attribution (with a state snapshot per new kind of drop) and the verdict book.
struct Observer<W: Write> {
    namer: Namer,
    printer: Printer<W>,
    /// Shared with the blocking threads that read the namespace's state.
    netns: Arc<Netns>,
    /// Becomes true when the run is asked to end: waits in progress give up at once.
    stopping: tokio::sync::watch::Receiver<bool>,
    ports: Vec<u16>,
    exec_prefix: String,
    before: Snapshot,
    latest: Option<(Instant, Snapshot)>,
    recent_signals: VecDeque<SignalRecord>,
    book: Book,
    delivered: u64,
    rule_tracer: Option<RuleTracer>,
    /// Changes seen during the run (sysctl writes, ruleset changes), oldest first.
    changes: Vec<ChangeRecord>,
    resolver: Resolver,
    monitor: Option<NftMonitor>,
    /// The last iptables-legacy rulesets seen, to tell what a table replacement removed.
    legacy_seen: Vec<iptables::Ruleset>,
    /// Published ports known from the engine (or the DNAT rules).
    published: Vec<PublishedPort>,
    pcap: Option<PcapSink>,
    bundle: Option<Bundle>,
    notes: Vec<String>,
    exporter: Option<Exporter>,
    metrics_at: Instant,
    /// Live progress on stderr when it is a terminal and the output is for humans.
    progress: Option<Instant>,
    drops_seen: u64,
}

/// Signals older than this are not the answer to a drop (REJECT sends its ICMP error
/// microseconds before the drop, on the same CPU).
const ANSWER_WINDOW_NS: u64 = 50_000_000;
/// A snapshot younger than this is reused for the next new kind of drop.
const SNAPSHOT_REUSE: Duration = Duration::from_millis(250);

impl<W: Write> Observer<W> {
    async fn handle(
        &mut self,
        ev: &tracer_common::DropEvent,
        tracer: &Tracer,
    ) -> std::io::Result<()> {
        self.delivered += 1;
        match self.namer.observe(ev) {
            Observed::Signal(sig) => {
                self.printer.signal_line(&sig)?;
                if let Some(b) = &mut self.bundle {
                    b.record(&sig)?;
                }
                if self.recent_signals.len() >= 256 {
                    self.recent_signals.pop_front();
                }
                self.recent_signals.push_back(sig);
                Ok(())
            }
            Observed::Drop(mut rec, mut facts) => {
                self.drops_seen += 1;
                facts.answered = self.recent_answer(&facts, rec.ktime_ns);
                rec.answered = facts.answered.as_ref().map(words::answered);
                let port = self.watched_port(&rec);
                let sig = Signature::of(port, &rec);
                let attribution = match self.book.known(&sig) {
                    Some(a) => a.clone(),
                    None => {
                        if rec.reason == "NETFILTER_DROP"
                            && let Some(rt) = &self.rule_tracer
                        {
                            facts.traced = rt
                                .find(&rec.src, rec.sport, Duration::from_millis(300))
                                .await
                                .map(|t| (t.text, t.policy));
                        }
                        self.refresh_snapshot().await;
                        let now = &self.latest.as_ref().expect("refreshed").1;
                        let ctx = Context {
                            port,
                            exec_prefix: self.exec_prefix.clone(),
                            before: Some(&self.before),
                            published_elsewhere: self
                                .published
                                .iter()
                                .any(|p| p.host_port == port && p.source != "nat-rule"),
                        };
                        let a = attribute(&facts, now, &ctx);
                        self.book.learn(sig, a.clone());
                        a
                    }
                };
                rec.hook = attribution.hook.map(|h| h.name().to_string());
                rec.container = self
                    .published
                    .iter()
                    .find(|p| p.host_port == port)
                    .and_then(|p| p.container.clone());
                rec.cause = Some(attribution.cause.name().to_string());
                self.printer.drop_line(&rec)?;
                let wall_ns = self.namer.clock.wall_ns(ev.ktime_ns);
                if let Some(p) = &mut self.pcap {
                    p.write(ev, &rec, wall_ns)?;
                }
                if let Some(b) = &mut self.bundle {
                    b.record(&rec)?;
                    b.pcap.write(ev, &rec, wall_ns)?;
                }
                if let Some(mut verdict) = self.book.add(port, &rec, &attribution) {
                    if needs_culprit(&attribution.why) && self.culprit(&attribution).is_none() {
                        // nf_tables changes arrive through the monitor process a moment
                        // later than the kernel's events: give it a short chance.
                        self.wait_for_monitor(tracer, Duration::from_millis(300))
                            .await;
                    }
                    let (culprit, note) = self.culprit_or_note(&attribution);
                    self.book
                        .set_culprit(port, attribution.cause, culprit.clone(), note.clone());
                    verdict.culprit = culprit;
                    verdict.culprit_note = note;
                    self.printer.verdict(&verdict)?;
                    let first = match &mut self.bundle {
                        Some(b) => {
                            b.record(&verdict)?;
                            b.first_verdict()
                        }
                        None => false,
                    };
                    if first {
                        self.bundle_snapshot("first-verdict").await;
                        if let Some(b) = &mut self.bundle {
                            b.write_report();
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// A kernel change event (sysctl write, iptables-legacy replace).
    async fn handle_change(&mut self, ev: &ChangeEvent, tracer: &Tracer) -> std::io::Result<()> {
        let time = event::rfc3339(self.namer.clock.wall(ev.ktime_ns));
        let lookup = |pid: u32| tracer.exec_identity(pid);
        let Some(mut rec) = changes::from_event(ev, time, &mut self.resolver, &lookup) else {
            return Ok(());
        };
        if rec.source == "iptables-legacy" {
            rec.changes = self
                .legacy_diff(rec.key.as_deref().unwrap_or_default())
                .await;
            if !rec.changes.is_empty() {
                rec.what = format!("{}: {}", rec.what, rec.changes.join("; "));
            }
        }
        self.record_change(rec)
    }

    /// An nf_tables generation from the monitor.
    fn handle_generation(&mut self, g: Generation, tracer: &Tracer) -> std::io::Result<()> {
        let lookup = |pid: u32| tracer.exec_identity(pid);
        let process = self.resolver.from_pid(g.pid, &g.comm, &lookup);
        let changes: Vec<String> = g
            .changes
            .iter()
            .map(|c| self.describe_nft_change(c))
            .collect();
        let mut what = changes
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        if changes.len() > 3 {
            what.push_str(&format!("; … {} changes in all", changes.len()));
        }
        let rec = ChangeRecord {
            kind: "change",
            time: event::rfc3339(chrono::Utc::now()),
            netns: self.netns.inode,
            source: "nftables",
            what,
            key: None,
            old: None,
            new: None,
            changes,
            process,
            ktime_ns: 0,
        };
        self.record_change(rec)
    }

    fn record_change(&mut self, rec: ChangeRecord) -> std::io::Result<()> {
        self.printer.change(&rec)?;
        if let Some(b) = &mut self.bundle {
            b.record(&rec)?;
        }
        if self.changes.len() >= 1024 {
            self.changes.remove(0);
        }
        self.changes.push(rec);
        Ok(())
    }

    /// Drains pending changes so that a drop is attributed with every change before it.
    async fn drain_changes(
        &mut self,
        changes_ring: &mut RingBuf<MapData>,
        tracer: &Tracer,
    ) -> std::io::Result<()> {
        while let Some(item) = changes_ring.next() {
            if let Some(ev) = event::decode_change(&item) {
                self.handle_change(&ev, tracer).await?;
            }
        }
        loop {
            let next = self
                .monitor
                .as_ref()
                .and_then(|m| m.generations.try_recv().ok());
            match next {
                Some(g) => self.handle_generation(g, tracer)?,
                None => return Ok(()),
            }
        }
    }

    /// Waits up to `wait` for the monitor's next generation, serving the event loop meanwhile.
    /// Also when the run is ending: the last verdicts still deserve their culprit, and the wait
    /// is short.
    async fn wait_for_monitor(&mut self, tracer: &Tracer, wait: Duration) {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            let got = self
                .monitor
                .as_ref()
                .and_then(|m| m.generations.try_recv().ok());
            if let Some(g) = got {
                let _ = self.handle_generation(g, tracer);
                while let Some(g) = self
                    .monitor
                    .as_ref()
                    .and_then(|m| m.generations.try_recv().ok())
                {
                    let _ = self.handle_generation(g, tracer);
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `delete rule ip nat DOCKER handle 11` → with what that rule was, from the snapshots.
    fn describe_nft_change(&self, change: &str) -> String {
        let words: Vec<&str> = change.split_whitespace().collect();
        if let ["delete", "rule", family, table, chain, "handle", handle] = words.as_slice()
            && let Ok(handle) = handle.parse::<u64>()
        {
            let known = [Some(&self.before), self.latest.as_ref().map(|(_, s)| s)]
                .into_iter()
                .flatten()
                .flat_map(|s| s.nft.rules.iter())
                .find(|r| {
                    r.family == *family
                        && r.table == *table
                        && r.chain == *chain
                        && r.handle == handle
                });
            if let Some(rule) = known {
                return format!("{change} (was: {})", rule.text);
            }
        }
        change.to_string()
    }

    /// What an iptables-legacy table replacement removed, against the last rules seen.
    async fn legacy_diff(&mut self, table: &str) -> Vec<String> {
        // The setsockopt hook fires before the kernel applies the new table.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = self.capture().await;
        let old_sets = if self.legacy_seen.is_empty() {
            self.before
                .iptables
                .iter()
                .filter(|r| r.backend.ends_with("legacy"))
                .cloned()
                .collect()
        } else {
            self.legacy_seen.clone()
        };
        let new_sets: Vec<iptables::Ruleset> = now
            .iptables
            .iter()
            .filter(|r| r.backend.ends_with("legacy"))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for old in &old_sets {
            let Some(old_table) = old.table(table) else {
                continue;
            };
            let new_table = new_sets
                .iter()
                .find(|n| n.backend == old.backend)
                .and_then(|n| n.table(table));
            for chain in &old_table.chains {
                let new_chain = new_table.and_then(|t| t.chain(&chain.name));
                if new_chain.is_none() {
                    out.push(format!("removed chain {table} {}", chain.name));
                }
                for rule in &chain.rules {
                    let still = new_chain
                        .map(|c| c.rules.iter().any(|r| r.spec == rule.spec))
                        .unwrap_or(false);
                    if !still {
                        out.push(format!(
                            "removed rule {table} {}: {}",
                            chain.name, rule.spec
                        ));
                    }
                }
            }
        }
        self.legacy_seen = new_sets;
        out
    }

    /// The change that explains a verdict, if one was seen.
    fn culprit(&self, a: &Attribution) -> Option<ChangeRecord> {
        culprit_for(&a.why, &self.changes).cloned()
    }

    fn culprit_or_note(&self, a: &Attribution) -> (Option<ChangeRecord>, Option<String>) {
        if !needs_culprit(&a.why) {
            return (None, None);
        }
        match self.culprit(a) {
            Some(c) => (Some(c), None),
            None => (None, Some(words::before_start_note(a.cause))),
        }
    }

    /// The watched port a drop belongs to: the destination, the pre-DNAT destination, or the
    /// source (a reply).
    fn watched_port(&self, rec: &DropRecord) -> u16 {
        [Some(rec.dport), rec.orig_dport, Some(rec.sport)]
            .into_iter()
            .flatten()
            .find(|p| self.ports.contains(p))
            .unwrap_or(rec.dport)
    }

    /// The ICMP error or RST the kernel sent for this flow just before the drop.
    fn recent_answer(&self, d: &DropFacts, ktime_ns: u64) -> Option<Answer> {
        let flow = (d.src, d.sport, d.dst, d.dport);
        self.recent_signals
            .iter()
            .rev()
            .find(|s| s.flow == flow && ktime_ns.saturating_sub(s.ktime_ns) < ANSWER_WINDOW_NS)
            .map(|s| s.answer)
    }

    /// One status line on a terminal's stderr, rewritten in place about once a second; never
    /// on a pipe and never with --json, so nothing a script reads is polluted.
    fn show_progress(&mut self, started: Instant) {
        let Some(last) = self.progress else { return };
        if last.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.progress = Some(Instant::now());
        eprint!(
            "\r\x1b[2K[droptrace] {:.0} s · {} drop(s) seen · {} verdict(s) · {} change(s)",
            started.elapsed().as_secs_f64(),
            self.drops_seen,
            self.book.groups().len(),
            self.changes.len()
        );
    }

    /// Refreshes the metrics from the kernel's exact counters, at most once a second.
    fn refresh_metrics(&mut self, tracer: &Tracer, force: bool) {
        let Some(exporter) = &self.exporter else {
            return;
        };
        if !force && self.metrics_at.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.metrics_at = Instant::now();
        let Ok(totals) = tracer.totals() else { return };
        let groups = self.book.groups();
        let drops = totals
            .counters
            .iter()
            .map(|(&(reason, port, proto), &n)| {
                let name = self.namer.reasons.name(reason);
                let cause = groups
                    .iter()
                    .find(|(p, _, r)| *p == port && *r == name)
                    .map_or("unattributed", |(_, c, _)| c);
                (cause.to_string(), name, port, event::proto_name(proto), n)
            })
            .collect();
        let mut changes: BTreeMap<String, u64> = BTreeMap::new();
        for c in &self.changes {
            *changes.entry(c.source.to_string()).or_default() += 1;
        }
        exporter.update(MetricsSnapshot {
            drops,
            verdicts: groups.iter().map(|(p, c, _)| (c.to_string(), *p)).collect(),
            changes: changes.into_iter().collect(),
            events: totals.events,
            lost: totals.ring_lost,
            read_errors: totals.read_errors,
        });
    }

    async fn refresh_snapshot(&mut self) {
        let fresh = matches!(&self.latest, Some((at, _)) if at.elapsed() < SNAPSHOT_REUSE);
        if !fresh {
            let snap = self.capture().await;
            self.latest = Some((Instant::now(), snap));
        }
    }

    /// Closes the run: the closing verdicts with the kernel's exact counts, the summary, the
    /// bundle's report and the last metrics.
    async fn finish(
        &mut self,
        tracer: &Tracer,
        started: Instant,
        start_notes: Vec<String>,
    ) -> Result<RunOutcome, Error> {
        let io_err = |e: std::io::Error| Error::Io(format!("writing output: {e}"));
        let totals = tracer.totals()?;
        let time = event::rfc3339(chrono::Utc::now());
        let hook = tracer.hook.name();
        let summary = summarize(
            &totals,
            &self.namer,
            self.delivered,
            started.elapsed(),
            hook,
            time,
        );
        let exact: BTreeMap<(String, u16), u64> =
            summary.counters.iter().fold(BTreeMap::new(), |mut m, c| {
                *m.entry((c.reason.clone(), c.port)).or_insert(0) += c.packets;
                m
            });
        let verdicts = self.book.finish(&exact);
        for verdict in &verdicts {
            self.printer.verdict(verdict).map_err(io_err)?;
            if let Some(b) = &mut self.bundle {
                b.record(verdict).map_err(io_err)?;
            }
        }
        self.printer.summary(&summary).map_err(io_err)?;
        if let Some(b) = &mut self.bundle {
            b.record(&summary).map_err(io_err)?;
            b.write_report();
        }
        if let Some(p) = &mut self.pcap {
            p.flush().map_err(io_err)?;
        }
        self.refresh_metrics(tracer, true);
        if self.progress.is_some() {
            eprintln!();
        }
        drop(self.rule_tracer.take());
        drop(self.monitor.take());
        Ok(RunOutcome {
            summary,
            verdicts,
            changes: std::mem::take(&mut self.changes),
            notes: start_notes,
        })
    }

    /// Runs blocking work (tools in the namespace) on a blocking thread while the event loop
    /// keeps serving Ctrl-C, the rings and /metrics. Once the run is asked to end, the work
    /// gets STOP_GRACE more to finish (its evidence is worth a moment), then is abandoned:
    /// None.
    async fn off_loop<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let mut work = tokio::task::spawn_blocking(work);
        let mut stopping = self.stopping.clone();
        tokio::select! {
            done = &mut work => return done.ok(),
            _ = stopping.wait_for(|stop| *stop) => {}
        }
        tokio::time::timeout(STOP_GRACE, work).await.ok()?.ok()
    }

    /// The namespace's state, read off the event loop; the start snapshot stands in when the
    /// read was abandoned because the run is ending.
    async fn capture(&self) -> Snapshot {
        let ns = Arc::clone(&self.netns);
        match self.off_loop(move || state::capture(&ns)).await {
            Some(snap) => snap,
            None => self.before.clone(),
        }
    }

    /// The evidence bundle's `snapshot-LABEL/`, written off the event loop.
    async fn bundle_snapshot(&self, label: &'static str) {
        let Some(b) = &self.bundle else { return };
        let (dir, ns) = (b.dir().to_path_buf(), Arc::clone(&self.netns));
        let (ports, notes) = (self.ports.clone(), self.notes.clone());
        self.off_loop(move || evidence::write_snapshot(&dir, label, &ns, &ports, &notes))
            .await;
    }
}

/// How long blocking work in progress may still take once the run is asked to end.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// How often the event ring is drained even without a wakeup.
const DRAIN_TICK: Duration = Duration::from_millis(50);

/// Handles every event in the ring, then flushes the output once.
async fn drain<W: Write>(
    rb: &mut RingBuf<MapData>,
    obs: &mut Observer<W>,
    tracer: &Tracer,
) -> std::io::Result<()> {
    while let Some(item) = rb.next() {
        if let Some(ev) = event::decode(&item) {
            obs.handle(&ev, tracer).await?;
        }
    }
    if let Some(p) = &mut obs.pcap {
        p.flush()?;
    }
    if let Some(b) = &mut obs.bundle {
        b.flush()?;
    }
    obs.printer.flush()
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
                out.push(addr_port(&SocketAddr::new(
                    IpAddr::V4(addr),
                    to_port.unwrap_or(port),
                )));
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

/// `--trace-rules`' tracer, or the removal of a table a killed run left; with its notes.
fn rule_tracer(req: &WatchRequest, netns: &Netns) -> (Option<RuleTracer>, Vec<String>) {
    if !req.trace_rules {
        let removed = tracerules::remove_leftover(netns).then(|| {
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
async fn observe<W: Write>(
    obs: &mut Observer<W>,
    tracer: &Tracer,
    (ring, changes_ring): (
        &mut AsyncFd<RingBuf<MapData>>,
        &mut AsyncFd<RingBuf<MapData>>,
    ),
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
            _ = tokio::time::sleep(Duration::from_millis(200)), if obs.monitor.is_some() => {
                obs.drain_changes(changes_ring.get_mut(), tracer).await.map_err(io_err)?;
            }
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(|e| Error::Io(format!("polling the event ring: {e}")))?;
                obs.drain_changes(changes_ring.get_mut(), tracer).await.map_err(io_err)?;
                drain(guard.get_inner_mut(), obs, tracer).await.map_err(io_err)?;
                guard.clear_ready();
            }
            // The kernel side skips the wakeup while unread events are pending (one wakeup per
            // burst, not per drop); this tick bounds the latency of an event that raced a drain.
            _ = tokio::time::sleep(DRAIN_TICK) => {
                drain(ring.get_mut(), obs, tracer).await.map_err(io_err)?;
                obs.refresh_metrics(tracer, false);
                obs.show_progress(started);
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

/// `droptrace watch`: discover (engine, namespace, ports) → inspect and load → announce →
/// observe → finish. Longer than a screen because it is the one place that holds every
/// resource of a run (rings, probes, monitor, sinks) in the order they must be made and
/// dropped; each stage's work is in the functions it calls.
pub async fn run<W: Write>(req: WatchRequest, out: W) -> Result<RunOutcome, Error> {
    kernel::check_privileges()?;
    // Before anything is loaded or changed: a Ctrl-C from here on ends the run cleanly
    // (summary printed, --trace-rules' table removed) instead of killing the process.
    let sigint = signal(SignalKind::interrupt()).map_err(|e| Error::Io(e.to_string()))?;
    let sigterm = signal(SignalKind::terminate()).map_err(|e| Error::Io(e.to_string()))?;
    let exporter = match req.metrics {
        Some(addr) => {
            let listener = metrics::bind(addr).await?;
            let exporter = Exporter::default();
            tokio::spawn(metrics::serve(listener, exporter.clone()));
            Some(exporter)
        }
        None => None,
    };
    let (engine, mut published) = resolve_engine(&req).await?;
    let netns = Arc::new(discover::watched_netns(
        req.netns.as_deref(),
        engine.as_ref(),
    )?);
    let btf = KernelBtf::from_sys()?;
    let offsets = btf.kernel_offsets()?;
    let reasons = btf.drop_reasons()?;
    let tracepoints: Vec<&'static str> = ebpf::TP_HOOKS.iter().map(|h| h.tracepoint).collect();
    let caps = Capabilities::probe(&btf, &tracepoints);
    drop(btf);

    // Started first: `nft monitor` needs a moment to subscribe, and every ruleset change
    // after the start line must be seen.
    let (monitor, monitor_note) = match NftMonitor::start(&netns) {
        Ok(m) => (Some(m), None),
        Err(why) => (None, Some(why)),
    };
    // Read before any drop of this run, so rule counters that move later name the rule.
    let before = {
        let ns = Arc::clone(&netns);
        tokio::task::spawn_blocking(move || state::capture(&ns))
            .await
            .map_err(|e| Error::Io(format!("reading the namespace's state: {e}")))?
    };
    if engine.is_none() && req.ports.is_empty() && req.addrs.is_empty() {
        published = discover::from_rules(&before);
    }
    if let Some(wanted) = &req.container {
        published = discover::select_container(published, wanted)?;
    }
    let (ports, addr_ports) = watched_ports(&req, &published, &before)?;

    let opts = LoadOptions {
        offsets,
        config: WatchConfig {
            netns: netns.inode,
            match_all: 0,
            capture_headers: u32::from(req.pcap.is_some() || req.evidence.is_some()),
            _pad: 0,
        },
        ports: ports.clone(),
        addr_ports,
        ignored_reasons: reasons.ignored(req.include_teardown),
        ring_bytes: req.ring_bytes,
        hook: req.hook,
        caps: caps.clone(),
        kernel_log: req.kernel_log,
    };
    let mut tracer = Tracer::load(&opts)?;
    if req.kernel_log {
        tracer.forward_kernel_log()?;
    }
    tracer.attach_hook_probes(&netns);
    tracer.attach_change_probes();
    let changes_ring = tracer.take_changes()?;
    // SAFETY: as for the event ring below: the RingBuf owns its fd until the AsyncFd drops.
    let mut changes_ring =
        unsafe { AsyncFd::register_with_interest(changes_ring, tokio::io::Interest::READABLE) }
            .map_err(|e| Error::Io(format!("polling the change ring: {e}")))?;

    let (rule_tracer, trace_notes) = rule_tracer(&req, &netns);
    let ring = tracer.take_ring()?;
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, until it is dropped,
    // which only happens when the AsyncFd itself drops.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::Io(format!("polling the event ring: {e}")))?;

    let format = if req.json {
        Format::Json
    } else {
        Format::Human
    };
    let io_err = |e: std::io::Error| Error::Io(format!("writing output: {e}"));
    let now = || event::rfc3339(chrono::Utc::now());
    let mut notes = tracer.notes.clone();
    notes.extend(trace_notes);
    notes.extend(monitor_note);
    notes.extend(before.problems.iter().cloned());
    let pcap = req.pcap.as_deref().map(PcapSink::create).transpose()?;
    let (stop_tx, stopping) = tokio::sync::watch::channel(false);
    let bundle = req.evidence.as_deref().map(Bundle::create).transpose()?;
    let mut obs = Observer {
        namer: Namer {
            clock: Clock::now(),
            reasons,
            symbols: LiveSymbols::default(),
            ifnames: IfNames::new(&netns),
        },
        // Buffered: in a storm a write per line would cost more than everything else.
        printer: Printer::new(std::io::BufWriter::with_capacity(1 << 16, out), format),
        exec_prefix: exec_prefix(&req, &netns),
        ports: ports.clone(),
        published: published.clone(),
        before,
        latest: None,
        recent_signals: VecDeque::new(),
        book: Book::default(),
        delivered: 0,
        rule_tracer,
        changes: Vec::new(),
        resolver: Resolver::new(caps.cgroup2_root.clone()),
        monitor,
        legacy_seen: Vec::new(),
        pcap,
        bundle,
        notes: Vec::new(),
        exporter,
        metrics_at: Instant::now(),
        progress: (!req.json && !req.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .then(Instant::now),
        drops_seen: 0,
        netns,
        stopping: stopping.clone(),
    };

    let start_record = StartRecord {
        kind: "start",
        time: now(),
        version: env!("CARGO_PKG_VERSION"),
        kernel: kernel::release(),
        netns: obs.netns.inode,
        netns_name: obs.netns.name.clone(),
        ports: ports.clone(),
        addrs: req.addrs.iter().map(|a| a.to_string()).collect(),
        published: published.clone(),
        engine: engine.clone(),
        hook: tracer.hook.name(),
        signals: tracer.signals.clone(),
        notes: notes.clone(),
    };
    // Capabilities go before the start line: whoever reads "attached" may check them.
    if req.drop_privileges {
        kernel::drop_unneeded_capabilities();
    }
    obs.printer.start(&start_record).map_err(io_err)?;
    obs.notes = notes.clone();
    if let Some(b) = &mut obs.bundle {
        b.record(&start_record).map_err(io_err)?;
        b.flush().map_err(io_err)?;
    }
    obs.bundle_snapshot("start").await;
    let start_notes = notes;
    if let Some(ready) = &req.ready {
        ready.notify_one();
    }

    let started = Instant::now();
    // Whatever ends the run (Ctrl-C, SIGTERM, --duration, the demo) flips `stopping`, which
    // the loop and every wait inside it watch.
    let stopper = spawn_stopper((sigint, sigterm), &req, stop_tx);
    observe(
        &mut obs,
        &tracer,
        (&mut ring, &mut changes_ring),
        stopping,
        started,
    )
    .await?;
    // The demo runs watch again in the same process: no listener of this run stays behind.
    stopper.abort();
    let outcome = obs.finish(&tracer, started, start_notes).await;
    drop(tracer);
    outcome
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
