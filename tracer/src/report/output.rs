//! Printing: one aligned human line per drop, or JSON Lines (`--json`), each object with a
//! `"type"`. Field names are a contract with users' scripts: add, never rename.
use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use serde::Serialize;

use super::fastline::{Template, TimeText, Vars};
use crate::{
    attribute::verdict::VerdictRecord,
    observe::changes::ChangeRecord,
    observe::event::{DropRecord, SignalRecord},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Human,
    /// Human, without the start banner.
    HumanQuiet,
    Json,
}

/// `{"type":"start",…}`: what is watched, with which hook, and what precision was lost.
#[derive(Clone, Debug, Serialize)]
pub struct StartRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time: String,
    pub version: &'static str,
    pub kernel: String,
    pub netns: u32,
    pub netns_name: String,
    pub ports: Vec<u16>,
    pub addrs: Vec<String>,
    pub hook: &'static str,
    /// Optional signal tracepoints attached (`icmp_send`, `tcp_send_reset`).
    pub signals: Vec<&'static str>,
    /// Published ports being watched, with their containers (from the engine or DNAT rules).
    pub published: Vec<crate::discover::PublishedPort>,
    pub engine: Option<crate::discover::Engine>,
    pub notes: Vec<String>,
}

/// One exact counter: packets dropped with `reason` on watched `port`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CounterRecord {
    pub reason: String,
    pub port: u16,
    pub proto: String,
    pub packets: u64,
}

/// `{"type":"summary",…}`: closes every run.
#[derive(Clone, Debug, Serialize)]
pub struct SummaryRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time: String,
    pub duration_s: f64,
    /// Exact count of watched drops (kernel counters, independent of the ring).
    pub drops: u64,
    /// Drop events delivered to userspace.
    pub events: u64,
    /// Drop events the ring buffer could not take (their drops are still in `drops`).
    pub lost: u64,
    /// Signal events (ICMP errors, RSTs sent) the ring buffer could not take.
    pub signals_lost: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub by_port: BTreeMap<u16, u64>,
    pub counters: Vec<CounterRecord>,
    /// Drops missing from `counters` because the counter map was full.
    pub uncounted: u64,
    /// Kernel reads of skb/headers that failed.
    pub read_errors: u64,
    /// `--snaplen`: captured drops whose payload bytes were lost (a full perf buffer), so
    /// their packets hold the linear part only.
    pub payload_lost: u64,
    pub hook: &'static str,
    /// Per watched port: what the kernel did with its packets.
    pub flows: Vec<FlowRecord>,
    /// Late FINs and RSTs of connections already closed (TIME_WAIT answers and discards
    /// them): counted here, not reported as drops, unless `--include-teardown`.
    pub teardown: u64,
    /// Drop events delivered (one "drop" line each).
    pub drop_events: u64,
    /// Drops the kernel only counted (in-kernel aggregation), reported in "flow" lines:
    /// `drops` = `drop_events` + `lost` + `aggregated` (+ `uncounted`).
    pub aggregated: u64,
    /// Flows of drops the kernel aggregated.
    pub drop_flows: u64,
    /// Drops and answers counted in no flow (the flow map was full): each was sent as an
    /// event of its own.
    pub flow_map_full: u64,
}

/// `{"type":"flow",…}`: a flow's drops the kernel counted without sending each (a storm's
/// repeats), emitted about once a second while it grows. `packets` is the flow's exact
/// total so far; `lines` of them were drop lines of their own; `new` more since its last
/// flow line.
#[derive(Clone, Debug, Serialize)]
pub struct FlowLine {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The flow's latest drop, and its first.
    pub time: String,
    pub first: String,
    pub netns: u32,
    pub family: &'static str,
    pub proto: String,
    pub src: String,
    pub dst: String,
    /// The watched port, and whether it is the packets' source (replies) or destination.
    pub port: u16,
    pub port_is_source: bool,
    pub reason: Option<String>,
    pub reason_code: u32,
    pub inferred_reason: Option<crate::observe::infer::Inferred>,
    pub location: String,
    pub function: Option<String>,
    pub nf_hook: Option<&'static str>,
    pub dnat: Option<bool>,
    /// The verdict cause of the flow's drops (from its first drop line).
    pub cause: Option<String>,
    pub container: Option<String>,
    pub packets: u64,
    pub lines: u64,
    pub aggregated: u64,
    pub new: u64,
}

