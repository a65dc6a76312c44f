//! Verdicts over a run: drops grouped by (port, cause), streamed when a group first appears and
//! repeated with totals at the end. The `{"type":"verdict",…}` fields are a contract.
use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::{
    attribute::{Attribution, Cause},
    observe::changes::ChangeRecord,
    observe::event::DropRecord,
};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Proximate {
    /// The kernel's reason, or on a kernel that reports none the one inferred from the
    /// freeing function (then named in `reason_inferred_from`).
    pub reason: String,
    pub reason_inferred_from: Option<String>,
    pub location: String,
    pub hook: Option<String>,
    pub dnat: Option<bool>,
    pub rule: Option<String>,
    pub icmp: Option<String>,
    /// When several rules could have dropped it and nothing tells them apart, all of them
    /// (and `rule` is null).
    pub rule_candidates: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct VerdictRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub cause: &'static str,
    pub port: u16,
    pub proto: String,
    pub packets: u64,
    pub first: String,
    pub last: String,
    pub proximate: Proximate,
    pub evidence: Vec<String>,
    pub fix: String,
    /// Additional fields.
    pub sentence: String,
    pub fix_persistent: Option<String>,
    pub netns: u32,
    /// The container the port is published to, when known.
    pub container: Option<String>,
    /// false when streamed at the first drop, true in the closing totals.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// The change (and its author) that caused it, when droptrace saw it happen.
    pub culprit: Option<ChangeRecord>,
    /// Why there is no culprit, and where to look instead.
    pub culprit_note: Option<String>,
}

/// The proximate reason of a verdict whose packets were routed away, not dropped here.
pub const ROUTED_AWAY: &str = "ROUTED_AWAY";
/// The proximate reason of a verdict whose replies cross a bridge untracked (routed back
/// out the bridge they came in on), not dropped here.
pub const REPLY_BRIDGED: &str = "REPLY_BRIDGED";

/// Where and when a verdict's first packet was seen.
pub struct Seen<'a> {
    pub port: u16,
    pub proto: &'a str,
    pub time: &'a str,
    pub netns: u32,
    pub container: Option<String>,
}

/// What identifies "the same kind of drop", so the engine runs once per kind, not per packet.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Signature {
    pub port: u16,
    pub reason: String,
    pub function: Option<String>,
    pub dnat: Option<bool>,
    pub dst: String,
    pub answered: bool,
    pub nf_hook: Option<&'static str>,
}

impl Signature {
    pub fn of(port: u16, d: &DropRecord) -> Self {
        Self {
            port,
            reason: d.reason_name().to_string(),
            function: d.function.clone(),
            dnat: d.dnat,
            dst: d.dst.clone(),
            answered: d.answered.is_some(),
            nf_hook: d.nf_hook,
        }
    }
}

/// The reason the kernel's exact counters file a verdict's drops under: its own, or on a
/// kernel that reports none, the one name all its drops share.
fn counted_as(v: &VerdictRecord) -> &str {
    match v.proximate.reason_inferred_from {
        Some(_) => crate::load::kernel::btf::UNREPORTED,
        None => &v.proximate.reason,
    }
}

#[derive(Default)]
pub struct Book {
    by_signature: HashMap<Signature, Attribution>,
    groups: BTreeMap<(u16, Cause), VerdictRecord>,
}

impl Book {
    pub fn known(&self, sig: &Signature) -> Option<&Attribution> {
        self.by_signature.get(sig)
    }

    pub fn learn(&mut self, sig: Signature, a: Attribution) {
        self.by_signature.insert(sig, a);
    }

    /// Adds one drop; returns the verdict to stream when it opens a new (port, cause) group.
    pub fn add(&mut self, port: u16, d: &DropRecord, a: &Attribution) -> Option<VerdictRecord> {
        let key = (port, a.cause);
        if let Some(v) = self.groups.get_mut(&key) {
            v.packets += 1;
            v.last = d.time.clone();
            return None;
        }
        let proximate = Proximate {
            reason: d.reason_name().to_string(),
            reason_inferred_from: d.inferred_reason.as_ref().map(|i| i.function.clone()),
            location: d.location.clone(),
            hook: a.hook.map(|h| h.name().to_string()),
            dnat: d.dnat,
            rule: a.rule.clone(),
            icmp: a.icmp.clone(),
            rule_candidates: a.rule_candidates.clone(),
        };
        let at = Seen {
            port,
            proto: &d.proto,
            time: &d.time,
            netns: d.netns,
            container: d.container.clone(),
        };
        Some(self.open(at, proximate, a))
    }

