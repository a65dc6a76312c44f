//! `droptrace ports` and `droptrace check`: what is published, and what would break it —
//! read from the engine and the namespace's state, without loading any eBPF.
use std::io::Write;

use serde::Serialize;

use crate::{
    cmd::check::{self, Facts, Finding},
    discover::netns::Netns,
    discover::{self, Engine, PublishedPort},
    error::Error,
    observe::state::{self, Snapshot},
};

#[derive(Clone, Debug, Default)]
pub struct PreflightRequest {
    pub docker_host: Option<String>,
    pub netns: Option<String>,
    pub ports: Vec<u16>,
    pub json: bool,
    /// The recorder's journal (`check`): None reads the default one when it exists.
    pub journal: Option<std::path::PathBuf>,
}

struct Scene {
    engine: Option<Engine>,
    netns: Netns,
    snapshot: Snapshot,
    published: Vec<PublishedPort>,
    /// Why the engine was not used, when it was not.
    engine_note: Option<String>,
}

impl Scene {
    fn rootless_note(&self) -> Option<String> {
        let e = self.engine.as_ref().filter(|e| e.rootless)?;
        Some(crate::report::words::rootless_note(&e.name, e.uid))
    }
}

async fn scene(req: &PreflightRequest) -> Result<Scene, Error> {
    let (engine, mut published, engine_note) =
        match discover::find_engine(req.docker_host.as_deref(), false).await? {
            Ok((e, p)) => (Some(e), p, None),
            Err(e) => (None, Vec::new(), Some(e.to_string())),
        };
    let netns = discover::watched_netns(req.netns.as_deref(), engine.as_ref())?;
    let snapshot = state::capture(&netns);
    if engine.is_none() {
        published = discover::from_rules(&snapshot);
    }
    for &port in &req.ports {
        if !published.iter().any(|p| p.host_port == port) {
            published.push(PublishedPort {
                host_ip: None,
                host_port: port,
                proto: "tcp".into(),
                container: None,
                container_id: None,
                container_ip: None,
                container_port: None,
                network: None,
                source: "--port",
                engine: None,
            });
        }
    }
    if !req.ports.is_empty() {
        published.retain(|p| req.ports.contains(&p.host_port));
    }
    Ok(Scene {
        engine,
        netns,
        snapshot,
        published,
        engine_note,
    })
}

#[derive(Serialize)]
struct PortLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    port: &'a PublishedPort,
    netns: u32,
    /// Published by a rootless engine: forwarded in userspace, not DNATed.
    rootless: bool,
}

/// `droptrace ports`
pub async fn ports<W: Write>(req: PreflightRequest, mut out: W) -> Result<(), Error> {
    let s = scene(&req).await?;
    let io = |e: std::io::Error| Error::Io(format!("writing output: {e}"));
    if req.json {
        for p in &s.published {
            serde_json::to_writer(
                &mut out,
                &PortLine {
                    kind: "port",
                    port: p,
                    netns: s.netns.inode,
                    rootless: s.engine.as_ref().is_some_and(|e| e.rootless),
                },
            )
            .map_err(|e| Error::Io(e.to_string()))?;
            writeln!(out).map_err(io)?;
        }
        return Ok(());
    }
    match &s.engine {
        Some(e) => writeln!(
            out,
            "{} {} at {} (pid {}), network namespace {} (inode {})",
            e.name,
            e.version.as_deref().unwrap_or("?"),
            e.socket.display(),
            e.pid.map_or("?".into(), |p| p.to_string()),
            s.netns.name,
            s.netns.inode
        ),
        None => writeln!(
            out,
            "no container engine ({}); ports from the DNAT rules of namespace {}",
            s.engine_note.as_deref().unwrap_or("none"),
            s.netns.name
        ),
    }
    .map_err(io)?;
    writeln!(
        out,
        "{:<22} {:<20} {:<14} {:<22} {:<10} SOURCE",
        "PUBLISHED", "CONTAINER", "ID", "TARGET", "NETWORK"
    )
    .map_err(io)?;
    for p in &s.published {
        let host = format!(
            "{}:{}/{}",
            p.host_ip.map_or("*".to_string(), |ip| ip.to_string()),
            p.host_port,
            p.proto
        );
        let target = match (p.container_ip, p.container_port) {
            (Some(ip), Some(port)) => format!("{ip}:{port}"),
            (None, Some(port)) => format!("?:{port}"),
            _ => "?".into(),
        };
        writeln!(
            out,
            "{:<22} {:<20} {:<14} {:<22} {:<10} {}",
            host,
            p.container.as_deref().unwrap_or("-"),
            p.container_id.as_deref().unwrap_or("-"),
            target,
            p.network.as_deref().unwrap_or("-"),
            p.source
        )
        .map_err(io)?;
    }
    if s.published.is_empty() {
        writeln!(out, "no published port found").map_err(io)?;
    }
    if let Some(note) = s.rootless_note() {
        writeln!(out, "note: {note}").map_err(io)?;
    }
    Ok(())
}

