//! `droptrace record`: the always-on change recorder. It keeps, in a journal, every change
//! that can break a published port, with its author, so that a `watch` or `check` started
//! hours later names it:
//! - sysctl writes and iptables-legacy replacements, from the cgroup programs (every
//!   namespace; they run only when such a write happens);
//! - nf_tables transactions, from an `nft monitor` per covered namespace (idle in a read);
//! - address, route and link changes of bridges and veths, from an rtnetlink socket per
//!   covered namespace (idle in a read), with the process that asked for each;
//! - once a minute, a fingerprint of each covered namespace's forwarding sysctls and
//!   rulesets: a difference no hook explains is recorded as "author unknown", and so is one
//!   found at start against the state the last run saved (a change made while it was stopped).
//!
//! Nothing runs per packet: the drop programs are not loaded. The recorder never changes the
//! host; it writes only its journal.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::{Path, PathBuf},
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracer_common::WatchConfig;

use crate::{
    discover::netns::Netns,
    error::Error,
    journal::{
        self, RecorderRecord,
        fingerprint::{self, NsState},
        store::{Limits, Writer},
    },
    load::{
        ebpf::{self, LoadOptions, Tracer},
        kernel::{self, btf::KernelBtf, inspect::Capabilities},
    },
    observe::{
        changes::{self, ChangeRecord, Generation, NftMonitor, ProcessInfo, Resolver},
        event,
        rtnl::{LinkChange, RtnlMonitor},
    },
};

/// What `record` was asked to do.
#[derive(Clone, Debug)]
pub struct RecordRequest {
    pub journal: PathBuf,
    /// Namespaces to cover (names or paths); empty: this one and every `ip netns` one.
    pub netns: Vec<String>,
    pub limits: Limits,
    /// How often each covered namespace's state is compared.
    pub fingerprint_every: Duration,
    pub duration: Option<Duration>,
}

/// After a hooked change, how long before the namespace's state is read again (a burst of
/// changes is one read).
const SETTLE: Duration = Duration::from_secs(1);

/// The change ring: about 2000 changes (≈500 bytes each) can wait in it while the recorder
/// writes a burst; its pages count in the recorder's RSS only once a burst fills them.
const CHANGES_RING: u32 = 1 << 20;

/// Changes held in memory while the journal cannot be written (a full disk).
const HELD_MAX: usize = 10_000;

/// A namespace whose rulesets are monitored and fingerprinted.
struct Covered {
    ns: Arc<Netns>,
    monitor: Option<Child>,
    /// Set to stop its rtnetlink monitor.
    rtnl: Option<Arc<AtomicBool>>,
    state: NsState,
    /// Hooked changes since `state` was read: what a difference may be explained by.
    seen_since: Vec<ChangeRecord>,
    /// Read again at this time (a hooked change happened).
    refresh_at: Option<tokio::time::Instant>,
}

