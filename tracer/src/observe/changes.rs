//! Who changed forwarding or the firewall, and when: sysctl writes and iptables-legacy table
//! replacements come from the kernel with their author captured at the moment of the write
//! (CHANGES ring); nf_tables changes come from the netlink monitor (`nft monitor` in the
//! namespace), whose generation line names the committing pid, completed from the identity
//! the exec probe recorded in the kernel (EXECS) or, for long-lived daemons, from /proc.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver},
};

use serde::{Deserialize, Serialize};
use tracer_common::{ChangeEvent, Process, change};

use crate::{
    discover::netns::Netns,
    observe::{
        rtnl,
        state::{iptables, nft},
    },
};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AncestorInfo {
    pub pid: u32,
    pub comm: String,
    pub cmdline: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessInfo {
    pub pid: u32,
    pub comm: String,
    pub cmdline: Option<String>,
    /// cgroup v2 path, and the systemd unit (or scope) in it.
    pub cgroup: Option<String>,
    pub unit: Option<String>,
    pub ancestors: Vec<AncestorInfo>,
    /// `kernel` when captured in the kernel at the moment of the change, `proc` when read
    /// from /proc afterwards, `name-only` when the process was gone, `unknown` when no hook
    /// saw the change (the recorder's fingerprint found it), `none` when no process asked
    /// for it (rtnetlink's port 0: an expired route, a route that went with its address).
    pub captured: String,
}

impl ProcessInfo {
    /// `pid 812 `sysctl -p` ← `/bin/sh ifup-post` ← `java -jar webapp.jar` (unit: network.service)`
    pub fn chain(&self) -> String {
        if self.captured == "unknown" {
            return "an author no hook saw (found by the recorder's fingerprint)".into();
        }
        if self.captured == "none" {
            return "the kernel itself (no process asked for it)".into();
        }
        let show = |cmd: &Option<String>, comm: &str| match cmd {
            Some(c) if !c.is_empty() => format!("`{c}`"),
            _ => format!("[{comm}]"),
        };
        let mut text = format!("pid {} {}", self.pid, show(&self.cmdline, &self.comm));
        for a in &self.ancestors {
            text.push_str(&format!(" ← {}", show(&a.cmdline, &a.comm)));
        }
        if let Some(unit) = &self.unit {
            text.push_str(&format!(" (unit: {unit})"));
        }
        text
    }
}

/// `{"type":"change",…}`: a change seen while droptrace ran, or recorded in the journal by
/// `droptrace record`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChangeRecord {
    #[serde(rename = "type")]
    pub kind: String,
    pub time: String,
    pub netns: u32,
    /// `sysctl`, `nftables`, `iptables-legacy` or `rtnetlink` (addresses, routes, links).
    pub source: String,
    /// One line: `net.ipv4.ip_forward 1 -> 0`, `delete chain ip nat DOCKER; …`.
    pub what: String,
    /// sysctl name, or the legacy table.
    pub key: Option<String>,
    pub old: Option<String>,
    pub new: Option<String>,
    /// Each change of an nf_tables generation / each thing a legacy replace removed.
    pub changes: Vec<String>,
    pub process: ProcessInfo,
    /// The boot the change happened in (/proc/sys/kernel/random/boot_id): journal records of
    /// an earlier boot explain nothing now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The namespace's name when the recorder knows it (`ip netns` name, `host`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns_name: Option<String>,
    /// The journal directory this change was read from (a culprit recorded by
    /// `droptrace record` before this run); absent for changes this run saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal: Option<String>,
    /// How a change without a hooked author was found (the recorder's fingerprint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seen_by: Option<String>,
    /// A journal culprit's age in seconds when the verdict was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_s: Option<u64>,
    #[serde(skip)]
    pub ktime_ns: u64,
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// NUL-separated argv → a shell-like line.
pub fn argv_line(bytes: &[u8]) -> String {
    bytes
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a sysctl (dotted) is one droptrace reports.
pub fn sysctl_matters(key: &str) -> bool {
    key == "net.ipv4.ip_forward"
        || key.ends_with(".forwarding")
        || key.ends_with(".rp_filter")
        || (key.starts_with("net.ipv6.conf.") && key.ends_with(".accept_ra"))
        || key.starts_with("net.bridge.bridge-nf-call-")
        || matches!(
            key,
            "net.netfilter.nf_conntrack_max"
                | "net.netfilter.nf_conntrack_tcp_loose"
                | "net.netfilter.nf_conntrack_tcp_be_liberal"
        )
}

/// A sysctl that is one for the whole host (writable only in the initial namespace): its
/// write matters to every namespace, whichever one it was made in.
pub fn host_wide(key: &str) -> bool {
    key == "net.netfilter.nf_conntrack_max"
}

/// Finds identities: the kernel's exec records first, /proc second; cgroup ids to paths.
pub struct Resolver {
    cgroup_root: Option<PathBuf>,
    cgroups: HashMap<u64, String>,
}

fn find_cgroup(dir: &Path, id: u64, depth: usize) -> Option<PathBuf> {
    if depth > 8 {
        return None;
    }
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_dir() {
            continue;
        }
        if meta.ino() == id {
            return Some(path);
        }
        if let Some(found) = find_cgroup(&path, id, depth + 1) {
            return Some(found);
        }
    }
    None
}

/// Command lines are evidence, not a dump: keep the head of very long ones.
fn shorten(cmd: &str) -> String {
    const MAX: usize = 160;
    if cmd.chars().count() <= MAX {
        return cmd.to_string();
    }
    let head: String = cmd.chars().take(MAX).collect();
    format!("{head}…")
}

fn proc_cmdline(pid: u32) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let line = argv_line(&bytes);
    (!line.is_empty()).then_some(line)
}

