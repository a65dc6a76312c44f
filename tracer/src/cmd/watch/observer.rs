//! What `watch` does with each ring event: name it, pair it with the kernel's answer,
//! diagnose each new kind of drop against fresh state, group it into verdicts with their
//! culprit, and hand every record to the sinks.
use std::{
    collections::{BTreeMap, HashMap},
    io,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tracer_common::{DropEvent, DropFlowCount, DropFlowKey, ct, flow, kind};

use super::changes::ChangeLog;
use crate::{
    attribute::{
        Attribution, Cause, Context, DropFacts,
        culprit::{culprit_for, needs_culprit},
        diagnose,
        verdict::{Book, Signature, VerdictRecord},
    },
    discover::{PublishedPort, netns::Netns},
    error::Error,
    journal,
    load::ebpf::{Totals, Tracer},
    observe::{
        correlate::Answers,
        event::{self, DropRecord, Namer, Observed},
        facts::{Answer, RouteFact},
        payload::Payloads,
        state::{self, Snapshot},
        tracerules::RuleTracer,
    },
    report::{
        evidence,
        fastline::Vars,
        metrics::MetricsSnapshot,
        output::{CounterRecord, FlowLine, FlowRecord, SummaryRecord},
        sink::{Dropped, Sink, Sinks, Tally},
        words,
    },
};

/// A snapshot younger than this is reused for the next new kind of drop.
const SNAPSHOT_REUSE: Duration = Duration::from_millis(250);
/// How long blocking work in progress may still take once the run is asked to end.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How often the sinks are ticked (progress line, metrics).
pub(super) const TICK: Duration = Duration::from_secs(1);
/// How long a new verdict waits for `nft monitor` to report the change that explains it: its
/// events arrive a moment after the kernel's.
const MONITOR_WAIT: Duration = Duration::from_millis(300);
/// How long a NETFILTER_DROP waits for nftrace to name its rule (--trace-rules).
const TRACE_WAIT: Duration = Duration::from_millis(300);

/// One run's observer.
pub(super) struct Observer<'w> {
    pub namer: Namer,
    pub sinks: Sinks<'w>,
    /// Shared with the blocking threads that read the namespace's state.
    pub netns: Arc<Netns>,
    /// Becomes true when the run is asked to end: waits in progress give up at once.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    pub ports: Vec<u16>,
    /// Published ports known from the engine (or the DNAT rules).
    pub published: Vec<PublishedPort>,
    /// The engine is rootless: its ports are forwarded in userspace, never DNATed, so a drop
    /// on the way in is no missing DNAT.
    pub rootless: bool,
    pub exec_prefix: String,
    /// The state at start, and the latest read (with when).
    pub before: Snapshot,
    pub latest: Option<(Instant, Snapshot)>,
    pub answers: Answers,
    /// The ICMP errors no REJECT sends (frag-needed, redirects), for routing's verdicts.
    pub routing_answers: Answers,
    pub book: Book,
    pub rule_tracer: Option<RuleTracer>,
    pub changes: ChangeLog,
    /// The evidence bundle's directory, for its state snapshots.
    pub bundle_dir: Option<PathBuf>,
    /// `--snaplen`'s payload buffers (None: each packet's linear headers only).
    pub payloads: Option<Payloads>,
    pub first_verdict_seen: bool,
    /// The start line's notes, also written into the bundle's snapshots.
    pub notes: Vec<String>,
    /// The optional hooks that attached (the start line's `signals`).
    pub signals: Vec<&'static str>,
    /// ICMP errors and RSTs the kernel sent, per (watched port, proto).
    pub answered: BTreeMap<(u16, String), u64>,
    /// Ring events handled, and how many were drops.
    pub delivered: u64,
    pub drops_seen: u64,
    pub ticked: Instant,
    /// When the routing decisions were last checked (`routes::check_routes`).
    pub routes_checked: Instant,
    /// In-kernel aggregation: on unless `--every-drop`.
    pub flows: FlowTally,
    /// Drop lines written from templates.
    pub fast: FastLines,
}

/// A flow's drops after its first, in everything the printed line and the verdict depend
/// on but time, ports and length: `tracer_common::DropFlowKey` plus the rest of the event's
/// fields the record shows, and the answer the kernel sent.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Shape {
    flow: DropFlowKey,
    ifindex: u32,
    tcp_flags: u8,
    icmp: (u8, u8),
    orig: ([u8; 16], u16),
    answered: Option<Answer>,
}