#[derive(Serialize)]
struct CheckSummary {
    #[serde(rename = "type")]
    kind: &'static str,
    healthy: bool,
    findings: usize,
    ports: Vec<u16>,
    netns: u32,
    /// What the findings cannot say (a rootless engine's ports).
    notes: Vec<String>,
}

/// Each finding's culprit from the recorder's journal (the default one when it exists); a
/// note when there is no journal to ask, or it cannot be read.
fn name_culprits(
    findings: &mut [Finding],
    asked: Option<&std::path::Path>,
    netns: u32,
) -> Option<String> {
    let Some(dir) = crate::journal::locate(asked) else {
        return Some(
            "no change journal: `droptrace record` (deploy/droptrace-record.service), kept running, would have recorded who made each change found here, and when".into(),
        );
    };
    for f in findings.iter_mut() {
        match crate::journal::find_culprit(&dir, netns, &f.detail.why()) {
            Ok(found) => f.culprit = found.culprit,
            Err(e) => {
                return Some(format!(
                    "the change journal in {} cannot be read ({e}): who made these changes is not known",
                    dir.display()
                ));
            }
        }
    }
    None
}

/// `droptrace check`: Ok(true) when healthy.
pub async fn check<W: Write>(req: PreflightRequest, mut out: W) -> Result<bool, Error> {
    let s = scene(&req).await?;
    let exec_prefix = match &req.netns {
        Some(spec) if !spec.contains('/') => format!("ip netns exec {spec} "),
        Some(_) => format!("nsenter --net={} ", s.netns.path.display()),
        None => match &s.engine {
            Some(e) if e.netns_path.is_some() && s.netns.inode != Netns::current()?.inode => {
                format!("nsenter --net={} ", s.netns.path.display())
            }
            _ => String::new(),
        },
    };
    let facts = Facts {
        proxy_ports: check::docker_proxy_ports(s.netns.inode),
        conmon_ports: check::conmon_ports(s.netns.inode),
        rootless: s.engine.as_ref().is_some_and(|e| e.rootless),
        firewalld: check::firewalld_present(&s.snapshot, s.netns.inode),
        exec_prefix,
    };
    let mut findings: Vec<Finding> = check::check(&s.snapshot, &s.published, &facts);
    if s.published.is_empty() && findings.is_empty() {
        // "healthy" would claim what was never looked at.
        return Err(Error::NothingToCheck {
            netns: s.netns.name.clone(),
        });
    }
    let journal_note = name_culprits(&mut findings, req.journal.as_deref(), s.netns.inode);
    let io = |e: std::io::Error| Error::Io(format!("writing output: {e}"));
    let summary = CheckSummary {
        kind: "check",
        healthy: findings.is_empty(),
        findings: findings.len(),
        ports: s.published.iter().map(|p| p.host_port).collect(),
        netns: s.netns.inode,
        notes: s.rootless_note().into_iter().collect(),
    };
    if req.json {
        for f in &findings {
            serde_json::to_writer(&mut out, f).map_err(|e| Error::Io(e.to_string()))?;
            writeln!(out).map_err(io)?;
        }
        serde_json::to_writer(&mut out, &summary).map_err(|e| Error::Io(e.to_string()))?;
        writeln!(out).map_err(io)?;
    } else {
        for f in &findings {
            let whom = match (&f.port, &f.container) {
                (Some(p), Some(c)) => format!("port {p} ({c})"),
                (Some(p), None) => format!("port {p}"),
                _ => "host".into(),
            };
            writeln!(
                out,
                "{:<20} {whom}: {}\n{:<20} fix: {}",
                f.cause, f.what, "", f.fix
            )
            .map_err(io)?;
            if let Some(persist) = &f.fix_persistent {
                writeln!(out, "{:<20} persist: {persist}", "").map_err(io)?;
            }
            if let Some(c) = &f.culprit {
                let line = crate::report::words::culprit_line(c);
                writeln!(out, "{:<20} changed by: {line}", "").map_err(io)?;
            }
        }
        if let Some(note) = journal_note.filter(|_| !findings.is_empty()) {
            writeln!(out, "note: {note}").map_err(io)?;
        }
        if findings.is_empty() {
            writeln!(
                out,
                "healthy: {} published port(s) in namespace {} are translated, forwarded and not blocked",
                s.published.len(),
                s.netns.name
            )
            .map_err(io)?;
        }
        for p in s.snapshot.problems.iter().chain(&summary.notes) {
            writeln!(out, "note: {p}").map_err(io)?;
        }
    }
    Ok(summary.healthy)
}
