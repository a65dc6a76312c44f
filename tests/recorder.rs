//! The always-on recorder: `droptrace record` runs, a real process changes forwarding or the
//! firewall in a lab namespace, and a `watch` (or `check`) started afterwards names that
//! change from the journal, with its author and its age. Also: restarts, a full disk, an
//! unwritable directory, rotation.
mod common;

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{DROPTRACE, Output, Watch, docker::DockerHost, require_root, run_droptrace};
use serde_json::Value;
use tracer::lab::{Lab, LabSpec, Outcome};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

fn lab(label: &str) -> Lab {
    require_root();
    Lab::up(LabSpec::new(label)).unwrap_or_else(|e| panic!("building the lab: {e}"))
}

/// A directory of the test's own, removed (unmounted first, if the test mounted a tmpfs
/// there) on drop.
struct TempDir(PathBuf, bool);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("dt-rec-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir, false)
    }

    /// A tmpfs with these mount options, on the directory.
    fn tmpfs(name: &str, options: &str) -> TempDir {
        let mut dir = TempDir::new(name);
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs", dir.path()])
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs on {}", dir.path());
        dir.1 = true;
        dir
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.1 {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An executable script named `name` in `dir` (its process's comm is the name).
fn script(dir: &TempDir, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_string()
}

/// A running `droptrace record`, killed on drop; its stderr collected as it comes.
struct Recorder {
    child: Option<Child>,
    journal: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl Recorder {
    /// Starts `droptrace record --journal DIR ARGS…` and waits (bounded) for its start record.
    fn start(journal: &Path, args: &[&str]) -> Recorder {
        let mut child = Command::new(&*DROPTRACE)
            .arg("record")
            .arg("--journal")
            .arg(journal)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn droptrace record");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut rec = Recorder {
            child: Some(child),
            journal: journal.to_path_buf(),
            stderr,
        };
        let starts = entries(journal)
            .iter()
            .filter(|e| e["type"] == "recorder" && e["event"] == "start")
            .count();
        rec.wait("its start record", |all| {
            all.iter()
                .filter(|e| e["type"] == "recorder" && e["event"] == "start")
                .count()
                > starts
        });
        rec
    }

    /// Waits (up to 20 s) until the journal satisfies `done`; its entries then.
    fn wait(&mut self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let all = entries(&self.journal);
            if done(&all) {
                return all;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "the journal never showed {what} (recorder exit: {exited:?}); stderr:\n{}\njournal:\n{all:#?}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first change in the journal that `pick` accepts, once there is one.
    fn change(&mut self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let all = self.wait(what, |all| {
            all.iter().any(|e| e["type"] == "change" && pick(e))
        });
        all.into_iter()
            .find(|e| e["type"] == "change" && pick(e))
            .unwrap()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGTERM, then its exit status (bounded wait).
    fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the recorder did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every record of the journal in `dir`, oldest first; each line must be whole JSON.
fn entries(dir: &Path) -> Vec<Value> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_str().is_some_and(|s| s.ends_with(".jsonl")))
                .collect()
        })
        .unwrap_or_default();
    segs.sort();
    segs.iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(|l| {
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("torn record ({e}): {l}"))
                })
                .collect::<Vec<Value>>()
        })
        .collect()
}

fn comms(process: &Value) -> Vec<String> {
    std::iter::once(process)
        .chain(process["ancestors"].as_array().into_iter().flatten())
        .filter_map(|p| p["comm"].as_str().map(str::to_string))
        .collect()
}

fn final_verdict<'a>(out: &'a Output, cause: &str) -> &'a Value {
    out.of_type("verdict")
        .into_iter()
        .find(|v| v["final"] == true && v["cause"] == cause)
        .unwrap_or_else(|| panic!("no final {cause} verdict: {}", out.dump()))
}

