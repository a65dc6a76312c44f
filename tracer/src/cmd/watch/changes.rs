//! The changes a run sees (sysctl writes and iptables-legacy replacements from the kernel,
//! nf_tables generations from `nft monitor`), each with its author, kept to name the culprit
//! of a verdict.
use std::{
    io,
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
    /// The last iptables-legacy rulesets seen, to tell what a table replacement removed.
    pub legacy_seen: Vec<iptables::Ruleset>,
}

impl ChangeLog {
    pub fn new(resolver: Resolver, monitor: Option<NftMonitor>) -> Self {
        Self {
            seen: Vec::new(),
            resolver,
            monitor,
            legacy_seen: Vec::new(),
        }
    }

    /// The monitor's next nf_tables generation, if one is waiting.
    fn next_generation(&self) -> Option<Generation> {
        self.monitor
            .as_ref()
            .and_then(|m| m.generations.try_recv().ok())
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
        Ok(())
    }

    /// Waits up to `wait` for the monitor's next generation, serving the event loop meanwhile.
    /// Also when the run is ending: the last verdicts still deserve their culprit, and the wait
    /// is short.
    pub async fn wait_for_monitor(&mut self, tracer: &Tracer, wait: Duration) {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(g) = self.changes.next_generation() {
                let _ = self.handle_generation(g, tracer);
                while let Some(g) = self.changes.next_generation() {
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
        self.changes.legacy_seen = new_sets;
        out
    }
}
