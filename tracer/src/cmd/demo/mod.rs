//! `droptrace demo`: the incident replayed in throwaway namespaces. It builds the same lab the
//! integration tests use (`lab`), breaks it the ways real hosts break, and runs the real
//! `watch` code path against each step, so what it prints is exactly what `watch` would.
use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Notify,
};

pub mod lab;

use crate::{
    cmd::watch::{self, WatchRequest},
    error::Error,
    load::ebpf::HookChoice,
};
use lab::{Lab, LabSpec, Outcome};

/// Namespaces of demo labs start with this.
pub fn demo_prefix() -> String {
    format!("{}demo-", lab::NS_PREFIX)
}

/// Demo namespaces still present (a run that was killed).
pub fn leftovers() -> Vec<String> {
    lab::run(&["ip", "netns", "list"])
        .map(|list| {
            list.lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with(&demo_prefix()))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `droptrace demo --cleanup`
pub fn cleanup() -> Vec<String> {
    let gone = leftovers();
    for ns in &gone {
        lab::kill_namespace(ns);
    }
    gone
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Healthy,
    WebAppDisablesForwarding,
    RestoreForwarding,
    FirewallReloadWipesNat,
    RestoreDockerRules,
    FirewallReject,
}

struct Step {
    fault: Fault,
    title: &'static str,
    expected: Option<&'static str>,
}

const STEPS: &[Step] = &[
    Step {
        fault: Fault::Healthy,
        title: "healthy: the published port as Docker wires it",
        expected: None,
    },
    Step {
        fault: Fault::WebAppDisablesForwarding,
        title: "a web app's restart hook turns IP forwarding off",
        expected: Some("forwarding_disabled"),
    },
    Step {
        fault: Fault::RestoreForwarding,
        title: "forwarding restored",
        expected: None,
    },
    Step {
        fault: Fault::FirewallReloadWipesNat,
        title: "a firewall reload wipes Docker's nat chains",
        expected: Some("missing_chain"),
    },
    Step {
        fault: Fault::RestoreDockerRules,
        title: "the container engine rewrites its chains",
        expected: None,
    },
    Step {
        fault: Fault::FirewallReject,
        title: "a firewall rule rejects the port",
        expected: Some("firewall_reject"),
    },
];

/// Scripts the demo runs as "real" culprits, in a private temporary directory.
struct Scripts {
    dir: PathBuf,
}

impl Scripts {
    fn new() -> Result<Self, Error> {
        let dir = std::env::temp_dir().join(format!("droptrace-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
        Ok(Self { dir })
    }

    fn write(&self, name: &str, body: &str) -> Result<String, Error> {
        let path = self.dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n"))
            .and_then(|_| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)))
            .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        Ok(path.display().to_string())
    }
}

impl Drop for Scripts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Applies a step's fault; returns what was done, in words.
fn apply(lab: &Lab, scripts: &Scripts, fault: Fault) -> Result<String, String> {
    let host = lab.host.clone();
    let err = |e: lab::LabError| e.to_string();
    match fault {
        Fault::Healthy => {
            Ok("nothing: DNAT to the container, forwarding on, Docker's filter rules".into())
        }
        Fault::WebAppDisablesForwarding => {
            let path = scripts
                .write(
                    "webapp",
                    "sh -c 'sysctl -w net.ipv4.ip_forward=0 >/dev/null'",
                )
                .map_err(|e| e.to_string())?;
            lab.exec(&host, &[&path]).map_err(err)?;
            Ok(format!(
                "ran {path} (→ sh → sysctl -w net.ipv4.ip_forward=0)"
            ))
        }
        Fault::RestoreForwarding => {
            lab.sysctl(&host, "net.ipv4.ip_forward", "1").map_err(err)?;
            Ok("sysctl -w net.ipv4.ip_forward=1".into())
        }
        Fault::FirewallReloadWipesNat => {
            let ipt = lab.spec.backend.iptables();
            let path = scripts
                .write(
                    "firewall-reload",
                    &format!("{ipt} -t nat -F\n{ipt} -t nat -X"),
                )
                .map_err(|e| e.to_string())?;
            lab.exec(&host, &[&path]).map_err(err)?;
            Ok(format!(
                "ran {path} ({ipt} -t nat -F; -X: every nat chain gone, as a firewall reload leaves it)"
            ))
        }
        Fault::RestoreDockerRules => {
            lab.load_docker_rules().map_err(err)?;
            Ok("rewrote Docker's rules (as restarting dockerd does)".into())
        }
        Fault::FirewallReject => {
            lab.iptables(&[
                "-I",
                "DOCKER-USER",
                "-p",
                "tcp",
                "--dport",
                "5000",
                "-j",
                "REJECT",
                "--reject-with",
                "icmp-host-prohibited",
            ])
            .map_err(err)?;
            Ok("iptables -I DOCKER-USER -p tcp --dport 5000 -j REJECT --reject-with icmp-host-prohibited".into())
        }
    }
}

struct Row {
    title: &'static str,
    expected: Option<&'static str>,
    got: Vec<String>,
    client: String,
}

impl Row {
    fn right(&self) -> bool {
        match self.expected {
            None => self.got.is_empty(),
            Some(cause) => self.got == [cause.to_string()],
        }
    }
}

/// Runs one step's `watch` together with its actor, which waits for the watch to be ready.
/// A watch that fails before it is ready never wakes the actor: the actor is then cancelled
/// (and awaited, so the lab it holds is released) and the watch's error comes back at once.
async fn run_step<W, T>(
    watch: W,
    actor: tokio::task::JoinHandle<T>,
) -> (Result<watch::RunOutcome, Error>, T)
where
    W: std::future::Future<Output = Result<watch::RunOutcome, Error>>,
    T: Default,
{
    let outcome = watch.await;
    if outcome.is_err() {
        actor.abort();
    }
    let acted = actor.await.unwrap_or_default();
    (outcome, acted)
}

/// Ctrl-C or SIGTERM during the demo: `interrupted` is set and `stop` notified, so the step
/// running ends and the lab is removed.
fn interrupt_listener() -> Result<(Arc<AtomicBool>, Arc<Notify>), Error> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(Notify::new());
    let (flag, notify) = (Arc::clone(&interrupted), Arc::clone(&stop));
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::Io(e.to_string()))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Error::Io(e.to_string()))?;
    tokio::spawn(async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        flag.store(true, Ordering::SeqCst);
        notify.notify_one();
    });
    Ok((interrupted, stop))
}