impl Shape {
    fn of(ev: &DropEvent, answered: Option<Answer>) -> Self {
        Shape {
            flow: DropFlowKey::of(ev),
            ifindex: ev.ifindex,
            tcp_flags: ev.tcp_flags,
            icmp: (ev.icmp_type, ev.icmp_code),
            orig: (ev.orig_daddr, ev.orig_dport),
            answered,
        }
    }
}

/// How many shapes get a template: a storm has a few; spoofed sources beyond this take the
/// ordinary path.
const SHAPES: usize = 4096;

/// The drop lines written from templates (`report::fastline`): each shape's template id and
/// verdict, and the drops not yet added to their verdicts.
#[derive(Default)]
pub(super) struct FastLines {
    on: bool,
    // foldhash: every drop of a storm is looked up here; SipHash was 6% of the profile.
    shapes: foldhash::HashMap<Shape, (usize, u16, Cause)>,
    learnt: usize,
    /// (port, cause) → (drops, the latest's ktime), added to the book on each tick.
    pending: foldhash::HashMap<(u16, Cause), (u64, u64)>,
}

impl FastLines {
    /// On unless a sink needs each drop's record.
    pub fn new(on: bool) -> Self {
        Self {
            on,
            ..Self::default()
        }
    }
}

/// What the kernel's flows have reported so far (see `Observer::report_flows`).
#[derive(Default)]
pub(super) struct FlowTally {
    pub on: bool,
    /// Each flow's verdict (port, cause) and container, learnt from its first drop line.
    causes: HashMap<DropFlowKey, (u16, Cause, Option<String>)>,
    /// Each flow's count without lines, as last reported.
    shown: HashMap<DropFlowKey, u64>,
    /// Drops reported only in flow lines, and the flows of drops.
    aggregated: u64,
    drop_flows: u64,
}

impl FlowTally {
    pub fn new(on: bool) -> Self {
        Self {
            on,
            ..Self::default()
        }
    }
}