    /// A verdict no drop in the namespace makes, from the kernel's routing decision: packets
    /// routed away from where they belong (`route_lost`, reason `ROUTED_AWAY`) or back out
    /// the bridge they came in on while bridged replies skip netfilter
    /// (`bridge_netfilter_off`, `REPLY_BRIDGED`), at `fib_table_lookup`; None when the (port,
    /// cause) is open already.
    pub fn add_routed(&mut self, at: Seen, a: &Attribution) -> Option<VerdictRecord> {
        if self.groups.contains_key(&(at.port, a.cause)) {
            return None;
        }
        let proximate = Proximate {
            reason: match a.cause {
                Cause::BridgeNetfilterOff => REPLY_BRIDGED,
                _ => ROUTED_AWAY,
            }
            .into(),
            reason_inferred_from: None,
            location: "fib_table_lookup".into(),
            hook: a.hook.map(|h| h.name().to_string()),
            dnat: Some(true),
            rule: None,
            icmp: None,
            rule_candidates: Vec::new(),
        };
        Some(self.open(at, proximate, a))
    }

    fn open(&mut self, at: Seen, proximate: Proximate, a: &Attribution) -> VerdictRecord {
        let v = VerdictRecord {
            kind: "verdict",
            cause: a.cause.name(),
            port: at.port,
            proto: at.proto.to_string(),
            packets: 1,
            first: at.time.to_string(),
            last: at.time.to_string(),
            proximate,
            evidence: a.evidence.clone(),
            fix: a.fix.clone(),
            sentence: a.sentence.clone(),
            fix_persistent: a.fix_persistent.clone(),
            netns: at.netns,
            container: at.container,
            is_final: false,
            culprit: None,
            culprit_note: None,
        };
        self.groups.insert((at.port, a.cause), v.clone());
        v
    }

    /// Drops the kernel counted without sending (a storm's repeats of a flow whose first
    /// drops made this (port, cause) verdict), the latest at `last`.
    pub fn add_counted(&mut self, port: u16, cause: Cause, packets: u64, last: &str) {
        if let Some(v) = self.groups.get_mut(&(port, cause)) {
            v.packets += packets;
            if last > v.last.as_str() {
                v.last = last.to_string();
            }
        }
    }

    /// The closing verdicts. `exact` gives the kernel's exact count per (reason, port): a group
    /// that is the only one counted under its reason on its port takes it (events may have
    /// been lost).
    pub fn finish(&self, exact: &BTreeMap<(String, u16), u64>) -> Vec<VerdictRecord> {
        let mut out: Vec<VerdictRecord> = self.groups.values().cloned().collect();
        for v in &mut out {
            v.is_final = true;
            let key = counted_as(v);
            let same = self
                .groups
                .values()
                .filter(|o| o.port == v.port && counted_as(o) == key)
                .count();
            if same == 1
                && let Some(n) = exact.get(&(key.to_string(), v.port))
            {
                v.packets = v.packets.max(*n);
            }
        }
        out
    }

    pub fn set_culprit(
        &mut self,
        port: u16,
        cause: Cause,
        culprit: Option<ChangeRecord>,
        note: Option<String>,
    ) {
        if let Some(v) = self.groups.get_mut(&(port, cause)) {
            v.culprit = culprit;
            v.culprit_note = note;
        }
    }

    /// (port, cause name, the reason the kernel counts its drops under) of every open verdict.
    pub fn groups(&self) -> Vec<(u16, &'static str, String)> {
        self.groups
            .values()
            .map(|v| (v.port, v.cause, counted_as(v).to_string()))
            .collect()
    }

    /// Whether the (port, cause) verdict is open.
    pub fn has(&self, port: u16, cause: Cause) -> bool {
        self.groups.contains_key(&(port, cause))
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}
