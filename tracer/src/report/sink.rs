//! Every output of a run is a [`Sink`]: the human or JSON Lines printer, the pcapng file, the
//! evidence bundle, the Prometheus exporter and the terminal's progress line. The watch loop
//! hands each record to [`Sinks`] and knows nothing of what any of them writes.
use std::{
    io::{self, Write},
    time::{Duration, Instant},
};

use tracer_common::DropEvent;

use super::{
    evidence::{Bundle, PcapSink},
    fastline::Vars,
    metrics::{Exporter, MetricsSnapshot},
    output::{FlowLine, Printer, StartRecord, SummaryRecord},
};
use crate::{
    attribute::verdict::VerdictRecord,
    observe::{
        changes::ChangeRecord,
        event::{DropRecord, SignalRecord},
    },
};

/// One dropped packet: the record as printed, the raw event, and the packet's captured bytes
/// from its IP header (only real packet bytes: headers, or up to `--snaplen`).
pub struct Dropped<'a> {
    pub rec: &'a DropRecord,
    pub ev: &'a DropEvent,
    pub packet: &'a [u8],
    pub wall_ns: i64,
}

/// The run so far, handed to the sinks about once a second.
pub struct Tally {
    pub elapsed: Duration,
    pub drops_seen: u64,
    pub verdicts: usize,
    pub changes: usize,
    /// The kernel's exact counters, when a sink asked for them (`wants_counters`).
    pub counters: Option<MetricsSnapshot>,
}

/// An output of a run. Every method has a default that ignores the record.
pub trait Sink {
    fn start(&mut self, _: &StartRecord) -> io::Result<()> {
        Ok(())
    }
    fn signal(&mut self, _: &SignalRecord) -> io::Result<()> {
        Ok(())
    }
    fn dropped(&mut self, _: &Dropped) -> io::Result<()> {
        Ok(())
    }
    /// Whether this sink needs every drop's record and raw event (the pcap, the bundle):
    /// then no drop line is written from a template.
    fn needs_records(&self) -> bool {
        false
    }
    /// Learns the template of the lines of drops like `rec` (the next id, counted from 0 by
    /// every sink alike); false when this sink cannot write them from it.
    fn learn(&mut self, _: &DropRecord) -> bool {
        true
    }
    /// A drop like the one template `id` was learnt from, with these values.
    fn templated(&mut self, _: usize, _: &Vars) -> io::Result<()> {
        Ok(())
    }
    /// A storm's repeats of one flow, counted in the kernel (×N).
    fn flow(&mut self, _: &FlowLine) -> io::Result<()> {
        Ok(())
    }
    fn verdict(&mut self, _: &VerdictRecord) -> io::Result<()> {
        Ok(())
    }
    fn change(&mut self, _: &ChangeRecord) -> io::Result<()> {
        Ok(())
    }
    /// After the first verdict's state snapshot is on disk.
    fn checkpoint(&mut self) {}
    fn summary(&mut self, _: &SummaryRecord) -> io::Result<()> {
        Ok(())
    }
    /// About once a second, and once more after the summary.
    fn tick(&mut self, _: &Tally) {}
    /// Whether `tick` needs the kernel's counters (a walk of the counter map).
    fn wants_counters(&self) -> bool {
        false
    }
    /// After each batch of records drained from the ring.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The sinks of one run, in the order they receive each record.
#[derive(Default)]
pub struct Sinks<'w>(Vec<Box<dyn Sink + 'w>>);

impl<'w> Sinks<'w> {
    pub fn push(&mut self, sink: impl Sink + 'w) {
        self.0.push(Box::new(sink));
    }

    pub fn wants_counters(&self) -> bool {
        self.0.iter().any(|s| s.wants_counters())
    }

    /// Whether drop lines may be written from templates (no sink needs the records).
    pub fn take_templates(&self) -> bool {
        !self.0.iter().any(|s| s.needs_records())
    }
}

/// `Sinks` is a sink that hands each record to every sink, stopping at the first error.
impl Sink for Sinks<'_> {
    fn start(&mut self, r: &StartRecord) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.start(r))
    }
    fn signal(&mut self, r: &SignalRecord) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.signal(r))
    }
    fn dropped(&mut self, d: &Dropped) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.dropped(d))
    }
    fn learn(&mut self, rec: &DropRecord) -> bool {
        // Every sink learns it (no short circuit), so ids stay aligned even when one cannot
        // use it.
        let learnt: Vec<bool> = self.0.iter_mut().map(|s| s.learn(rec)).collect();
        learnt.into_iter().all(|ok| ok)
    }
    fn templated(&mut self, id: usize, v: &Vars) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.templated(id, v))
    }
    fn flow(&mut self, r: &FlowLine) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.flow(r))
    }
    fn verdict(&mut self, r: &VerdictRecord) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.verdict(r))
    }
    fn change(&mut self, r: &ChangeRecord) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.change(r))
    }
    fn checkpoint(&mut self) {
        self.0.iter_mut().for_each(|s| s.checkpoint())
    }
    fn summary(&mut self, r: &SummaryRecord) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.summary(r))
    }
    fn tick(&mut self, t: &Tally) {
        self.0.iter_mut().for_each(|s| s.tick(t))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.flush())
    }
}

