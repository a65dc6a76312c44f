//! Evidence to hand over: the dropped packets' headers as pcapng (`--pcap`), and a bundle
//! directory (`--evidence DIR`) with every JSON line, the verdicts, the packets, snapshots of
//! the namespace's state at start and at the first verdict, and a `report.md`. Files are 0600
//! and written as the run goes, so an interrupted run still leaves a readable bundle.
use std::{
    borrow::Cow,
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use pcap_file::{
    DataLink,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
    },
};
use serde_json::Value;
use tracer_common::HDR_LEN;

use crate::{discover::netns::Netns, error::Error, observe::event::DropRecord};

/// Creates (or truncates) a file readable by its owner only.
pub fn private_file(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Unwritable {
            path: path.display().to_string(),
            why: e.to_string(),
        })
}

/// Dropped packets' headers as pcapng: raw IP (LINKTYPE_RAW), one interface block per
/// (namespace, interface), the drop reason and place in each packet's comment.
pub struct PcapSink {
    writer: PcapNgWriter<BufWriter<File>>,
    interfaces: HashMap<(u32, u32), u32>,
    /// The most bytes a packet block holds (the interfaces' snaplen).
    snaplen: u32,
}

impl PcapSink {
    /// `snaplen`: `--snaplen`, or None for headers only.
    pub fn create(path: &Path, snaplen: Option<u32>) -> Result<Self, Error> {
        let file = private_file(path)?;
        let writer = PcapNgWriter::new(BufWriter::new(file)).map_err(|e| Error::Unwritable {
            path: path.display().to_string(),
            why: e.to_string(),
        })?;
        Ok(Self {
            writer,
            interfaces: HashMap::new(),
            snaplen: snaplen.map_or(HDR_LEN as u32, |n| n.max(HDR_LEN as u32)),
        })
    }

    fn interface(&mut self, netns: u32, ifindex: u32, ifname: &str) -> std::io::Result<u32> {
        if let Some(id) = self.interfaces.get(&(netns, ifindex)) {
            return Ok(*id);
        }
        let id = self.interfaces.len() as u32;
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::RAW,
            snaplen: self.snaplen,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(ifname.to_string())),
                InterfaceDescriptionOption::IfDescription(Cow::Owned(format!(
                    "{ifname} (ifindex {ifindex}) in network namespace {netns}, headers captured by droptrace at kfree_skb"
                ))),
            ],
        };
        self.writer
            .write_pcapng_block(idb)
            .map_err(std::io::Error::other)?;
        self.interfaces.insert((netns, ifindex), id);
        Ok(id)
    }

    /// One packet: `packet` is what was captured from its IP header, `original_len` its
    /// length on the wire.
    pub fn write(
        &mut self,
        packet: &[u8],
        original_len: u32,
        rec: &DropRecord,
        wall_ns: i64,
    ) -> std::io::Result<()> {
        let len = packet.len();
        if len == 0 {
            return Ok(());
        }
        let id = self.interface(rec.netns, rec.ifindex, &rec.ifname)?;
        let comment = format!(
            "droptrace: reason={}{} location={} netns={} ifname={} hook={} dnat={} cause={}",
            rec.reason_name(),
            if rec.reason.is_none() {
                " (inferred: this kernel reports no reason)"
            } else {
                ""
            },
            rec.location,
            rec.netns,
            rec.ifname,
            rec.hook.as_deref().unwrap_or("-"),
            rec.dnat.map_or("-".into(), |d| d.to_string()),
            rec.cause.as_deref().unwrap_or("-"),
        );
        let epb = EnhancedPacketBlock {
            interface_id: id,
            timestamp: Duration::from_nanos(wall_ns.max(0) as u64),
            original_len: original_len.max(len as u32),
            data: Cow::Borrowed(packet),
            options: vec![EnhancedPacketOption::Comment(Cow::Owned(comment))],
        };
        self.writer
            .write_pcapng_block(epb)
            .map_err(std::io::Error::other)?;
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.writer.get_mut().flush()
    }
}

/// The `--evidence DIR` bundle.
pub struct Bundle {
    pub dir: PathBuf,
    events: BufWriter<File>,
    pub pcap: PcapSink,
    records: Vec<Value>,
}