fn proc_ppid_comm(pid: u32) -> Option<(u32, String)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    Some((field("PPid:")?.parse().ok()?, field("Name:")?))
}

fn unit_of(path: &str) -> Option<String> {
    path.rsplit('/')
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_string)
}

impl Resolver {
    /// `cgroup_root`: the cgroup v2 mount point (the capability inspector's), where cgroup ids
    /// are turned into paths and systemd units.
    pub fn new(cgroup_root: Option<PathBuf>) -> Self {
        Self {
            cgroup_root,
            cgroups: HashMap::new(),
        }
    }

    fn cgroup_path(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if let Some(p) = self.cgroups.get(&id) {
            return Some(p.clone());
        }
        let root = self.cgroup_root.clone()?;
        let rel = if std::fs::metadata(&root).map(|m| m.ino()).ok() == Some(id) {
            "/".to_string()
        } else {
            let found = find_cgroup(&root, id, 0)?;
            format!("/{}", found.strip_prefix(&root).ok()?.display())
        };
        self.cgroups.insert(id, rel.clone());
        Some(rel)
    }

    /// Identity captured in the kernel (a ChangeEvent's process, or an EXECS record).
    /// `lookup` finds EXECS records of ancestors for their command lines.
    pub fn from_kernel(
        &mut self,
        p: &Process,
        lookup: &dyn Fn(u32) -> Option<Process>,
    ) -> ProcessInfo {
        let cmdline = (p.args_len > 0)
            .then(|| argv_line(&p.args[..(p.args_len as usize).min(p.args.len())]))
            .filter(|s| !s.is_empty())
            .map(|c| shorten(&c));
        let cgroup = self.cgroup_path(p.cgroup_id);
        // The kernel recorded each ancestor's pid and name at the moment of the change; their
        // command lines are looked up now, and only trusted while the name still matches (a
        // shell may have exec'ed into something else since, under the same pid).
        let ancestors = p
            .ancestors
            .iter()
            .filter(|a| a.pid != 0)
            .map(|a| {
                let comm = cstr(&a.comm);
                let from_exec = lookup(a.pid)
                    .filter(|x| x.args_len > 0 && cstr(&x.comm) == comm)
                    .map(|x| argv_line(&x.args[..(x.args_len as usize).min(x.args.len())]));
                let from_proc = || {
                    let now = std::fs::read_to_string(format!("/proc/{}/comm", a.pid)).ok()?;
                    (now.trim() == comm).then(|| proc_cmdline(a.pid)).flatten()
                };
                AncestorInfo {
                    pid: a.pid,
                    cmdline: from_exec.or_else(from_proc).map(|c| shorten(&c)),
                    comm,
                }
            })
            .collect();
        ProcessInfo {
            pid: p.pid,
            comm: cstr(&p.comm),
            cmdline,
            unit: cgroup.as_deref().and_then(unit_of),
            cgroup,
            ancestors,
            captured: "kernel".into(),
        }
    }