/// `droptrace check --netns NS --journal DIR [--json]`: exit code and stdout.
fn check(netns: &str, journal: &str, json: bool) -> (Option<i32>, String) {
    let mut args = vec![
        "check",
        "--netns",
        netns,
        "--journal",
        journal,
        "--port",
        "5000",
    ];
    if json {
        args.push("--json");
    }
    let out = run_droptrace(&args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_seed_story_a_web_apps_network_restart_is_named_by_a_watch_started_hours_later() {
    let lab = lab("recseed");
    let dir = TempDir::new("seed");
    let journal = dir.join("journal");
    let mut rec = Recorder::start(&journal, &["--netns", &lab.host]);
    // The incident: a web app whose restart hook runs the distribution's network restart,
    // which re-applies sysctl.conf and turns forwarding off.
    let restart = script(
        &dir,
        "network-restart",
        "sysctl -w net.ipv4.ip_forward=0 >/dev/null",
    );
    let webapp = script(&dir, "webapp", &restart);
    lab.exec(&lab.host, &[&webapp]).expect("run the web app");
    let change = rec.change("the ip_forward write", |c| {
        c["key"] == "net.ipv4.ip_forward" && c["new"] == "0"
    });
    assert_eq!(change["old"], "1");
    assert_eq!(change["process"]["captured"], "kernel");
    let chain = comms(&change["process"]);
    assert_eq!(
        chain[..3],
        ["sysctl", "network-restart", "webapp"],
        "{change:#}"
    );
    // Time passes; the recorder keeps running; then someone starts looking.
    std::thread::sleep(Duration::from_secs(2));
    let watch = Watch::start(&[
        "--port",
        "5000",
        "--netns",
        &lab.host,
        "--journal",
        journal.to_str().unwrap(),
    ]);
    assert_eq!(lab.client_request(CLIENT_TIMEOUT), Outcome::Timeout);
    let out = watch.stop();
    assert!(
        out.of_type("change").is_empty(),
        "a journal change is not one this run saw: {}",
        out.dump()
    );
    let v = final_verdict(&out, "forwarding_disabled");
    let culprit = &v["culprit"];
    assert_eq!(culprit["key"], "net.ipv4.ip_forward", "{v:#}");
    assert_eq!(culprit["process"]["pid"], change["process"]["pid"]);
    assert_eq!(culprit["journal"], journal.to_str().unwrap());
    assert!(culprit["age_s"].as_u64().unwrap() >= 2, "{culprit:#}");
    assert!(comms(&culprit["process"]).contains(&"webapp".to_string()));

    // `check` names the same change, in words and in JSON.
    let (code, text) = check(&lab.host, journal.to_str().unwrap(), false);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("changed by: net.ipv4.ip_forward 1 -> 0, ")
            && text.contains(" ago (journal ")
            && text.contains("network-restart"),
        "{text}"
    );
    let (_, json) = check(&lab.host, journal.to_str().unwrap(), true);
    let finding: Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(finding["cause"], "forwarding_disabled");
    assert_eq!(
        finding["culprit"]["process"]["pid"],
        change["process"]["pid"]
    );
    assert!(
        rec.running(),
        "the recorder keeps running: {}",
        rec.stderr()
    );

    // `history` shows it, filtered by namespace, key and time.
    let out = run_droptrace(&[
        "history",
        "--journal",
        journal.to_str().unwrap(),
        "--netns",
        &lab.host,
        "--key",
        "net.ipv4.ip_forward",
        "--since",
        "10m",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("net.ipv4.ip_forward 1 -> 0") && text.contains("`sysctl -w"),
        "{text}"
    );
    let none = run_droptrace(&[
        "history",
        "--journal",
        journal.to_str().unwrap(),
        "--until",
        "1d",
    ]);
    assert!(String::from_utf8_lossy(&none.stdout).contains("no record"));
}

#[test]
fn an_iptables_nat_flush_made_before_the_watch_is_named_with_what_it_removed() {
    let lab = lab("recflush");
    let dir = TempDir::new("flush");
    let journal = dir.join("journal");
    let mut rec = Recorder::start(&journal, &["--netns", &lab.host]);
    let cleanup = script(&dir, "fw-cleanup", "iptables-nft -t nat -F DOCKER");
    lab.exec(&lab.host, &[&cleanup]).expect("flush");
    let change = rec.change("the nat flush", |c| c["source"] == "nftables");
    let removed = change["changes"].to_string();
    assert!(
        removed.contains("delete rule ip nat DOCKER") && removed.contains("dnat to"),
        "the DNAT rule removed is named: {change:#}"
    );
    assert!(comms(&change["process"]).contains(&"fw-cleanup".to_string()));

    let watch = Watch::start(&[
        "--port",
        "5000",
        "--netns",
        &lab.host,
        "--journal",
        journal.to_str().unwrap(),
    ]);
    assert_eq!(lab.client_request(CLIENT_TIMEOUT), Outcome::Refused);
    let out = watch.stop();
    let v = final_verdict(&out, "missing_chain");
    assert_eq!(v["culprit"]["source"], "nftables", "{v:#}");
    assert_eq!(v["culprit"]["journal"], journal.to_str().unwrap());
    assert!(comms(&v["culprit"]["process"]).contains(&"fw-cleanup".to_string()));
}

#[test]
fn a_firewalld_reload_made_before_the_watch_is_named() {
    let mut host = DockerHost::start("recfwd", false);
    host.run_web();
    let dir = TempDir::new("firewalld");
    let journal = dir.join("journal");
    let mut rec = Recorder::start(&journal, &["--netns", &host.lab.host]);
    host.start_firewalld();
    host.firewall_cmd(&["--reload"])
        .expect("firewall-cmd --reload");
    let by_firewalld = |c: &Value| {
        c["source"] == "nftables" && comms(&c["process"]).contains(&"firewalld".to_string())
    };
    rec.change("firewalld's changes", by_firewalld);
    let watch = Watch::start(&[
        "--docker-host",
        host.sock.to_str().unwrap(),
        "--journal",
        journal.to_str().unwrap(),
    ]);
    let seen = host.lab.client_request(CLIENT_TIMEOUT);
    let out = watch.stop();
    assert!(matches!(seen, Outcome::Unreachable(_)), "{seen}");
    let v = final_verdict(&out, "missing_chain");
    assert_eq!(v["container"], "web");
    assert_eq!(v["culprit"]["journal"], journal.to_str().unwrap(), "{v:#}");
    assert!(by_firewalld(&v["culprit"]), "{v:#}");
}

#[test]
fn a_restarted_recorder_keeps_its_journal_and_finds_what_changed_while_it_was_stopped() {
    let lab = lab("recrestart");
    let dir = TempDir::new("restart");
    let journal = dir.join("journal");
    let rec = Recorder::start(&journal, &["--netns", &lab.host]);
    assert!(rec.stop().success());
    lab.sysctl(&lab.host, "net.ipv4.ip_forward", "0").unwrap();
    let mut rec = Recorder::start(&journal, &["--netns", &lab.host]);
    let change = rec.change("the write made while stopped", |c| {
        c["key"] == "net.ipv4.ip_forward"
    });
    assert_eq!((&change["old"], &change["new"]), (&"1".into(), &"0".into()));
    assert_eq!(change["process"]["captured"], "unknown");
    assert!(
        change["seen_by"].as_str().unwrap().contains("stopped"),
        "{change:#}"
    );
    let events: Vec<String> = entries(&journal)
        .iter()
        .filter(|e| e["type"] == "recorder")
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        events,
        ["start", "stop", "start"],
        "the first run's records are kept"
    );

    // The verdict says honestly that the author is unknown, and when it was found.
    let watch = Watch::start(&[
        "--port",
        "5000",
        "--netns",
        &lab.host,
        "--journal",
        journal.to_str().unwrap(),
    ]);
    assert_eq!(lab.client_request(CLIENT_TIMEOUT), Outcome::Timeout);
    let out = watch.stop();
    let v = final_verdict(&out, "forwarding_disabled");
    assert_eq!(v["culprit"]["process"]["captured"], "unknown", "{v:#}");
}

#[test]
fn a_full_disk_is_said_clearly_and_no_record_is_lost() {
    let lab = lab("recfull");
    let dir = TempDir::tmpfs("full", "size=256k,mode=0700");
    let journal = dir.join("journal");
    let mut rec = Recorder::start(&journal, &["--netns", &lab.host]);
    // Fill the filesystem.
    let _ = Command::new("dd")
        .args([
            "if=/dev/zero",
            "bs=4k",
            &format!("of={}", dir.join("fill").display()),
        ])
        .stderr(Stdio::null())
        .status();
    // Writes go on until one finds no room (the segment's last page may still take a few).
    let mut written = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rec.stderr().contains("cannot write the journal") {
        assert!(Instant::now() < deadline, "no error said: {}", rec.stderr());
        let v = if written.len() % 2 == 0 { "0" } else { "1" };
        lab.sysctl(&lab.host, "net.ipv4.ip_forward", v).unwrap();
        written.push(v);
        std::thread::sleep(Duration::from_millis(200));
    }
    let err = rec.stderr();
    assert!(
        err.contains("No space left on device")
            && err.contains("held in memory")
            && err.contains("already written are intact"),
        "{err}"
    );
    // What was written before is whole (entries() fails on a torn line).
    assert_eq!(entries(&journal)[0]["event"], "start");
    // Space comes back: the held changes are written with the next one, in order.
    std::fs::remove_file(dir.join("fill")).unwrap();
    let v = if written.len() % 2 == 0 { "0" } else { "1" };
    lab.sysctl(&lab.host, "net.ipv4.ip_forward", v).unwrap();
    written.push(v);
    let all = rec.wait("every write", |all| {
        all.iter()
            .filter(|e| e["key"] == "net.ipv4.ip_forward")
            .count()
            == written.len()
    });
    let values: Vec<&str> = all
        .iter()
        .filter(|e| e["key"] == "net.ipv4.ip_forward")
        .map(|e| e["new"].as_str().unwrap())
        .collect();
    assert_eq!(values, written);
    assert!(rec.stop().success());
}

#[test]
fn an_unwritable_journal_directory_is_refused_at_start_with_a_clear_error() {
    require_root();
    let dir = TempDir::tmpfs("readonly", "ro,size=64k");
    let out = run_droptrace(&["record", "--journal", &format!("{}/journal", dir.path())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("cannot write") && err.contains("Read-only file system"),
        "{err}"
    );
    let out = run_droptrace(&["history", "--journal", &format!("{}/none", dir.path())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("no change journal") && err.contains("droptrace record"),
        "{err}"
    );
}

#[test]
fn the_journal_rotates_within_its_bound_and_keeps_the_newest_records() {
    let lab = lab("recrotate");
    let dir = TempDir::new("rotate");
    let journal = dir.join("journal");
    let mut rec = Recorder::start(&journal, &["--netns", &lab.host, "--max-size", "32768"]);
    let writes = 120;
    let flips = script(
        &dir,
        "flip-rp-filter",
        &format!(
            "i=0; while [ $i -lt {writes} ]; do echo $((i % 2)) > /proc/sys/net/ipv4/conf/all/rp_filter; i=$((i+1)); done; echo 2 > /proc/sys/net/ipv4/conf/all/rp_filter"
        ),
    );
    lab.exec(&lab.host, &[&flips]).expect("flip rp_filter");
    let all = rec.wait("the last write", |all| {
        all.last()
            .is_some_and(|e| e["key"] == "net.ipv4.conf.all.rp_filter" && e["new"] == "2")
    });
    let segs: Vec<(String, u64)> = std::fs::read_dir(&journal)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_str().unwrap().ends_with(".jsonl"))
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    let total: u64 = segs.iter().map(|s| s.1).sum();
    assert!(total <= 32768 + 4096, "{total} bytes in {segs:?}");
    assert!(
        !segs.iter().any(|s| s.0 == "changes-00000001.jsonl"),
        "the oldest segment went: {segs:?}"
    );
    let kept = all.iter().filter(|e| e["type"] == "change").count();
    assert!(kept > 10 && kept < writes, "{kept} of {writes} kept");
    assert!(rec.stop().success());
}