impl Bundle {
    pub fn create(dir: &Path, snaplen: Option<u32>) -> Result<Self, Error> {
        let unwritable = |e: std::io::Error| Error::Unwritable {
            path: dir.display().to_string(),
            why: e.to_string(),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(unwritable)?;
        let events = BufWriter::new(private_file(&dir.join("events.jsonl"))?);
        let pcap = PcapSink::create(&dir.join("drops.pcapng"), snaplen)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            events,
            pcap,
            records: Vec::new(),
        })
    }

    /// Appends one JSON record (any `"type"`); verdicts, changes and the summary are kept for
    /// the report. Drop lines are not kept in memory: they are in events.jsonl.
    pub fn record<T: serde::Serialize>(&mut self, value: &T) -> std::io::Result<()> {
        let v = serde_json::to_value(value).map_err(std::io::Error::other)?;
        serde_json::to_writer(&mut self.events, &v).map_err(std::io::Error::other)?;
        self.events.write_all(b"\n")?;
        let kind = v["type"].as_str().unwrap_or_default();
        if matches!(kind, "start" | "verdict" | "change" | "summary") {
            self.records.push(v);
        }
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.events.flush()?;
        self.pcap.flush()
    }

    /// Where the bundle is written.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn write_report(&mut self) {
        let _ = self.flush();
        if let Ok(mut f) = private_file(&self.dir.join("report.md")) {
            let _ = f.write_all(render_report(&self.records).as_bytes());
        }
        let verdicts: Vec<&Value> = self
            .records
            .iter()
            .filter(|r| r["type"] == "verdict")
            .collect();
        if let Ok(mut f) = private_file(&self.dir.join("verdicts.json")) {
            let _ = serde_json::to_writer_pretty(&mut f, &verdicts);
        }
    }
}

/// The namespace's state, as the tools print it, into `DIR/snapshot-{label}/`. It runs several
/// tools (bounded by netns::TOOL_LIMIT each): call it off the event loop.
pub fn write_snapshot(bundle_dir: &Path, label: &str, ns: &Netns, ports: &[u16], notes: &[String]) {
    let dir = bundle_dir.join(format!("snapshot-{label}"));

    if std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .is_err()
    {
        return;
    }
    let mut commands: Vec<(String, Vec<String>)> = vec![
        (
            "iptables-nft-save.txt".into(),
            vec!["iptables-nft-save".into(), "-c".into()],
        ),
        (
            "iptables-legacy-save.txt".into(),
            vec!["iptables-legacy-save".into(), "-c".into()],
        ),
        (
            "ip6tables-nft-save.txt".into(),
            vec!["ip6tables-nft-save".into(), "-c".into()],
        ),
        (
            "nft-ruleset.json".into(),
            vec!["nft".into(), "-j".into(), "list".into(), "ruleset".into()],
        ),
        (
            "ip-addr.json".into(),
            vec!["ip".into(), "-j".into(), "addr".into()],
        ),
        (
            "ip-link.json".into(),
            vec!["ip".into(), "-j".into(), "-s".into(), "link".into()],
        ),
        (
            "ip-route.json".into(),
            vec![
                "ip".into(),
                "-j".into(),
                "route".into(),
                "show".into(),
                "table".into(),
                "all".into(),
            ],
        ),
        (
            "sysctl-net.txt".into(),
            vec![
                "sysctl".into(),
                "-a".into(),
                "-r".into(),
                "forwarding|ip_forward|rp_filter|bridge-nf|nf_conntrack_(count|max|buckets|tcp_be_liberal)".into(),
            ],
        ),
        (
            "conntrack-stats.txt".into(),
            vec!["conntrack".into(), "-S".into()],
        ),
    ];
    for port in ports {
        commands.push((
            format!("conntrack-port-{port}.txt"),
            ["conntrack", "-L", "-p", "tcp", "--dport", &port.to_string()]
                .map(String::from)
                .to_vec(),
        ));
    }
    for (file, args) in commands {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let text = match ns.tool_output(&argv) {
            Ok(o) => {
                let mut t = o.stdout;
                if !o.status.success() {
                    t.extend_from_slice(
                        format!("\n# `{}` exited {}: ", args.join(" "), o.status).as_bytes(),
                    );
                    t.extend_from_slice(&o.stderr);
                }
                t
            }
            Err(e) => format!("# `{}` could not run: {e}\n", args.join(" ")).into_bytes(),
        };
        if let Ok(mut f) = private_file(&dir.join(file)) {
            let _ = f.write_all(&text);
        }
    }
    let kernel = format!(
        "kernel: {}\nnetns: {} (inode {})\nnotes (what this kernel lacks, what droptrace did):\n{}\n",
        crate::load::kernel::release(),
        ns.name,
        ns.inode,
        notes.iter().map(|n| format!("- {n}\n")).collect::<String>()
    );
    if let Ok(mut f) = private_file(&dir.join("kernel.txt")) {
        let _ = f.write_all(kernel.as_bytes());
    }
}

/// Reads a bundle's events.jsonl (for `droptrace report DIR`).
pub fn read_records(dir: &Path) -> Result<Vec<Value>, Error> {
    let path = dir.join("events.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::NotABundle {
        path: dir.display().to_string(),
        why: format!("{}: {e}", path.display()),
    })?;
    // A run interrupted mid-line leaves a partial last line: skip what does not parse.
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| !matches!(v["type"].as_str(), Some("drop" | "signal" | "flow")))
        .collect())
}