/// One watched port's traffic over the run: forwarded to the container (exact, from the
/// transmit hook), dropped (exact), answered with an ICMP error or RST (events seen), and
/// the routing lookups the kernel made for it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FlowRecord {
    pub port: u16,
    pub proto: String,
    pub forwarded: u64,
    pub dropped: u64,
    pub answered: u64,
    pub routed_forward: u64,
    pub routed_local: u64,
    pub route_failed: u64,
}

pub struct Printer<W: Write> {
    out: W,
    format: Format,
    header_done: bool,
    /// Drop-line templates of a storm's flows (see `fastline`), the clock text and the
    /// buffer they are written with.
    templates: Vec<Option<Template>>,
    clock: TimeText,
    scratch: Vec<u8>,
    /// Human mode: the closing verdicts, printed as one table under the summary (their
    /// blocks were shown as they happened).
    totals: Vec<VerdictRecord>,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, format: Format) -> Self {
        Self {
            out,
            format,
            header_done: false,
            totals: Vec::new(),
            templates: Vec::new(),
            clock: TimeText::default(),
            scratch: Vec::with_capacity(1024),
        }
    }

    fn json<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")
    }

    /// Drop and signal lines are buffered; the watch loop flushes after each batch it drains,
    /// and every other kind of line flushes at once.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn start(&mut self, start: &StartRecord) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(start).and_then(|_| self.out.flush()),
            // Human mode: the banner is for the operator, on stderr, so stdout stays drops.
            Format::HumanQuiet => Ok(()),
            Format::Human => {
                let mut what: Vec<String> =
                    start.ports.iter().map(|p| format!("port {p}")).collect();
                what.extend(start.addrs.iter().cloned());
                eprintln!(
                    "droptrace {}: watching {} in netns {} (inode {}) via {}; Ctrl-C to stop",
                    start.version,
                    what.join(", "),
                    start.netns_name,
                    start.netns,
                    start.hook
                );
                for note in &start.notes {
                    eprintln!("  note: {note}");
                }
                Ok(())
            }
        }
    }

    /// A verdict: the cause in one sentence, then where, the evidence and the fix.
    pub fn verdict(&mut self, v: &VerdictRecord) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(v).and_then(|_| self.out.flush()),
            Format::Human | Format::HumanQuiet if v.is_final => {
                self.totals.push(v.clone());
                Ok(())
            }
            Format::Human | Format::HumanQuiet => {
                writeln!(
                    self.out,
                    "\nVERDICT port {}/{}: {} — {}",
                    v.port, v.proto, v.cause, v.sentence
                )?;
                writeln!(
                    self.out,
                    "  packets:  {} (first {}, last {})",
                    v.packets, v.first, v.last
                )?;
                let p = &v.proximate;
                writeln!(
                    self.out,
                    "  where:    {}{} at {}, hook {}, dnat {}{}",
                    p.reason,
                    p.reason_inferred_from
                        .as_deref()
                        .map(|f| format!(" (inferred from {f}: this kernel reports no reason)"))
                        .unwrap_or_default(),
                    p.location,
                    p.hook.as_deref().unwrap_or("unknown"),
                    p.dnat.map_or("unknown".to_string(), |d| d.to_string()),
                    p.icmp
                        .as_deref()
                        .map(|i| format!(", answered {i}"))
                        .unwrap_or_default()
                )?;
                if let Some(rule) = &p.rule {
                    writeln!(self.out, "  rule:     {rule}")?;
                }
                for rule in &p.rule_candidates {
                    writeln!(self.out, "  rule?:    {rule}")?;
                }
                for e in &v.evidence {
                    writeln!(self.out, "  evidence: {e}")?;
                }
                if let Some(c) = &v.culprit {
                    writeln!(self.out, "  culprit:  {}", super::words::culprit_line(c))?;
                } else if let Some(note) = &v.culprit_note {
                    writeln!(self.out, "  culprit:  unknown — {note}")?;
                }
                writeln!(self.out, "  fix:      {}", v.fix)?;
                if let Some(persist) = &v.fix_persistent {
                    writeln!(self.out, "  persist:  {persist}")?;
                }
                self.out.flush()
            }
        }
    }

    /// A change to forwarding or the firewall, with its author.
    pub fn change(&mut self, c: &ChangeRecord) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(c).and_then(|_| self.out.flush()),
            Format::Human | Format::HumanQuiet => {
                writeln!(
                    self.out,
                    "CHANGE {} {}: {} by {}",
                    c.time.get(11..26).unwrap_or(&c.time),
                    c.source,
                    c.what,
                    c.process.chain()
                )?;
                self.out.flush()
            }
        }
    }

    /// ICMP errors and RSTs: JSON only; the human view shows them inside verdicts.
    pub fn signal_line(&mut self, rec: &SignalRecord) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(rec),
            Format::Human | Format::HumanQuiet => Ok(()),
        }
    }

    fn header(&mut self) -> io::Result<()> {
        if !std::mem::replace(&mut self.header_done, true) {
            writeln!(
                self.out,
                "{:<15} {:<10} {:<10} {:<5} {:<45} {:<9} {:<20} LOCATION",
                "TIME", "NETNS", "IFACE", "PROTO", "SOURCE -> DESTINATION", "FLAGS", "REASON"
            )?;
        }
        Ok(())
    }

    /// A flow's repeats: in the drop table, `×N` in the IFACE column (N more drops like the
    /// lines above), its total at the end.
    pub fn flow_line(&mut self, f: &FlowLine) -> io::Result<()> {
        if self.format == Format::Json {
            return self.json(f);
        }
        self.header()?;
        let (src, dst) = if f.port_is_source {
            (endpoint(&f.src, f.port), f.dst.clone())
        } else {
            (f.src.clone(), endpoint(&f.dst, f.port))
        };
        writeln!(
            self.out,
            "{:<15} {:<10} {:<10} {:<5} {:<45} {:<9} {:<20} {} ({} in all)",
            f.time.get(11..26).unwrap_or(&f.time),
            f.netns,
            format!("×{}", f.new),
            f.proto,
            format!("{src} -> {dst}"),
            "-",
            f.reason.clone().unwrap_or_else(|| format!(
                "~{}",
                f.inferred_reason
                    .as_ref()
                    .map_or(crate::load::kernel::btf::UNREPORTED, |i| i.reason)
            )),
            f.location,
            f.packets
        )
    }

    /// Learns the template of lines like `rec`'s (its id is the count learnt before).
    pub fn learn(&mut self, rec: &DropRecord) -> bool {
        let t = match self.format {
            Format::Json => Template::json(rec),
            Format::Human | Format::HumanQuiet => Some(Template::human(rec)),
        };
        let ok = t.is_some();
        self.templates.push(t);
        ok
    }

    /// A drop line from template `id` (learnt after the line of the flow's first drop, so the
    /// header is out).
    pub fn templated_line(&mut self, id: usize, v: &Vars) -> io::Result<()> {
        match self.templates.get(id) {
            Some(Some(t)) => t.write(&mut self.out, v, &mut self.clock, &mut self.scratch),
            _ => Err(io::Error::other(format!("no drop-line template {id}"))),
        }
    }

    pub fn drop_line(&mut self, rec: &DropRecord) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(rec),
            Format::Human | Format::HumanQuiet => {
                self.header()?;
                let time = rec.time.get(11..26).unwrap_or(&rec.time);
                let flow = format!(
                    "{} -> {}",
                    endpoint(&rec.src, rec.sport),
                    endpoint(&rec.dst, rec.dport)
                );
                let flags = rec
                    .tcp_flags
                    .as_deref()
                    .or(rec.icmp.as_deref())
                    .unwrap_or("-");
                writeln!(
                    self.out,
                    "{:<15} {:<10} {:<10} {:<5} {:<45} {:<9} {:<20} {}",
                    time,
                    rec.netns,
                    rec.ifname,
                    rec.proto,
                    flow,
                    flags,
                    // `~`: inferred from the freeing function (a kernel without reasons).
                    match &rec.reason {
                        Some(r) => r.clone(),
                        None => format!("~{}", rec.reason_name()),
                    },
                    rec.location
                )
            }
        }
    }

    /// The run's verdicts with their exact totals, one line each (human mode).
    fn verdict_totals(&mut self) -> io::Result<()> {
        if self.totals.is_empty() {
            return Ok(());
        }
        writeln!(
            self.out,
            "  verdicts (each shown above when it began):\n    {:<22} {:<11} {:>10}  {:<12}  LAST",
            "CAUSE", "PORT", "PACKETS", "FIRST"
        )?;
        let time = |t: &str| t.get(11..23).unwrap_or(t).to_string();
        for v in std::mem::take(&mut self.totals) {
            writeln!(
                self.out,
                "    {:<22} {:<11} {:>10}  {:<12}  {}",
                v.cause,
                format!("{}/{}", v.port, v.proto),
                v.packets,
                time(&v.first),
                time(&v.last)
            )?;
        }
        Ok(())
    }

    pub fn summary(&mut self, sum: &SummaryRecord) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(sum).and_then(|_| self.out.flush()),
            Format::Human | Format::HumanQuiet => {
                writeln!(
                    self.out,
                    "\n-- summary: {:.1} s, {} watched drop(s), {} event(s) delivered, {} lost --",
                    sum.duration_s, sum.drops, sum.events, sum.lost
                )?;
                for c in &sum.counters {
                    writeln!(
                        self.out,
                        "  {:>10}  {:<24} port {}/{}",
                        c.packets, c.reason, c.port, c.proto
                    )?;
                }
                if sum.drops == 0 {
                    writeln!(self.out, "  no watched packet was dropped")?;
                }
                if sum.aggregated > 0 {
                    writeln!(
                        self.out,
                        "  {} drop(s) of {} flow(s) counted in the kernel and shown as ×N lines (--every-drop prints each)",
                        sum.aggregated, sum.drop_flows
                    )?;
                }
                for f in &sum.flows {
                    writeln!(
                        self.out,
                        "  port {}/{}: {} forwarded, {} dropped, {} answered; routing lookups: {} to a forwarding path, {} local, {} failed",
                        f.port,
                        f.proto,
                        f.forwarded,
                        f.dropped,
                        f.answered,
                        f.routed_forward,
                        f.routed_local,
                        f.route_failed
                    )?;
                }
                if sum.teardown > 0 {
                    writeln!(
                        self.out,
                        "  {} late FIN/RST segment(s) of closed connections not counted as drops (normal teardown; --include-teardown shows them)",
                        sum.teardown
                    )?;
                }
                self.verdict_totals()?;
                if sum.lost > 0 {
                    writeln!(
                        self.out,
                        "  {} event(s) did not fit the ring buffer; the counts above are still exact",
                        sum.lost
                    )?;
                }
                self.out.flush()
            }
        }
    }
}