/// The actor of one step: once the watch is ready, applies the fault, sends the client's
/// request, lets the last drops reach the ring, and ends the watch. Returns what it did and
/// what the client saw.
fn actor(
    lab: &Arc<Lab>,
    scripts: &Arc<Scripts>,
    fault: Fault,
    ready: Arc<Notify>,
    step_stop: Arc<Notify>,
    global_stop: Arc<Notify>,
) -> tokio::task::JoinHandle<(String, String)> {
    let (lab, scripts) = (Arc::clone(lab), Arc::clone(scripts));
    tokio::spawn(async move {
        tokio::select! {
            _ = ready.notified() => {}
            _ = global_stop.notified() => { step_stop.notify_one(); return (String::new(), String::new()); }
        }
        let (done, seen) = tokio::task::spawn_blocking(move || {
            let done = apply(&lab, &scripts, fault).unwrap_or_else(|e| format!("failed: {e}"));
            let seen = lab.client_request(Duration::from_secs(2));
            (done, seen)
        })
        .await
        .unwrap_or_else(|_| (String::from("failed"), Outcome::Other("panicked".into())));
        // Let the last drop events reach the ring before the run ends.
        tokio::time::sleep(Duration::from_millis(300)).await;
        step_stop.notify_one();
        (done, seen.to_string())
    })
}

/// One step: a watch of the lab's host and the step's actor; its row, and the watch's notes.
async fn step(
    lab: &Arc<Lab>,
    scripts: &Arc<Scripts>,
    step: &Step,
    hook: HookChoice,
    global_stop: &Arc<Notify>,
) -> Result<(Row, Vec<String>), Error> {
    let ready = Arc::new(Notify::new());
    let step_stop = Arc::new(Notify::new());
    let req = WatchRequest {
        ports: vec![lab.spec.port],
        netns: Some(lab.host.clone()),
        duration: Some(Duration::from_secs(20)),
        hook,
        ready: Some(Arc::clone(&ready)),
        stop: Some(Arc::clone(&step_stop)),
        quiet: true,
        ..WatchRequest::default()
    };
    let actor = actor(
        lab,
        scripts,
        step.fault,
        ready,
        step_stop,
        Arc::clone(global_stop),
    );
    let (outcome, (done, seen)) = run_step(watch::run(req, std::io::stdout()), actor).await;
    let outcome = outcome?;
    println!("   did:         {done}");
    println!("   client saw:  {seen}");
    let mut got: Vec<String> = outcome
        .verdicts
        .iter()
        .map(|v| v.cause.to_string())
        .collect();
    got.sort();
    got.dedup();
    let row = Row {
        title: step.title,
        expected: step.expected,
        got,
        client: seen,
    };
    Ok((row, outcome.notes))
}