impl Observer<'_> {
    pub async fn handle(&mut self, ev: &DropEvent, tracer: &Tracer) -> io::Result<()> {
        self.delivered += 1;
        if ev.kind == kind::DROP && self.templated(ev)? {
            return Ok(());
        }
        match self.namer.observe(ev) {
            Observed::Signal(sig) => {
                // Only a rejection is a drop's answer: a redirect before a FORWARD drop is
                // routing's doing (measured: a route lost sends 5/1, then the policy drops).
                if sig.answer.is_rejection() {
                    self.answers.remember(sig.flow, sig.ktime_ns, sig.answer);
                } else {
                    self.routing_answers
                        .remember(sig.flow, sig.ktime_ns, sig.answer);
                }
                let port = self.published_port(sig.dport);
                *self.answered.entry((port, sig.proto.clone())).or_default() += 1;
                self.sinks.signal(&sig)
            }
            Observed::Drop(rec, facts) => self.dropped(ev, rec, facts, tracer).await,
        }
    }

    /// A drop of a shape already seen, written from its template: no record is built.
    fn templated(&mut self, ev: &DropEvent) -> io::Result<bool> {
        if self.fast.shapes.is_empty() {
            return Ok(false);
        }
        let (src, dst) = (
            event::addr(ev.family, &ev.saddr),
            event::addr(ev.family, &ev.daddr),
        );
        let answered = self
            .answers
            .to_flow(&(src, ev.sport, dst, ev.dport), ev.ktime_ns);
        let Some(&(id, port, cause)) = self.fast.shapes.get(&Shape::of(ev, answered)) else {
            return Ok(false);
        };
        let vars = Vars {
            wall_ns: self.namer.clock.wall_ns(ev.ktime_ns),
            sport: ev.sport,
            dport: ev.dport,
            len: ev.len,
        };
        self.sinks.templated(id, &vars)?;
        self.drops_seen += 1;
        let pending = self.fast.pending.entry((port, cause)).or_default();
        pending.0 += 1;
        pending.1 = pending.1.max(ev.ktime_ns);
        Ok(true)
    }

    /// Learns the template of the lines of drops shaped like `ev`, whose record `rec` went
    /// out the ordinary way.
    fn learn_shape(
        &mut self,
        ev: &DropEvent,
        rec: &DropRecord,
        answer: Option<Answer>,
        port: u16,
        cause: Cause,
    ) {
        if !self.fast.on || self.fast.shapes.len() >= SHAPES {
            return;
        }
        let shape = Shape::of(ev, answer);
        if self.fast.shapes.contains_key(&shape) {
            return;
        }
        // Every sink learns every template, so the id is the count learnt before.
        let id = self.fast.learnt;
        self.fast.learnt += 1;
        if self.sinks.learn(rec) {
            self.fast.shapes.insert(shape, (id, port, cause));
        }
    }

    /// The templated drops' counts and times, added to their verdicts.
    fn settle_templated(&mut self) {
        for ((port, cause), (n, ktime)) in std::mem::take(&mut self.fast.pending) {
            let last = event::rfc3339(self.namer.clock.wall(ktime));
            self.book.add_counted(port, cause, n, &last);
        }
    }

    async fn dropped(
        &mut self,
        ev: &DropEvent,
        mut rec: DropRecord,
        mut facts: DropFacts,
        tracer: &Tracer,
    ) -> io::Result<()> {
        self.drops_seen += 1;
        facts.answered = self.answers.to_drop(&facts, rec.ktime_ns);
        facts.routing_answer = self.routing_answers.to_drop(&facts, rec.ktime_ns);
        let facts_answered = facts.answered;
        rec.answered = facts.answered.as_ref().map(words::answered);
        let port = self.watched_port(&rec);
        let attribution = self.attribution(port, &rec, facts, tracer).await;
        rec.hook = attribution.hook.map(|h| h.name().to_string());
        rec.container = self
            .published
            .iter()
            .find(|p| p.host_port == port)
            .and_then(|p| p.container.clone());
        rec.cause = Some(attribution.cause.name().to_string());
        if self.flows.on {
            self.flows
                .causes
                .entry(DropFlowKey::of(ev))
                .or_insert_with(|| (port, attribution.cause, rec.container.clone()));
        }
        let wall_ns = self.namer.clock.wall_ns(ev.ktime_ns);
        let packet: std::borrow::Cow<[u8]> = match self.payloads.as_mut() {
            Some(p) => p.packet(ev).into(),
            None => ev.hdr[..usize::from(ev.hdr_len).min(ev.hdr.len())].into(),
        };
        self.sinks.dropped(&Dropped {
            rec: &rec,
            ev,
            packet: &packet,
            wall_ns,
        })?;
        let verdict = self.book.add(port, &rec, &attribution);
        self.learn_shape(ev, &rec, facts_answered, port, attribution.cause);
        match verdict {
            Some(verdict) => self.new_verdict(port, verdict, &attribution, tracer).await,
            None => Ok(()),
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

    /// The published port a port the kernel matched stands for: itself when watched, else the
    /// host port published to that container port (`-p 5001:5000` matches 5000 after DNAT).
    fn published_port(&self, port: u16) -> u16 {
        if self.ports.contains(&port) {
            return port;
        }
        self.published
            .iter()
            .find(|p| p.container_port == Some(port) && self.ports.contains(&p.host_port))
            .map_or(port, |p| p.host_port)
    }

    /// This kind of drop's attribution: known already, or diagnosed now against fresh state.
    async fn attribution(
        &mut self,
        port: u16,
        rec: &DropRecord,
        mut facts: DropFacts,
        tracer: &Tracer,
    ) -> Attribution {
        let sig = Signature::of(port, rec);
        if let Some(a) = self.book.known(&sig) {
            return a.clone();
        }
        // Read only for a new kind of drop: a storm's known drops cost no map read.
        facts.route = tracer
            .route(facts.src, facts.dst)
            .and_then(|r| RouteFact::of(&r, &facts));
        if rec.reason_name() == "NETFILTER_DROP"
            && let Some(rt) = &self.rule_tracer
        {
            facts.traced = rt
                .find(&rec.src, rec.sport, TRACE_WAIT)
                .await
                .map(|t| (t.text, t.policy));
        }
        self.refresh_snapshot().await;
        let now = &self.latest.as_ref().expect("refreshed").1;
        if let Some(r) = facts.route.as_mut() {
            r.local |= now.is_local(&r.dst);
        }
        // The engine diagnoses, the report stage words it: composed here.
        let ctx = self.context(port);
        let a = words::explain(&facts, diagnose(&facts, now, &ctx), &ctx);
        self.book.learn(sig, a.clone());
        a
    }

    /// What the engine is told besides the drop and the state, for a drop on `port`.
    pub(super) fn context(&self, port: u16) -> Context<'_> {
        Context {
            port,
            exec_prefix: self.exec_prefix.clone(),
            before: Some(&self.before),
            published_elsewhere: !self.rootless
                && self
                    .published
                    .iter()
                    .any(|p| p.host_port == port && p.source != "nat-rule"),
            engine: self
                .published
                .iter()
                .filter(|p| p.host_port == port)
                .find_map(|p| p.engine),
        }
    }

    /// A (port, cause) seen for the first time: its culprit, the verdict out, and the
    /// bundle's state snapshot at the first one.
    pub(super) async fn new_verdict(
        &mut self,
        port: u16,
        mut verdict: VerdictRecord,
        a: &Attribution,
        tracer: &Tracer,
    ) -> io::Result<()> {
        if needs_culprit(&a.why) && culprit_for(&a.why, &self.changes.seen).is_none() {
            self.wait_for_monitor(tracer, MONITOR_WAIT).await;
        }
        let (culprit, note) = self.culprit_or_note(a);
        self.book
            .set_culprit(port, a.cause, culprit.clone(), note.clone());
        verdict.culprit = culprit;
        verdict.culprit_note = note;
        self.sinks.verdict(&verdict)?;
        if !std::mem::replace(&mut self.first_verdict_seen, true) && self.bundle_dir.is_some() {
            self.bundle_snapshot("first-verdict").await;
            self.sinks.checkpoint();
        }
        Ok(())
    }

    /// The change that explains a verdict, or why there is none.
    fn culprit_or_note(
        &self,
        a: &Attribution,
    ) -> (
        Option<crate::observe::changes::ChangeRecord>,
        Option<String>,
    ) {
        if !needs_culprit(&a.why) {
            return (None, None);
        }
        if let Some(c) = culprit_for(&a.why, &self.changes.seen) {
            return (Some(c.clone()), None);
        }
        // Before this run: the recorder's journal, when there is one.
        if let Some(dir) = &self.changes.journal {
            match journal::find_culprit(dir, self.netns.inode, &a.why) {
                Ok(found) if found.culprit.is_some() => return (found.culprit, None),
                Ok(found) => {
                    let dir = dir.display().to_string();
                    let note = words::unrecorded_note(a.cause, &dir, found.since.as_deref());
                    return (None, Some(note));
                }
                // Unreadable: said, then what a run without a journal says.
                Err(e) => {
                    let note = words::before_start_note(a.cause);
                    return (
                        None,
                        Some(format!(
                            "{note} (the journal in {} cannot be read: {e})",
                            dir.display()
                        )),
                    );
                }
            }
        }
        // A sysctl's writers are seen only through cgroup/sysctl.
        if a.why.sysctl().is_some() && !self.signals.contains(&"sysctl_writes") {
            return (None, Some(words::unrecordable_note(a.cause)));
        }
        (None, Some(words::before_start_note(a.cause)))
    }

    /// The kernel's flows that counted drops (or answers) without sending them since the
    /// last report: one flow line each, their counts added to their verdict (and answers to
    /// their port's).
    pub fn report_flows(&mut self, tracer: &Tracer) -> io::Result<()> {
        if !self.flows.on {
            return Ok(());
        }
        let flows = tracer
            .drop_flows()
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.flows.drop_flows = flows.iter().filter(|(k, _)| k.kind == kind::DROP).count() as u64;
        for (key, count) in flows {
            let aggregated = count.packets.saturating_sub(count.sent);
            let shown = self.flows.shown.entry(key).or_insert(0);
            let new = aggregated.saturating_sub(*shown);
            if new == 0 {
                continue;
            }
            *shown = aggregated;
            if key.kind != kind::DROP {
                let at = (self.published_port(key.port), event::proto_name(key.proto));
                *self.answered.entry(at).or_default() += new;
                continue;
            }
            self.flows.aggregated += new;
            let line = self.flow_line(&key, &count, new);
            if let Some((port, cause, _)) = self.flows.causes.get(&key) {
                self.book.add_counted(*port, *cause, new, &line.time);
            }
            self.sinks.flow(&line)?;
        }
        Ok(())
    }

    /// A flow's line, named as its drops' lines are.
    fn flow_line(&mut self, key: &DropFlowKey, count: &DropFlowCount, new: u64) -> FlowLine {
        let ev = DropEvent {
            ktime_ns: count.last_ns,
            location: key.location,
            reason: key.reason,
            netns: key.netns,
            family: key.family,
            proto: key.proto,
            kind: key.kind,
            has_ct: u8::from(key.dnat > 0),
            ct_status: if key.dnat == 2 { ct::IPS_DST_NAT } else { 0 },
            nf_trail: key.nf_trail,
            port: key.port,
            saddr: key.saddr,
            daddr: key.daddr,
            ..DropEvent::default()
        };
        let rec = self.namer.record(&ev);
        let learnt = self.flows.causes.get(key);
        FlowLine {
            kind: "flow",
            time: rec.time,
            first: event::rfc3339(self.namer.clock.wall(count.first_ns)),
            netns: key.netns,
            family: rec.family,
            proto: rec.proto,
            src: rec.src,
            dst: rec.dst,
            port: key.port,
            port_is_source: key.port_is_source != 0,
            reason: rec.reason,
            reason_code: key.reason,
            inferred_reason: rec.inferred_reason,
            location: rec.location,
            function: rec.function,
            nf_hook: rec.nf_hook,
            dnat: rec.dnat,
            cause: learnt.map(|(_, c, _)| c.name().to_string()),
            container: learnt.and_then(|(_, _, c)| c.clone()),
            packets: count.packets,
            lines: count.sent,
            aggregated: count.packets.saturating_sub(count.sent),
            new,
        }
    }

    /// Ticks the sinks about once a second (`force`: now), after the flows' report, with the
    /// kernel's exact counters when a sink wants them.
    pub fn tick(&mut self, tracer: &Tracer, started: Instant, force: bool) -> io::Result<()> {
        if !force && self.ticked.elapsed() < TICK {
            return Ok(());
        }
        self.ticked = Instant::now();
        self.settle_templated();
        self.report_flows(tracer)?;
        let counters = if self.sinks.wants_counters() {
            tracer.totals().ok().map(|t| self.counters(&t))
        } else {
            None
        };
        let tally = Tally {
            elapsed: started.elapsed(),
            drops_seen: self.drops_seen,
            verdicts: self.book.groups().len(),
            changes: self.changes.seen.len(),
            counters,
        };
        self.sinks.tick(&tally);
        Ok(())
    }

    /// The kernel's counters, named and labelled with the cause of their verdict.
    fn counters(&self, totals: &Totals) -> MetricsSnapshot {
        let groups = self.book.groups();
        let drops = totals
            .counters
            .iter()
            .map(|(&(reason, port, proto), &n)| {
                let name = self.namer.reasons.name(reason);
                // One verdict counted under this reason on this port takes the count; several
                // (on a kernel without reasons, every verdict of a port) cannot be told apart.
                let mut counted = groups.iter().filter(|(p, _, r)| *p == port && *r == name);
                let cause = match (counted.next(), counted.next()) {
                    (Some((_, c, _)), None) => c,
                    _ => "unattributed",
                };
                (cause.to_string(), name, port, event::proto_name(proto), n)
            })
            .collect();
        let mut changes: BTreeMap<String, u64> = BTreeMap::new();
        for c in &self.changes.seen {
            *changes.entry(c.source.to_string()).or_default() += 1;
        }
        let forwarded = self
            .flows(totals)
            .into_iter()
            .map(|f| (f.port, f.proto, f.forwarded))
            .collect();
        MetricsSnapshot {
            forwarded,
            drops,
            verdicts: groups.iter().map(|(p, c, _)| (c.to_string(), *p)).collect(),
            changes: changes.into_iter().collect(),
            events: totals.events,
            lost: totals.ring_lost,
            read_errors: totals.read_errors,
        }
    }

    pub(super) async fn refresh_snapshot(&mut self) {
        let fresh = matches!(&self.latest, Some((at, _)) if at.elapsed() < SNAPSHOT_REUSE);
        if !fresh {
            let snap = self.capture().await;
            self.latest = Some((Instant::now(), snap));
        }
    }

    /// Closes the run: the closing verdicts with the kernel's exact counts, the last tick,
    /// the summary.
    pub async fn finish(&mut self, tracer: &Tracer, started: Instant) -> Result<Closing, Error> {
        let io_err = |e: io::Error| Error::Io(format!("writing output: {e}"));
        // The flows' last counts first: the closing verdicts include them.
        self.settle_templated();
        self.report_flows(tracer).map_err(io_err)?;
        let totals = tracer.totals()?;
        let summary = self.summarize(&totals, started.elapsed(), tracer.hook.name());
        let exact: BTreeMap<(String, u16), u64> =
            summary.counters.iter().fold(BTreeMap::new(), |mut m, c| {
                *m.entry((c.reason.clone(), c.port)).or_insert(0) += c.packets;
                m
            });
        let verdicts = self.book.finish(&exact);
        for verdict in &verdicts {
            self.sinks.verdict(verdict).map_err(io_err)?;
        }
        self.tick(tracer, started, true).map_err(io_err)?;
        self.sinks.summary(&summary).map_err(io_err)?;
        self.sinks.flush().map_err(io_err)?;
        drop(self.rule_tracer.take());
        drop(self.changes.monitor.take());
        Ok(Closing {
            summary,
            verdicts,
            changes: std::mem::take(&mut self.changes.seen),
        })
    }

    fn summarize(&self, totals: &Totals, elapsed: Duration, hook: &'static str) -> SummaryRecord {
        let mut by_reason = BTreeMap::new();
        let mut by_port = BTreeMap::new();
        let mut counters = Vec::new();
        let mut drops = 0;
        for (&(reason, port, proto), &packets) in &totals.counters {
            let name = self.namer.reasons.name(reason);
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
        let flows = self.flows(totals);
        SummaryRecord {
            kind: "summary",
            time: event::rfc3339(chrono::Utc::now()),
            duration_s: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
            drops,
            events: self.delivered,
            lost: totals.ring_lost,
            signals_lost: totals.signals_lost,
            by_reason,
            by_port,
            counters,
            uncounted: totals.counter_full,
            read_errors: totals.read_errors,
            payload_lost: totals.payload_lost + self.payloads.as_ref().map_or(0, |p| p.lost),
            hook,
            flows,
            teardown: totals.teardown,
            drop_events: self.drops_seen,
            aggregated: self.flows.aggregated,
            drop_flows: self.flows.drop_flows,
            flow_map_full: totals.flow_full,
        }
    }

    /// Per watched port and protocol: forwarded, dropped and answered packets, and the
    /// routing decisions the kernel made for them.
    fn flows(&self, totals: &Totals) -> Vec<FlowRecord> {
        let mut out: BTreeMap<(u16, String), FlowRecord> = BTreeMap::new();
        fn at(
            out: &mut BTreeMap<(u16, String), FlowRecord>,
            port: u16,
            proto: String,
        ) -> &mut FlowRecord {
            out.entry((port, proto.clone()))
                .or_insert_with(|| FlowRecord {
                    port,
                    proto,
                    ..FlowRecord::default()
                })
        }
        for (&(port, kind, proto), &n) in &totals.flows {
            // Inbound route lookups carry no protocol: they count for the port's TCP record.
            let proto = if proto == 0 { 6 } else { proto };
            let f = at(
                &mut out,
                self.published_port(port),
                event::proto_name(proto),
            );
            match kind {
                flow::FORWARDED => f.forwarded += n,
                flow::ROUTED_FORWARD => f.routed_forward += n,
                flow::ROUTED_LOCAL => f.routed_local += n,
                _ => f.route_failed += n,
            }
        }
        for (&(_, port, proto), &n) in &totals.counters {
            at(
                &mut out,
                self.published_port(port),
                event::proto_name(proto),
            )
            .dropped += n;
        }
        for ((port, proto), &n) in &self.answered {
            at(&mut out, *port, proto.clone()).answered += n;
        }
        out.into_values().collect()
    }

    /// Runs blocking work (tools in the namespace) on a blocking thread while the event loop
    /// keeps serving Ctrl-C, the rings and /metrics. Once the run is asked to end, the work
    /// gets STOP_GRACE more to finish (its evidence is worth a moment), then is abandoned:
    /// None.
    pub async fn off_loop<T: Send + 'static>(
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
    pub async fn capture(&self) -> Snapshot {
        let ns = Arc::clone(&self.netns);
        match self.off_loop(move || state::capture(&ns)).await {
            Some(snap) => snap,
            None => self.before.clone(),
        }
    }

    /// The evidence bundle's `snapshot-LABEL/`, written off the event loop.
    pub async fn bundle_snapshot(&self, label: &'static str) {
        let Some(dir) = self.bundle_dir.clone() else {
            return;
        };
        let ns = Arc::clone(&self.netns);
        let (ports, notes) = (self.ports.clone(), self.notes.clone());
        self.off_loop(move || evidence::write_snapshot(&dir, label, &ns, &ports, &notes))
            .await;
    }
}

/// What the end of a run produced.
pub(super) struct Closing {
    pub summary: SummaryRecord,
    pub verdicts: Vec<VerdictRecord>,
    pub changes: Vec<crate::observe::changes::ChangeRecord>,
}
