//! The changes a run sees (sysctl writes and iptables-legacy replacements from the kernel,
//! nf_tables generations from `nft monitor`), each with its author, kept to name the culprit
//! of a verdict.
use std::{
    io,
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tracer_common::ChangeEvent;

use super::observer::Observer;
use crate::{
    load::ebpf::Tracer,
    observe::{
        changes::{self, ChangeRecord, Generation, NftMonitor, Resolver},
        event,
        rtnl::{LinkChange, RtnlMonitor},
        state::iptables,
    },
    report::sink::Sink,
};

/// How many changes a run keeps (the oldest go first).
const KEPT: usize = 1024;

/// The changes seen so far and where they come from.
pub(super) struct ChangeLog {
    /// Oldest first.
    pub seen: Vec<ChangeRecord>,
    pub resolver: Resolver,
    pub monitor: Option<NftMonitor>,
    /// Address, route and link changes of the namespace.
    pub rtnl: Option<RtnlMonitor>,
    /// The last iptables-legacy rulesets seen, to tell what a table replacement removed.
    pub legacy_seen: Vec<iptables::Ruleset>,
    /// The recorder's journal, asked for a culprit no change of this run explains.
    pub journal: Option<PathBuf>,
}

impl ChangeLog {
    pub fn new(
        resolver: Resolver,
        (monitor, rtnl): (Option<NftMonitor>, Option<RtnlMonitor>),
        journal: Option<PathBuf>,
    ) -> Self {
        Self {
            seen: Vec::new(),
            resolver,
            monitor,
            rtnl,
            legacy_seen: Vec::new(),
            journal,
        }
    }

    /// The monitor's next nf_tables generation, if one is waiting.
    fn next_generation(&self) -> Option<Generation> {
        self.monitor
            .as_ref()
            .and_then(|m| m.generations.try_recv().ok())
    }

    fn next_link_change(&self) -> Option<LinkChange> {
        self.rtnl.as_ref().and_then(|m| m.changes.try_recv().ok())
    }

    /// Whether a source must be polled (its changes come on a channel, not a wakeup).
    pub fn polled(&self) -> bool {
        self.monitor.is_some() || self.rtnl.is_some()
    }
}

impl Observer<'_> {
    /// A kernel change event (sysctl write, iptables-legacy replace).
    async fn handle_change(&mut self, ev: &ChangeEvent, tracer: &Tracer) -> io::Result<()> {
        let time = event::rfc3339(self.namer.clock.wall(ev.ktime_ns));
        let lookup = |pid: u32| tracer.exec_identity(pid);
        let Some(mut rec) = changes::from_event(ev, time, &mut self.changes.resolver, &lookup)
        else {
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
    fn handle_generation(&mut self, g: Generation, tracer: &Tracer) -> io::Result<()> {
        let lookup = |pid: u32| tracer.exec_identity(pid);
        let process = self.changes.resolver.from_pid(g.pid, &g.comm, &lookup);
        let known = [Some(&self.before), self.latest.as_ref().map(|(_, s)| s)];
        let describe = |c: &str| {
            let rulesets = known.iter().flatten().map(|s| &s.nft);
            changes::describe_nft_change(c, rulesets)
        };
        let rec = changes::from_generation(&g, self.netns.inode, process, describe);
        self.record_change(rec)
    }

    /// An address, route or link change from rtnetlink.
    fn handle_link_change(&mut self, c: &LinkChange, tracer: &Tracer) -> io::Result<()> {
        let lookup = |pid: u32| tracer.exec_identity(pid);
        let rec =
            changes::from_link_change(c, self.netns.inode, &mut self.changes.resolver, &lookup);
        self.record_change(rec)
    }

    fn record_change(&mut self, rec: ChangeRecord) -> io::Result<()> {
        self.sinks.change(&rec)?;
        if self.changes.seen.len() >= KEPT {
            self.changes.seen.remove(0);
        }
        self.changes.seen.push(rec);
        Ok(())
    }

    /// Drains pending changes so that a drop is attributed with every change before it.
    pub async fn drain_changes(
        &mut self,
        changes_ring: &mut RingBuf<MapData>,
        tracer: &Tracer,
    ) -> io::Result<()> {
        while let Some(item) = changes_ring.next() {
            if let Some(ev) = event::decode_change(&item) {
                self.handle_change(&ev, tracer).await?;
            }
        }
        while let Some(g) = self.changes.next_generation() {
            self.handle_generation(g, tracer)?;
        }
        while let Some(c) = self.changes.next_link_change() {
            self.handle_link_change(&c, tracer)?;
        }
        Ok(())
    }

    /// Waits up to `wait` for the monitors' next change (an nf_tables generation, an
    /// rtnetlink change), serving the event loop meanwhile. Also when the run is ending: the
    /// last verdicts still deserve their culprit, and the wait is short.
    pub async fn wait_for_monitor(&mut self, tracer: &Tracer, wait: Duration) {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            let mut got = false;
            while let Some(g) = self.changes.next_generation() {
                let _ = self.handle_generation(g, tracer);
                got = true;
            }
            while let Some(c) = self.changes.next_link_change() {
                let _ = self.handle_link_change(&c, tracer);
                got = true;
            }
            if got {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What an iptables-legacy table replacement removed, against the last rules seen.
    async fn legacy_diff(&mut self, table: &str) -> Vec<String> {
        // The setsockopt hook fires before the kernel applies the new table.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = self.capture().await;
        let old_sets = if self.changes.legacy_seen.is_empty() {
            self.before
                .iptables
                .iter()
                .filter(|r| r.backend.ends_with("legacy"))
                .cloned()
                .collect()
        } else {
            self.changes.legacy_seen.clone()
        };
        let new_sets: Vec<iptables::Ruleset> = now
            .iptables
            .iter()
            .filter(|r| r.backend.ends_with("legacy"))
            .cloned()
            .collect();
        let out = changes::legacy_removed(&old_sets, &new_sets, table);
        self.changes.legacy_seen = new_sets;
        out
    }
}