    /// Identity of a pid named by the netlink monitor: the exec record if the kernel saw it
    /// start, else /proc (long-lived daemons such as firewalld), else only its name.
    pub fn from_pid(
        &mut self,
        pid: u32,
        comm: &str,
        lookup: &dyn Fn(u32) -> Option<Process>,
    ) -> ProcessInfo {
        if let Some(p) = lookup(pid) {
            return self.from_kernel(&p, lookup);
        }
        let Some(cmdline) = proc_cmdline(pid) else {
            return ProcessInfo {
                pid,
                comm: comm.to_string(),
                captured: "name-only".into(),
                ..ProcessInfo::default()
            };
        };
        let mut ancestors = Vec::new();
        let mut cur = pid;
        for _ in 0..tracer_common::ANCESTORS {
            let Some((ppid, _)) = proc_ppid_comm(cur) else {
                break;
            };
            if ppid == 0 {
                break;
            }
            let comm = proc_ppid_comm(ppid).map(|(_, c)| c).unwrap_or_default();
            ancestors.push(AncestorInfo {
                pid: ppid,
                comm,
                cmdline: proc_cmdline(ppid).map(|c| shorten(&c)),
            });
            cur = ppid;
        }
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("0::").map(str::to_string))
            });
        ProcessInfo {
            pid,
            comm: comm.to_string(),
            cmdline: Some(shorten(&cmdline)),
            unit: cgroup.as_deref().and_then(unit_of),
            cgroup,
            ancestors,
            captured: "proc".into(),
        }
    }
}

/// A kernel change event → record (None for sysctls droptrace does not report).
pub fn from_event(
    ev: &ChangeEvent,
    time: String,
    resolver: &mut Resolver,
    lookup: &dyn Fn(u32) -> Option<Process>,
) -> Option<ChangeRecord> {
    let name = cstr(&ev.name);
    let process = resolver.from_kernel(&ev.process, lookup);
    match ev.kind {
        change::SYSCTL => {
            let key = name.replace('/', ".");
            if !sysctl_matters(&key) {
                return None;
            }
            let old = cstr(&ev.old_value).trim().to_string();
            let new = cstr(&ev.new_value).trim().to_string();
            Some(ChangeRecord {
                kind: "change".into(),
                time,
                netns: ev.netns,
                source: "sysctl".into(),
                what: format!("{key} {old} -> {new}"),
                key: Some(key),
                old: Some(old),
                new: Some(new),
                changes: Vec::new(),
                process,
                ktime_ns: ev.ktime_ns,
                ..ChangeRecord::default()
            })
        }
        change::IPT_REPLACE => {
            let family = cstr(&ev.new_value);
            let tool = if family == "ipv6" {
                "ip6tables-legacy"
            } else {
                "iptables-legacy"
            };
            Some(ChangeRecord {
                kind: "change".into(),
                time,
                netns: ev.netns,
                source: "iptables-legacy".into(),
                what: format!("{tool} replaced table {name}"),
                key: Some(name),
                old: None,
                new: None,
                changes: Vec::new(),
                process,
                ktime_ns: ev.ktime_ns,
                ..ChangeRecord::default()
            })
        }
        _ => None,
    }
}

/// An rtnetlink change → its record, with its author: the process that held the requesting
/// socket, else the one its port names (the exec record, then /proc), else none.
pub fn from_link_change(
    c: &rtnl::LinkChange,
    netns: u32,
    resolver: &mut Resolver,
    lookup: &dyn Fn(u32) -> Option<Process>,
) -> ChangeRecord {
    let process = match c.pid() {
        _ if c.port == 0 => ProcessInfo {
            captured: "none".into(),
            ..ProcessInfo::default()
        },
        Some(pid) => {
            let comm = c.holder.as_ref().map_or("", |(_, comm)| comm.as_str());
            resolver.from_pid(pid, comm, lookup)
        }
        None => ProcessInfo {
            captured: "name-only".into(),
            comm: format!("netlink port {}", c.port as i32),
            ..ProcessInfo::default()
        },
    };
    let (old, new) = match c.action {
        "added" => (None, c.value.clone()),
        _ => (c.value.clone(), None),
    };
    ChangeRecord {
        kind: "change".into(),
        time: crate::observe::event::rfc3339(c.time),
        netns,
        source: "rtnetlink".into(),
        what: c.what.clone(),
        key: Some(c.iface.clone()),
        old,
        new,
        changes: vec![format!("{} {}", c.object, c.action)],
        process,
        ..ChangeRecord::default()
    }
}

/// An nf_tables generation → its record, each change as `describe` completes it (what a
/// deleted rule was).
pub fn from_generation(
    g: &Generation,
    netns: u32,
    process: ProcessInfo,
    describe: impl Fn(&str) -> String,
) -> ChangeRecord {
    let changes: Vec<String> = g.changes.iter().map(|c| describe(c)).collect();
    let mut what = changes
        .iter()
        .take(3)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if changes.len() > 3 {
        what.push_str(&format!("; … {} changes in all", changes.len()));
    }
    ChangeRecord {
        kind: "change".into(),
        time: crate::observe::event::rfc3339(chrono::Utc::now()),
        netns,
        source: "nftables".into(),
        what,
        changes,
        process,
        ..ChangeRecord::default()
    }
}