impl<W: Write> Sink for Printer<W> {
    fn start(&mut self, r: &StartRecord) -> io::Result<()> {
        Printer::start(self, r)
    }
    fn signal(&mut self, r: &SignalRecord) -> io::Result<()> {
        self.signal_line(r)
    }
    fn dropped(&mut self, d: &Dropped) -> io::Result<()> {
        self.drop_line(d.rec)
    }
    fn learn(&mut self, rec: &DropRecord) -> bool {
        Printer::learn(self, rec)
    }
    fn templated(&mut self, id: usize, v: &Vars) -> io::Result<()> {
        self.templated_line(id, v)
    }
    fn flow(&mut self, r: &FlowLine) -> io::Result<()> {
        self.flow_line(r)
    }
    fn verdict(&mut self, r: &VerdictRecord) -> io::Result<()> {
        Printer::verdict(self, r)
    }
    fn change(&mut self, r: &ChangeRecord) -> io::Result<()> {
        Printer::change(self, r)
    }
    fn summary(&mut self, r: &SummaryRecord) -> io::Result<()> {
        Printer::summary(self, r)
    }
    fn flush(&mut self) -> io::Result<()> {
        Printer::flush(self)
    }
}

impl Sink for PcapSink {
    fn dropped(&mut self, d: &Dropped) -> io::Result<()> {
        self.write(d.packet, d.ev.len, d.rec, d.wall_ns)
    }
    fn needs_records(&self) -> bool {
        true
    }
    fn summary(&mut self, _: &SummaryRecord) -> io::Result<()> {
        PcapSink::flush(self)
    }
    fn flush(&mut self) -> io::Result<()> {
        PcapSink::flush(self)
    }
}

/// The bundle keeps every record, the packets, and a report rewritten at the first verdict
/// and at the end.
impl Sink for Bundle {
    fn start(&mut self, r: &StartRecord) -> io::Result<()> {
        self.record(r)?;
        Bundle::flush(self)
    }
    fn signal(&mut self, r: &SignalRecord) -> io::Result<()> {
        self.record(r)
    }
    fn dropped(&mut self, d: &Dropped) -> io::Result<()> {
        self.record(d.rec)?;
        self.pcap.write(d.packet, d.ev.len, d.rec, d.wall_ns)
    }
    fn needs_records(&self) -> bool {
        true
    }
    fn flow(&mut self, r: &FlowLine) -> io::Result<()> {
        self.record(r)
    }
    fn verdict(&mut self, r: &VerdictRecord) -> io::Result<()> {
        self.record(r)
    }
    fn change(&mut self, r: &ChangeRecord) -> io::Result<()> {
        self.record(r)
    }
    fn checkpoint(&mut self) {
        self.write_report();
    }
    fn summary(&mut self, r: &SummaryRecord) -> io::Result<()> {
        self.record(r)?;
        self.write_report();
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Bundle::flush(self)
    }
}

/// `--metrics`: the exporter serves whatever the last tick gave it.
pub struct MetricsSink(pub Exporter);

impl Sink for MetricsSink {
    fn tick(&mut self, t: &Tally) {
        if let Some(counters) = &t.counters {
            self.0.update(counters.clone());
        }
    }
    fn wants_counters(&self) -> bool {
        true
    }
}

/// One status line on a terminal's stderr, rewritten in place; never on a pipe and never with
/// --json (the caller only adds it then), so nothing a script reads is polluted.
pub struct Progress {
    shown: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            shown: Instant::now(),
        }
    }
}

impl Sink for Progress {
    fn tick(&mut self, t: &Tally) {
        if self.shown.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.shown = Instant::now();
        eprint!(
            "\r\x1b[2K[droptrace] {:.0} s · {} drop(s) seen · {} verdict(s) · {} change(s)",
            t.elapsed.as_secs_f64(),
            t.drops_seen,
            t.verdicts,
            t.changes
        );
    }
    fn summary(&mut self, _: &SummaryRecord) -> io::Result<()> {
        eprintln!();
        Ok(())
    }
}