/// The human report of a run, from its records.
pub fn render_report(records: &[Value]) -> String {
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    let mut out = String::from("# droptrace report\n\n");
    if let Some(start) = records.iter().find(|r| r["type"] == "start") {
        out.push_str(&format!(
            "- started: {}\n- kernel: {}\n- network namespace: {} (inode {})\n- ports: {}\n- drop hook: {}\n",
            s(&start["time"]),
            s(&start["kernel"]),
            s(&start["netns_name"]),
            start["netns"],
            start["ports"],
            s(&start["hook"]),
        ));
        for n in start["notes"].as_array().into_iter().flatten() {
            out.push_str(&format!("- note: {}\n", s(n)));
        }
    }
    let mut verdicts: Vec<&Value> = records.iter().filter(|r| r["type"] == "verdict").collect();
    // The closing verdict of a group supersedes its streamed one.
    if verdicts.iter().any(|v| v["final"] == true) {
        verdicts.retain(|v| v["final"] == true);
    }
    out.push_str(&format!("\n## Verdicts ({})\n", verdicts.len()));
    if verdicts.is_empty() {
        out.push_str("\nNo watched packet was attributed to a cause.\n");
    }
    for v in verdicts {
        out.push_str(&format!(
            "\n### port {}/{}: {}{}\n\n{}\n\n- packets: {} (first {}, last {})\n- where: {} at {}, hook {}, dnat {}\n",
            v["port"],
            s(&v["proto"]),
            s(&v["cause"]),
            v["container"].as_str().map(|c| format!(" (container {c})")).unwrap_or_default(),
            s(&v["sentence"]),
            v["packets"],
            s(&v["first"]),
            s(&v["last"]),
            s(&v["proximate"]["reason"]),
            s(&v["proximate"]["location"]),
            s(&v["proximate"]["hook"]),
            v["proximate"]["dnat"],
        ));
        if let Some(rule) = v["proximate"]["rule"].as_str() {
            out.push_str(&format!("- rule: `{rule}`\n"));
        }
        for e in v["evidence"].as_array().into_iter().flatten() {
            out.push_str(&format!("- evidence: {}\n", s(e)));
        }
        if let Some(c) = v["culprit"].as_object() {
            out.push_str(&format!(
                "- culprit: {} at {} by pid {} `{}`\n",
                c.get("what").map(s).unwrap_or_default(),
                c.get("time").map(s).unwrap_or_default(),
                c.get("process")
                    .map(|p| p["pid"].to_string())
                    .unwrap_or_default(),
                c.get("process")
                    .and_then(|p| p["cmdline"].as_str())
                    .unwrap_or("?"),
            ));
        } else if let Some(note) = v["culprit_note"].as_str() {
            out.push_str(&format!("- culprit: unknown — {note}\n"));
        }
        out.push_str(&format!("- fix: `{}`\n", s(&v["fix"])));
        if let Some(p) = v["fix_persistent"].as_str() {
            out.push_str(&format!("- persist: {p}\n"));
        }
    }
    let changes: Vec<&Value> = records.iter().filter(|r| r["type"] == "change").collect();
    if !changes.is_empty() {
        out.push_str(&format!("\n## Changes seen ({})\n\n", changes.len()));
        for c in changes {
            out.push_str(&format!(
                "- {} {}: {} — pid {} `{}`\n",
                s(&c["time"]),
                s(&c["source"]),
                s(&c["what"]),
                c["process"]["pid"],
                c["process"]["cmdline"].as_str().unwrap_or("?"),
            ));
        }
    }
    if let Some(sum) = records.iter().rev().find(|r| r["type"] == "summary") {
        out.push_str(&format!(
            "\n## Totals\n\n- duration: {} s\n- watched drops (exact): {}\n- events delivered: {}, lost: {}\n- by reason: {}\n",
            sum["duration_s"], sum["drops"], sum["events"], sum["lost"], sum["by_reason"]
        ));
    } else {
        out.push_str("\n## Totals\n\nThe run was interrupted before its summary.\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_of_an_interrupted_run_is_still_readable() {
        let records = vec![
            serde_json::json!({"type":"start","time":"t0","kernel":"6.18","netns_name":"host","netns":1,"ports":[5000],"hook":"tp_btf/kfree_skb","notes":["n1"]}),
            serde_json::json!({"type":"verdict","final":false,"cause":"forwarding_disabled","port":5000,"proto":"tcp","packets":1,"first":"t1","last":"t1","sentence":"forwarding is disabled","proximate":{"reason":"IP_INADDRERRORS","location":"ip_error+0x94","hook":"routing","dnat":true,"rule":null,"icmp":null},"evidence":["e1"],"fix":"sysctl -w net.ipv4.ip_forward=1","fix_persistent":"persist","culprit":null,"culprit_note":"before start","container":"web"}),
        ];
        let md = render_report(&records);
        assert!(
            md.contains("### port 5000/tcp: forwarding_disabled (container web)"),
            "{md}"
        );
        assert!(md.contains("- fix: `sysctl -w net.ipv4.ip_forward=1`"));
        assert!(md.contains("interrupted before its summary"));
        assert!(md.contains("- note: n1"));
    }
}