/// `delete rule ip nat DOCKER handle 11` → with what that rule was, from the snapshots.
pub fn describe_nft_change<'a>(
    change: &str,
    mut rulesets: impl Iterator<Item = &'a nft::Ruleset>,
) -> String {
    let words: Vec<&str> = change.split_whitespace().collect();
    if let ["delete", "rule", family, table, chain, "handle", handle] = words.as_slice()
        && let Ok(handle) = handle.parse::<u64>()
        && let Some(rule) = rulesets.find_map(|s| {
            s.rules.iter().find(|r| {
                r.family == *family && r.table == *table && r.chain == *chain && r.handle == handle
            })
        })
    {
        return format!("{change} (was: {})", rule.text);
    }
    change.to_string()
}

/// What an iptables-legacy replacement of `table` removed: each chain and rule of `old`
/// that `new` (the same backend's rules after it) no longer has.
pub fn legacy_removed(
    old: &[iptables::Ruleset],
    new: &[iptables::Ruleset],
    table: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for old in old {
        let Some(old_table) = old.table(table) else {
            continue;
        };
        let new_table = new
            .iter()
            .find(|n| n.backend == old.backend)
            .and_then(|n| n.table(table));
        for chain in &old_table.chains {
            let new_chain = new_table.and_then(|t| t.chain(&chain.name));
            if new_chain.is_none() {
                out.push(format!("removed chain {table} {}", chain.name));
            }
            for rule in &chain.rules {
                let still = new_chain.is_some_and(|c| c.rules.iter().any(|r| r.spec == rule.spec));
                if !still {
                    out.push(format!(
                        "removed rule {table} {}: {}",
                        chain.name, rule.spec
                    ));
                }
            }
        }
    }
    out
}

/// One nf_tables transaction from `nft monitor`: its changes and who committed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Generation {
    pub changes: Vec<String>,
    pub generation: u64,
    pub pid: u32,
    pub comm: String,
}

/// Groups `nft monitor` lines into generations.
#[derive(Default)]
pub struct MonitorParser {
    pending: Vec<String>,
}

impl MonitorParser {
    pub fn line(&mut self, line: &str) -> Option<Generation> {
        let line = line.trim();
        if line.is_empty() {
            return None;
        }
        if let Some(rest) = line.strip_prefix("# new generation ") {
            // "# new generation 45 by process 12345 (iptables)"
            let (gen_text, rest) = rest.split_once(" by process ")?;
            let (pid, comm) = rest.split_once(' ').unwrap_or((rest, ""));
            return Some(Generation {
                changes: std::mem::take(&mut self.pending),
                generation: gen_text.trim().parse().unwrap_or(0),
                pid: pid.parse().unwrap_or(0),
                comm: comm.trim_matches(|c| c == '(' || c == ')').to_string(),
            });
        }
        if line.starts_with("add ")
            || line.starts_with("delete ")
            || line.starts_with("flush ")
            || line.starts_with("replace ")
            || line.starts_with("destroy ")
        {
            // Set elements churn (e.g. dynamic sets) is not a ruleset change worth a line.
            if !line.starts_with("add element") && !line.starts_with("delete element") {
                self.pending.push(line.to_string());
            }
        }
        None
    }
}

/// Netlink groups of nfnetlink (uapi linux/netfilter/nfnetlink.h).
pub const NFNLGRP_NFTABLES: u32 = 7;
pub const NFNLGRP_NFTRACE: u32 = 9;

/// Waits until process `pid` has a NETLINK_NETFILTER socket subscribed to `group`, as
/// /proc/PID/net/netlink shows it: until then a monitor would miss events. Bounded.
pub fn wait_subscribed(pid: u32, group: u32, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    let bit = 1u64 << (group - 1);
    loop {
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/netlink")).unwrap_or_default();
        let subscribed = table.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[1] == "12"
                && f[2] == pid.to_string()
                && u64::from_str_radix(f[3], 16).is_ok_and(|g| g & bit != 0)
        });
        if subscribed {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Starts a monitoring tool inside the namespace, its stdout piped to us. It dies with
/// droptrace, even by SIGKILL (PDEATHSIG), so no monitor outlives a run.
pub fn spawn_monitor(ns: &Netns, args: &[&str]) -> std::io::Result<Child> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.path.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
}