/// The closing table, and the precision the kernel allowed.
fn print_table(rows: &[Row], notes: &[String]) {
    println!(
        "\n{:<4} {:<48} {:<22} {:<22} {:<28} RESULT",
        "STEP", "WHAT", "EXPECTED", "VERDICT", "CLIENT SAW"
    );
    for (i, r) in rows.iter().enumerate() {
        let got = if r.got.is_empty() {
            "(none)".to_string()
        } else {
            r.got.join(", ")
        };
        println!(
            "{:<4} {:<48} {:<22} {:<22} {:<28} {}",
            i + 1,
            r.title,
            r.expected.unwrap_or("(none)"),
            got,
            r.client,
            if r.right() { "right" } else { "WRONG" }
        );
    }
    if notes.is_empty() {
        println!("\nEvery probe loaded on this kernel: full precision.");
    } else {
        println!("\nPrecision on this kernel:");
        for n in notes {
            println!("  - {n}");
        }
    }
}

/// Runs the demo; Ok(true) when every step was attributed right.
pub async fn run(hook: HookChoice) -> Result<bool, Error> {
    let stale = leftovers();
    if !stale.is_empty() {
        return Err(Error::DemoLeftovers(stale.join(", ")));
    }
    crate::load::kernel::check_privileges()?;
    // The kernel's own refusal (no BTF) comes before any namespace is made: a kernel droptrace
    // cannot watch gets its one sentence at once, with nothing to clean up.
    crate::load::kernel::btf::KernelBtf::from_sys()?;
    let (interrupted, stop) = interrupt_listener()?;

    println!(
        "droptrace demo: building a private lab (client, Docker-like host, container) in network namespaces…"
    );
    let lab = Arc::new(
        Lab::up(LabSpec::new("demo"))
            .map_err(|e| Error::Io(format!("building the demo lab: {e}")))?,
    );
    let scripts = Arc::new(Scripts::new()?);
    println!(
        "  client {} ({}), host {} ({}, publishes port 5000 to container {}:5000)",
        lab.ext,
        lab::EXT_ADDR,
        lab.host,
        lab::HOST_ADDR,
        lab::CTR_ADDR
    );

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (i, s) in STEPS.iter().enumerate() {
        if interrupted.load(Ordering::SeqCst) {
            break;
        }
        println!("\n== step {}/{}: {}", i + 1, STEPS.len(), s.title);
        let (row, step_notes) = step(&lab, &scripts, s, hook, &stop).await?;
        if notes.is_empty() {
            notes = step_notes;
        }
        rows.push(row);
        let _ = std::io::stdout().flush();
    }
    drop(scripts);
    if let Ok(lab) = Arc::try_unwrap(lab) {
        drop(lab);
    }

    print_table(&rows, &notes);
    if interrupted.load(Ordering::SeqCst) {
        println!("\ninterrupted: the lab was removed");
        return Ok(false);
    }
    let all_right = rows.len() == STEPS.len() && rows.iter().all(Row::right);
    println!(
        "\n{}",
        if all_right {
            "every step was attributed right; the lab is gone."
        } else {
            "some steps were attributed WRONG (see above); the lab is gone."
        }
    );
    Ok(all_right)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands for the lab an actor holds: it records when it is released.
    struct Held(Arc<AtomicBool>);
    impl Drop for Held {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn an_early_watch_error_ends_the_step_and_releases_what_the_actor_holds() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let released = Arc::new(AtomicBool::new(false));
        let result = rt.block_on(async {
            let ready = Arc::new(Notify::new());
            let held = Held(Arc::clone(&released));
            // The actor of every demo step: it waits for a readiness the failed watch never
            // signals.
            let actor = tokio::spawn(async move {
                let _held = held;
                ready.notified().await;
                (String::from("acted"), String::from("seen"))
            });
            let failing_watch = async { Err(Error::NoPorts) };
            tokio::time::timeout(Duration::from_secs(5), run_step(failing_watch, actor)).await
        });
        let (outcome, acted) = result.expect("the step hung after the watch failed early");
        assert!(
            matches!(outcome, Err(Error::NoPorts)),
            "the watch's own error must come back, got {:?}",
            outcome.map(|o| o.verdicts.len())
        );
        assert_eq!(
            acted,
            (String::new(), String::new()),
            "the actor must not act"
        );
        assert!(
            released.load(Ordering::SeqCst),
            "the cancelled actor still holds the lab"
        );
    }
}