impl Drop for Covered {
    fn drop(&mut self) {
        if let Some(mut child) = self.monitor.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(stop) = &self.rtnl {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// The journal writer, with what it has not written yet.
struct Sink {
    writer: Writer,
    held: std::collections::VecDeque<String>,
    warned: Option<std::time::Instant>,
}

impl Sink {
    /// Queues a record for the next `flush` (at most HELD_MAX wait while the disk is full).
    fn hold(&mut self, line: String) {
        if self.held.len() < HELD_MAX {
            self.held.push_back(line);
        }
    }

    /// Writes the queued records in order, then makes them durable with one sync: a burst of
    /// changes costs one `fdatasync`, not one each. On failure the rest stay queued, and the
    /// error is said at most once a minute.
    fn flush(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let mut written = 0;
        let mut failed = None;
        while let Some(first) = self.held.front() {
            match self.writer.write(first) {
                Ok(()) => {
                    self.held.pop_front();
                    written += 1;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if written > 0
            && let Err(e) = self.writer.sync()
        {
            failed.get_or_insert(e);
        }
        let Some(e) = failed else { return };
        let due = self
            .warned
            .is_none_or(|t| t.elapsed() > Duration::from_secs(60));
        if due {
            eprintln!(
                "droptrace record: cannot write the journal in {} ({e}): {} change(s) held in memory until it can (at most {HELD_MAX}); the records already written are intact",
                self.writer.dir().display(),
                self.held.len()
            );
            self.warned = Some(std::time::Instant::now());
        }
    }
}

/// The covered namespaces: those asked for, else this one (`host` when it is PID 1's) and
/// every `ip netns` one.
fn covered_netns(asked: &[String]) -> Result<Vec<Netns>, Error> {
    if !asked.is_empty() {
        return asked.iter().map(|s| Netns::resolve(s)).collect();
    }
    let mut out = vec![Netns::current()?];
    let init = std::fs::metadata("/proc/1/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    if init.is_ok_and(|i| i as u32 == out[0].inode) {
        out[0].name = "host".into();
    }
    for ns in named_netns()
        .into_iter()
        .filter_map(|n| Netns::resolve(&n).ok())
    {
        if !out.iter().any(|o| o.inode == ns.inode) {
            out.push(ns);
        }
    }
    Ok(out)
}

/// Names under /run/netns.
fn named_netns() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The kernel side with only the change probes, every namespace's writes reported when no
/// single namespace was asked for.
fn load(netns_filter: u32) -> Result<(Tracer, Capabilities), Error> {
    // One BTF parse at a time (the inspector's, then aya's): the peak memory is one, not both.
    let btf = KernelBtf::from_sys()?;
    let caps = Capabilities::probe(&btf, &ebpf::CHANGE_TRACEPOINTS);
    let opts = LoadOptions {
        offsets: btf.kernel_offsets()?,
        config: WatchConfig {
            netns: netns_filter,
            ..WatchConfig::ZERO
        },
        caps: caps.clone(),
        changes_ring_bytes: Some(CHANGES_RING),
        ..LoadOptions::default()
    };
    drop(btf);
    let tracer = Tracer::load_changes_only(&opts)?;
    // Every program is loaded: the recorder runs for months without the parse.
    ebpf::release_btf();
    Ok((tracer, caps))
}

/// The state the last run saved (`state.json`): inode → state.
fn load_saved(dir: &Path) -> BTreeMap<u32, NsState> {
    std::fs::read(dir.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<NsState>>(&b).ok())
        .map(|v| v.into_iter().map(|s| (s.netns, s)).collect())
        .unwrap_or_default()
}

/// Saves the covered namespaces' states, atomically (a temporary file renamed over it).
fn save_states(dir: &Path, covered: &[Covered]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let states: Vec<&NsState> = covered.iter().map(|c| &c.state).collect();
    let tmp = dir.join(".state.json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec(&states).map_err(std::io::Error::other)?)?;
    f.sync_data()?;
    std::fs::rename(&tmp, dir.join("state.json"))
}

/// Whether a hooked change explains a difference: the same sysctl set to the same value (or,
/// for forwarding, the family's switch the kernel copies to every interface: `ip_forward`
/// and `conf.all.forwarding`), a ruleset change of the same kind (and legacy table).
fn explained(d: &fingerprint::Difference, seen: &[ChangeRecord]) -> bool {
    let family_switch = |key: &str| {
        let family = if key.starts_with("net.ipv6.") {
            "net.ipv6"
        } else {
            "net.ipv4"
        };
        move |k: &str| {
            k == format!("{family}.conf.all.forwarding")
                || (family == "net.ipv4" && k == "net.ipv4.ip_forward")
        }
    };
    seen.iter().any(|c| {
        c.source == d.source
            && match d.source {
                "sysctl" => {
                    let key = d.key.as_deref().unwrap_or_default();
                    c.new == d.new
                        && (c.key == d.key
                            || (key.ends_with(".forwarding") || key == "net.ipv4.ip_forward")
                                && c.key.as_deref().is_some_and(family_switch(key)))
                }
                "iptables-legacy" => c.key == d.key,
                _ => true,
            }
    })
}

/// A difference no hook saw → its change record, author unknown.
fn unknown_change(d: fingerprint::Difference, state: &NsState, how: &str) -> ChangeRecord {
    let what = match (&d.key, &d.old, &d.new) {
        (Some(k), Some(o), Some(n)) => format!("{k} {o} -> {n}"),
        _ => {
            let mut w: Vec<String> = d.changes.iter().take(3).cloned().collect();
            if d.changes.len() > 3 {
                w.push(format!("… {} changes in all", d.changes.len()));
            }
            w.join("; ")
        }
    };
    ChangeRecord {
        kind: "change".into(),
        time: event::rfc3339(chrono::Utc::now()),
        netns: state.netns,
        source: d.source.into(),
        what,
        key: d.key,
        old: d.old,
        new: d.new,
        changes: d.changes,
        process: ProcessInfo {
            captured: "unknown".into(),
            ..ProcessInfo::default()
        },
        boot_id: Some(state.boot_id.clone()),
        netns_name: Some(state.name.clone()),
        seen_by: Some(how.to_string()),
        ..ChangeRecord::default()
    }
}

/// The recorder's state while it runs.
struct Recorder {
    sink: Sink,
    covered: Vec<Covered>,
    boot_id: String,
    resolver: Resolver,
    generations: mpsc::UnboundedSender<(u32, Generation)>,
    links: mpsc::UnboundedSender<(u32, LinkChange)>,
    /// Only these namespaces' kernel changes are kept (several asked for); None keeps all.
    only: Option<BTreeSet<u32>>,
    journal_dir: PathBuf,
    /// Human lines on stdout, one per change (the service's log).
    out: Box<dyn Write>,
    /// Changes the kernel could not queue (its change ring full), as last recorded.
    lost: u64,
}

impl Recorder {
    fn record(&mut self, mut rec: ChangeRecord) {
        rec.boot_id = Some(self.boot_id.clone());
        if let Some(c) = self.covered.iter_mut().find(|c| c.ns.inode == rec.netns) {
            rec.netns_name.get_or_insert_with(|| c.ns.name.clone());
            if rec.seen_by.is_none() {
                c.seen_since.push(rec.clone());
                c.refresh_at
                    .get_or_insert_with(|| tokio::time::Instant::now() + SETTLE);
            }
        }
        let _ = writeln!(
            self.out,
            "{} netns {} {}: {} by {}",
            rec.time,
            rec.netns_name
                .clone()
                .unwrap_or_else(|| rec.netns.to_string()),
            rec.source,
            rec.what,
            rec.process.chain()
        );
        let _ = self.out.flush();
        match serde_json::to_string(&rec) {
            Ok(line) => self.sink.hold(line),
            Err(e) => eprintln!(
                "droptrace record: cannot encode a change ({e}): {}",
                rec.what
            ),
        }
    }

    /// Starts monitoring `ns`'s nf_tables changes and compares its state with what the last
    /// run saved; what changed while the recorder was stopped is returned, to be recorded.
    fn cover(&mut self, ns: Netns, saved: Option<&NsState>) -> (Option<String>, Vec<ChangeRecord>) {
        let ns = Arc::new(ns);
        let tx = self.generations.clone();
        let inode = ns.inode;
        let (monitor, note) = match NftMonitor::spawn(&ns, move |g| tx.send((inode, g)).is_ok()) {
            Ok(child) => (Some(child), None),
            Err(why) => (None, Some(format!("namespace {}: {why}", ns.name))),
        };
        let tx = self.links.clone();
        let (rtnl, note) = match RtnlMonitor::spawn(&ns, move |c| tx.send((inode, c)).is_ok()) {
            Ok(stop) => (Some(stop), note),
            Err(why) => {
                let why = format!("namespace {}: {why}", ns.name);
                (
                    None,
                    Some(note.map_or(why.clone(), |n| format!("{n}; {why}"))),
                )
            }
        };
        let state = fingerprint::capture(&ns, &self.boot_id);
        let before = saved.filter(|s| s.boot_id == self.boot_id && s.netns == ns.inode);
        let found: Vec<ChangeRecord> = before
            .map(|old| {
                let how = format!(
                    "the recorder's fingerprint at start: changed while the recorder was stopped (the state it saved at {} differs)",
                    old.time
                );
                fingerprint::differences(old, &state)
                    .into_iter()
                    .map(|d| unknown_change(d, &state, &how))
                    .collect()
            })
            .unwrap_or_default();
        self.covered.push(Covered {
            ns,
            monitor,
            rtnl,
            state,
            seen_since: Vec::new(),
            refresh_at: None,
        });
        (note, found)
    }

    /// Reads covered namespace `i` again; what changed that no hooked change explains is
    /// recorded, author unknown.
    async fn refresh(&mut self, i: usize) {
        let ns = Arc::clone(&self.covered[i].ns);
        let boot = self.boot_id.clone();
        let Ok(state) = tokio::task::spawn_blocking(move || fingerprint::capture(&ns, &boot)).await
        else {
            return;
        };
        let c = &mut self.covered[i];
        let changed = (&c.state.sysctls, &c.state.nft, &c.state.legacy)
            != (&state.sysctls, &state.nft, &state.legacy);
        let found: Vec<ChangeRecord> = fingerprint::differences(&c.state, &state)
            .into_iter()
            .filter(|d| !explained(d, &c.seen_since))
            .map(|d| {
                unknown_change(
                    d,
                    &state,
                    "the recorder's fingerprint (no hook saw this change)",
                )
            })
            .collect();
        c.state = state;
        c.seen_since.clear();
        c.refresh_at = None;
        for rec in found {
            self.record(rec);
        }
        // Saved when it changed (and at stop): a quiet host writes nothing.
        if !changed {
            return;
        }
        if let Err(e) = save_states(&self.journal_dir, &self.covered) {
            eprintln!(
                "droptrace record: cannot save the namespaces' state in {} ({e})",
                self.journal_dir.display()
            );
        }
    }

    /// New `ip netns` namespaces are covered, gone ones dropped; a name that now stands for
    /// another namespace was re-created (its sysctls and rulesets started over).
    fn rescan(&mut self) {
        let names = named_netns();
        self.covered
            .retain(|c| c.ns.name == "host" || c.ns.name == "current" || c.ns.path.exists());
        for name in names {
            let Ok(ns) = Netns::resolve(&name) else {
                continue;
            };
            let known = self.covered.iter().position(|c| c.ns.name == name);
            match known {
                Some(i) if self.covered[i].ns.inode == ns.inode => continue,
                None if self.covered.iter().any(|c| c.ns.inode == ns.inode) => continue,
                Some(i) => {
                    let old = self.covered.remove(i);
                    let rec = ChangeRecord {
                        kind: "change".into(),
                        time: event::rfc3339(chrono::Utc::now()),
                        netns: ns.inode,
                        source: "netns".into(),
                        what: format!(
                            "namespace {name} was re-created (inode {} -> {}): its forwarding sysctls and rulesets started over",
                            old.ns.inode, ns.inode
                        ),
                        process: ProcessInfo {
                            captured: "unknown".into(),
                            ..ProcessInfo::default()
                        },
                        netns_name: Some(name.clone()),
                        seen_by: Some("the recorder's namespace scan".into()),
                        ..ChangeRecord::default()
                    };
                    self.record(rec);
                }
                None => {}
            }
            let (note, _) = self.cover(ns, None);
            if let Some(note) = note {
                eprintln!("droptrace record: {note}");
            }
        }
    }

    /// An nf_tables generation from `netns`'s monitor, with its author; deleted rules are
    /// described from the namespace's last state.
    fn generation(&mut self, netns: u32, g: &Generation, tracer: &Tracer) {
        let lookup = |pid: u32| tracer.exec_identity(pid);
        let process = self.resolver.from_pid(g.pid, &g.comm, &lookup);
        let state = self
            .covered
            .iter()
            .find(|c| c.ns.inode == netns)
            .map(|c| &c.state);
        let describe = |c: &str| state.map_or_else(|| c.to_string(), |s| s.describe(c));
        let r = changes::from_generation(g, netns, process, describe);
        self.record(r);
    }

    /// An address, route or link change from `netns`'s rtnetlink monitor, with its author.
    fn link_change(&mut self, netns: u32, c: &LinkChange, tracer: &Tracer) {
        let lookup = |pid: u32| tracer.exec_identity(pid);
        let r = changes::from_link_change(c, netns, &mut self.resolver, &lookup);
        self.record(r);
    }

    fn keeps(&self, netns: u32) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(&netns))
    }
}

fn recorder_record(
    event: &str,
    boot_id: &str,
    covered: &[Covered],
    tracer: &Tracer,
    notes: &[String],
) -> String {
    let r = RecorderRecord {
        kind: "recorder".into(),
        time: event::rfc3339(chrono::Utc::now()),
        event: event.into(),
        boot_id: boot_id.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        namespaces: covered
            .iter()
            .map(|c| format!("{} ({})", c.ns.name, c.ns.inode))
            .collect(),
        hooks: tracer.signals.iter().map(|s| s.to_string()).collect(),
        notes: notes.to_vec(),
    };
    serde_json::to_string(&r).unwrap_or_default()
}

type Ring = AsyncFd<RingBuf<MapData>>;

/// What a run holds besides the recorder's state: the kernel side, its change ring, and the
/// monitors' nf_tables generations.
struct Sources {
    tracer: Tracer,
    ring: Ring,
    generations: mpsc::UnboundedReceiver<(u32, Generation)>,
    links: mpsc::UnboundedReceiver<(u32, LinkChange)>,
}

/// `droptrace record`: start → record until SIGINT/SIGTERM (or --duration) → stop.
pub async fn run(req: RecordRequest) -> Result<(), Error> {
    kernel::check_privileges()?;
    // Before anything is loaded: a signal from here on ends the run with its stop record.
    let sigint = signal(SignalKind::interrupt()).map_err(|e| Error::Io(e.to_string()))?;
    let sigterm = signal(SignalKind::terminate()).map_err(|e| Error::Io(e.to_string()))?;
    let (mut rec, mut sources) = start(&req)?;
    observe(&req, &mut rec, &mut sources, (sigint, sigterm)).await?;
    drain(sources.ring.get_mut(), &mut rec, &sources.tracer).await;
    let stop = recorder_record("stop", &rec.boot_id, &rec.covered, &sources.tracer, &[]);
    rec.sink.hold(stop);
    rec.sink.flush();
    if let Err(e) = save_states(&req.journal, &rec.covered) {
        eprintln!("droptrace record: cannot save the namespaces' state ({e})");
    }
    if !rec.sink.held.is_empty() {
        return Err(Error::Unwritable {
            path: req.journal.display().to_string(),
            why: format!(
                "{} change(s) could not be written before exit",
                rec.sink.held.len()
            ),
        });
    }
    Ok(())
}

/// The journal opened (a directory it cannot write stops it here), the change probes loaded,
/// each namespace covered and compared with the state the last run saved; the start record
/// written, then what changed while it was stopped.
fn start(req: &RecordRequest) -> Result<(Recorder, Sources), Error> {
    let unwritable = |e: std::io::Error| Error::Unwritable {
        path: req.journal.display().to_string(),
        why: e.to_string(),
    };
    let writer = Writer::open(&req.journal, req.limits).map_err(unwritable)?;
    let namespaces = covered_netns(&req.netns)?;
    let filter = match namespaces.as_slice() {
        [one] if !req.netns.is_empty() => one.inode,
        _ => 0,
    };
    let (mut tracer, caps) = load(filter)?;
    let ring = tracer.take_changes()?;
    // SAFETY: the RingBuf owns its map fd and keeps it open until the AsyncFd drops it.
    let ring: Ring =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| Error::Io(format!("polling the change ring: {e}")))?;
    let (gen_tx, generations) = mpsc::unbounded_channel();
    let (link_tx, links) = mpsc::unbounded_channel();
    let saved = load_saved(&req.journal);
    let mut rec = Recorder {
        sink: Sink {
            writer,
            held: Default::default(),
            warned: None,
        },
        covered: Vec::new(),
        boot_id: journal::boot_id(),
        resolver: Resolver::new(caps.cgroup2_root.clone()),
        generations: gen_tx,
        links: link_tx,
        only: (!req.netns.is_empty()).then(|| namespaces.iter().map(|n| n.inode).collect()),
        journal_dir: req.journal.clone(),
        out: Box::new(std::io::stdout()),
        lost: 0,
    };
    let mut notes = tracer.notes.clone();
    let mut while_stopped = Vec::new();
    for ns in namespaces {
        let prior = saved.get(&ns.inode);
        let (note, found) = rec.cover(ns, prior);
        notes.extend(note);
        while_stopped.extend(found);
    }
    if let Err(e) = save_states(&req.journal, &rec.covered) {
        notes.push(format!("cannot save the namespaces' state ({e})"));
    }
    let start = recorder_record("start", &rec.boot_id, &rec.covered, &tracer, &notes);
    rec.sink.hold(start);
    for change in while_stopped {
        rec.record(change);
    }
    rec.sink.flush();
    let names: Vec<&str> = rec.covered.iter().map(|c| c.ns.name.as_str()).collect();
    eprintln!(
        "droptrace record: journal {}; hooks: {}; namespaces: {}",
        req.journal.display(),
        tracer.signals.join(" "),
        names.join(", ")
    );
    for n in &notes {
        eprintln!("droptrace record: note: {n}");
    }
    kernel::drop_unneeded_capabilities();
    Ok((
        rec,
        Sources {
            tracer,
            ring,
            generations,
            links,
        },
    ))
}

/// The loop: each wakeup's changes (kernel events, nf_tables generations, a namespace read
/// again after a change or at the minute's fingerprint), made durable with one sync.
async fn observe(
    req: &RecordRequest,
    rec: &mut Recorder,
    src: &mut Sources,
    (mut sigint, mut sigterm): (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
) -> Result<(), Error> {
    let deadline = req.duration.map(|d| tokio::time::Instant::now() + d);
    let mut fingerprint = tokio::time::interval(req.fingerprint_every);
    fingerprint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    fingerprint.reset();
    let until = |t: Option<tokio::time::Instant>| {
        tokio::time::sleep_until(t.unwrap_or_else(tokio::time::Instant::now))
    };
    loop {
        let settle = rec.covered.iter().filter_map(|c| c.refresh_at).min();
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = until(deadline), if deadline.is_some() => break,
            guard = src.ring.readable_mut() => {
                let mut guard = guard.map_err(|e| Error::Io(format!("polling the change ring: {e}")))?;
                drain(guard.get_inner_mut(), rec, &src.tracer).await;
                guard.clear_ready();
            }
            Some((netns, g)) = src.generations.recv() => rec.generation(netns, &g, &src.tracer),
            Some((netns, c)) = src.links.recv() => rec.link_change(netns, &c, &src.tracer),
            _ = until(settle), if settle.is_some() => {
                let now = tokio::time::Instant::now();
                for i in 0..rec.covered.len() {
                    if rec.covered[i].refresh_at.is_some_and(|t| t <= now) {
                        rec.refresh(i).await;
                    }
                }
            }
            _ = fingerprint.tick() => {
                if req.netns.is_empty() {
                    rec.rescan();
                }
                for i in 0..rec.covered.len() {
                    rec.refresh(i).await;
                }
            }
        }
        rec.sink.flush();
    }
    Ok(())
}

/// The kernel's change events: each kept namespace's, with its author; and, when the ring
/// overflowed, how many were lost (a recorder line: the journal says it is incomplete).
async fn drain(ring: &mut RingBuf<MapData>, rec: &mut Recorder, tracer: &Tracer) {
    let lost = tracer
        .stat(tracer_common::stat::RING_LOST)
        .unwrap_or(rec.lost);
    if lost > rec.lost {
        let note = format!(
            "{} change(s) lost: the kernel's change ring was full (a burst faster than the journal)",
            lost - rec.lost
        );
        eprintln!("droptrace record: {note}");
        let line = recorder_record("lost", &rec.boot_id, &rec.covered, tracer, &[note]);
        rec.sink.hold(line);
        rec.lost = lost;
    }
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        events.extend(event::decode_change(&item));
    }
    let clock = event::Clock::now();
    for ev in events {
        if !rec.keeps(ev.netns) {
            continue;
        }
        let time = event::rfc3339(clock.wall(ev.ktime_ns));
        let lookup = |pid: u32| tracer.exec_identity(pid);
        let Some(mut r) = changes::from_event(&ev, time, &mut rec.resolver, &lookup) else {
            continue;
        };
        if r.source == "iptables-legacy" {
            r.changes = legacy_changes(rec, r.netns, r.key.as_deref().unwrap_or_default()).await;
            if !r.changes.is_empty() {
                r.what = format!("{}: {}", r.what, r.changes.join("; "));
            }
        }
        rec.record(r);
    }
}

/// What a legacy replacement of `table` changed in a covered namespace: its state read again
/// once the kernel applied it (the hook fires before).
async fn legacy_changes(rec: &mut Recorder, netns: u32, table: &str) -> Vec<String> {
    let Some(i) = rec.covered.iter().position(|c| c.ns.inode == netns) else {
        return Vec::new();
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ns = Arc::clone(&rec.covered[i].ns);
    let boot = rec.boot_id.clone();
    let Ok(now) = tokio::task::spawn_blocking(move || fingerprint::capture(&ns, &boot)).await
    else {
        return Vec::new();
    };
    let c = &mut rec.covered[i];
    let legacy_only = |s: &NsState| NsState {
        legacy: s.legacy.clone(),
        ..NsState::default()
    };
    let out = fingerprint::differences(&legacy_only(&c.state), &legacy_only(&now))
        .into_iter()
        .filter(|d| d.key.as_deref() == Some(table))
        .flat_map(|d| d.changes)
        .collect();
    c.state.legacy = now.legacy;
    out
}