/// `nft monitor` running in the watched namespace; killed with droptrace (PDEATHSIG).
pub struct NftMonitor {
    child: Child,
    pub generations: Receiver<Generation>,
}

impl NftMonitor {
    pub fn start(ns: &Netns) -> Result<Self, String> {
        let (tx, rx) = mpsc::channel();
        let child = Self::spawn(ns, move |g| tx.send(g).is_ok())?;
        Ok(Self {
            child,
            generations: rx,
        })
    }

    /// Starts `nft monitor` in `ns`, giving each generation with changes to `deliver` on a
    /// thread of its own until it returns false. The child is the caller's to kill.
    pub fn spawn(
        ns: &Netns,
        mut deliver: impl FnMut(Generation) -> bool + Send + 'static,
    ) -> Result<Child, String> {
        let mut child = spawn_monitor(ns, &["nft", "monitor"]).map_err(|e| {
            format!("cannot run `nft monitor` ({e}): install nftables to see nf_tables changes")
        })?;
        // nsenter execs nft in place, so the child's pid is the monitor's netlink port id.
        if !wait_subscribed(
            child.id(),
            NFNLGRP_NFTABLES,
            std::time::Duration::from_secs(3),
        ) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("`nft monitor` did not subscribe to nf_tables events within 3 s".into());
        }
        let stdout = child.stdout.take().ok_or("nft monitor has no stdout")?;
        std::thread::spawn(move || {
            let mut parser = MonitorParser::default();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(g) = parser.line(&line)
                    && !g.changes.is_empty()
                    && !deliver(g)
                {
                    break;
                }
            }
        });
        Ok(child)
    }
}

impl Drop for NftMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `nft monitor` (nftables 1.0.6) while `iptables -t nat -F DOCKER`,
    // `iptables -t nat -D PREROUTING …` and `nft flush ruleset` ran in the lab's host.
    const MONITOR: &str = "\
delete rule ip nat DOCKER handle 10
delete rule ip nat DOCKER handle 11
# new generation 4 by process 14485 (iptables)
delete rule ip nat PREROUTING handle 6
# new generation 5 by process 14486 (iptables)
add table inet x
# new generation 6 by process 14487 (nft)
delete chain ip nat DOCKER
delete table ip nat
# new generation 7 by process 14488 (nft)
";

    #[test]
    fn monitor_lines_group_into_generations_with_their_process() {
        let mut p = MonitorParser::default();
        let gens: Vec<Generation> = MONITOR.lines().filter_map(|l| p.line(l)).collect();
        assert_eq!(gens.len(), 4);
        assert_eq!(
            gens[0].changes,
            vec![
                "delete rule ip nat DOCKER handle 10",
                "delete rule ip nat DOCKER handle 11"
            ]
        );
        assert_eq!(
            (gens[0].generation, gens[0].pid, gens[0].comm.as_str()),
            (4, 14485, "iptables")
        );
        assert_eq!(gens[3].changes.len(), 2);
        assert_eq!(gens[3].comm, "nft");
    }

    #[test]
    fn only_forwarding_relevant_sysctls_are_reported() {
        for key in [
            "net.ipv4.ip_forward",
            "net.ipv4.conf.all.forwarding",
            "net.ipv4.conf.eth0.rp_filter",
            "net.ipv6.conf.all.forwarding",
            "net.bridge.bridge-nf-call-iptables",
        ] {
            assert!(sysctl_matters(key), "{key}");
        }
        assert!(sysctl_matters("net.ipv6.conf.eth0.accept_ra"));
        assert!(!sysctl_matters("net.ipv6.conf.eth0.accept_ra_pinfo"));
        assert!(!sysctl_matters("net.ipv6.conf.eth0.autoconf"));
    }

    #[test]
    fn process_chains_read_like_a_ps_tree() {
        let p = ProcessInfo {
            pid: 812,
            comm: "sysctl".into(),
            cmdline: Some("sysctl -p".into()),
            unit: Some("network.service".into()),
            ancestors: vec![
                AncestorInfo {
                    pid: 700,
                    comm: "sh".into(),
                    cmdline: Some("/bin/sh ifup-post".into()),
                },
                AncestorInfo {
                    pid: 1,
                    comm: "systemd".into(),
                    cmdline: None,
                },
            ],
            ..ProcessInfo::default()
        };
        assert_eq!(
            p.chain(),
            "pid 812 `sysctl -p` ← `/bin/sh ifup-post` ← [systemd] (unit: network.service)"
        );
        assert_eq!(
            argv_line(b"sysctl\0-w\0net.ipv4.ip_forward=0\0"),
            "sysctl -w net.ipv4.ip_forward=0"
        );
    }
}