fn endpoint(addr: &str, port: u16) -> String {
    match (addr.contains(':'), port) {
        (_, 0) => addr.to_string(),
        (true, p) => format!("[{addr}]:{p}"),
        (false, p) => format!("{addr}:{p}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> DropRecord {
        DropRecord {
            kind: "drop",
            time: "2026-11-25T09:41:02.123456789Z".into(),
            netns: 4026532285,
            ifindex: 2,
            ifname: "eth-ext".into(),
            family: "ipv4",
            proto: "tcp".into(),
            src: "198.51.100.2".into(),
            sport: 40000,
            dst: "198.51.100.1".into(),
            dport: 5000,
            reason: Some("NO_SOCKET".into()),
            inferred_reason: None,
            location: "tcp_v4_rcv+0x1b2".into(),
            reason_code: 3,
            tcp_flags: Some("SYN".into()),
            icmp: None,
            len: 60,
            function: Some("tcp_v4_rcv".into()),
            hook: Some("socket".into()),
            dnat: Some(false),
            orig_dst: None,
            orig_dport: None,
            answered: Some("RST".into()),
            cause: None,
            container: None,
            nf_hook: None,
            nf_trail: 0,
            ktime_ns: 0,
        }
    }

    #[test]
    fn json_drop_line_keeps_the_contract_fields() {
        let mut buf = Vec::new();
        Printer::new(&mut buf, Format::Json)
            .drop_line(&record())
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for key in [
            "type", "time", "netns", "ifindex", "ifname", "family", "proto", "src", "sport", "dst",
            "dport", "reason", "location",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {text}");
        }
        assert_eq!(v["type"], "drop");
        assert_eq!(v["dport"], 5000);
    }

    #[test]
    fn human_line_shows_the_flow_and_reason() {
        let mut buf = Vec::new();
        let mut p = Printer::new(&mut buf, Format::Human);
        p.drop_line(&record()).unwrap();
        let mut v6 = record();
        v6.src = "2001:db8:1::2".into();
        v6.dst = "2001:db8:1::1".into();
        p.drop_line(&v6).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("TIME"));
        assert!(
            lines[1].contains("198.51.100.2:40000 -> 198.51.100.1:5000"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains("NO_SOCKET") && lines[1].contains("09:41:02.123456"));
        assert!(lines[2].contains("[2001:db8:1::2]:40000 -> [2001:db8:1::1]:5000"));
        // Aligned: the reason column starts at the same place on both lines.
        assert_eq!(lines[1].find("NO_SOCKET"), lines[2].find("NO_SOCKET"));
    }
}
