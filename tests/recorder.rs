//! The always-on recorder: `droptrace record` runs, a real process changes forwarding or the
//! firewall in a lab namespace, and a `watch` (or `check`) started afterwards names that
//! change from the journal, with its author and its age. Also: restarts, a full disk, an
//! unwritable directory, rotation.
mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Output, Watch,
    recorder::{Recorder, TempDir, comms, entries, script},
    require_root, run_droptrace,
};
use serde_json::Value;
use tracer::lab::{Lab, LabSpec, Outcome};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

fn lab(label: &str) -> Lab {
    require_root();
    Lab::up(LabSpec::new(label)).unwrap_or_else(|e| panic!("building the lab: {e}"))
}

fn final_verdict<'a>(out: &'a Output, cause: &str) -> &'a Value {
    out.of_type("verdict")
        .into_iter()
        .find(|v| v["final"] == true && v["cause"] == cause)
        .unwrap_or_else(|| panic!("no final {cause} verdict: {}", out.dump()))
}

/// `droptrace watch` of the lab's port 5000, started now, with the recorder's journal.
fn watch_reading(lab: &Lab, journal: &std::path::Path) -> Watch {
    Watch::start(&[
        "--port",
        "5000",
        "--netns",
        &lab.host,
        "--journal",
        journal.to_str().unwrap(),
    ])
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
    // A fingerprint every second: where the kernel refuses cgroup/sysctl (Debian 11's 5.10),
    // that is how the recorder finds the write, without its author.
    let mut rec = Recorder::start(
        &journal,
        &["--netns", &lab.host, "--fingerprint-every", "1"],
    );
    let hooked = rec.hooks().contains(&"sysctl_writes".to_string());
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
    if hooked {
        assert_eq!(change["process"]["captured"], "kernel");
        let chain = comms(&change["process"]);
        assert_eq!(
            chain[..3],
            ["sysctl", "network-restart", "webapp"],
            "{change:#}"
        );
    } else {
        assert_eq!(change["process"]["captured"], "unknown", "{change:#}");
    }
    // Time passes; the recorder keeps running; then someone starts looking.
    std::thread::sleep(Duration::from_secs(2));
    let watch = watch_reading(&lab, &journal);
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
    assert_eq!(culprit["process"], change["process"]);
    assert_eq!(culprit["journal"], journal.to_str().unwrap());
    assert!(culprit["age_s"].as_u64().unwrap() >= 2, "{culprit:#}");
    assert_eq!(
        comms(&culprit["process"]).contains(&"webapp".to_string()),
        hooked
    );

    // `check` names the same change, in words and in JSON.
    let (code, text) = check(&lab.host, journal.to_str().unwrap(), false);
    assert_eq!(code, Some(1), "{text}");
    let author = if hooked {
        "network-restart"
    } else {
        "an author no hook saw"
    };
    assert!(
        text.contains("changed by: net.ipv4.ip_forward 1 -> 0, ")
            && text.contains(" ago (journal ")
            && text.contains(author),
        "{text}"
    );
    let (_, json) = check(&lab.host, journal.to_str().unwrap(), true);
    let finding: Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(finding["cause"], "forwarding_disabled");
    assert_eq!(finding["culprit"]["process"], change["process"]);
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
    assert!(text.contains("net.ipv4.ip_forward 1 -> 0"), "{text}");
    assert_eq!(text.contains("`sysctl -w"), hooked, "{text}");
    let json = run_droptrace(&["history", "--journal", journal.to_str().unwrap(), "--json"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "recorder", "{lines:#?}");
    assert!(lines.iter().any(|l| l["process"] == change["process"]));
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

    let watch = watch_reading(&lab, &journal);
    assert_eq!(lab.client_request(CLIENT_TIMEOUT), Outcome::Refused);
    let out = watch.stop();
    let v = final_verdict(&out, "missing_chain");
    assert_eq!(v["culprit"]["source"], "nftables", "{v:#}");
    assert_eq!(v["culprit"]["journal"], journal.to_str().unwrap());
    assert!(comms(&v["culprit"]["process"]).contains(&"fw-cleanup".to_string()));
}

#[test]
fn a_bridge_address_removed_before_the_watch_is_named_from_the_journal() {
    // A network hook script takes docker0's address (what a network manager claiming the
    // bridge does); a watch started afterwards names it, its author and its age.
    let lab = lab("recaddr");
    let dir = TempDir::new("addr");
    let journal = dir.join("journal");
    let mut rec = Recorder::start(&journal, &["--netns", &lab.host]);
    let hook = script(&dir, "ifup-hook", "ip addr flush dev docker0");
    lab.exec(&lab.host, &[&hook]).expect("flush");
    let change = rec.change("the address removal", |c| c["source"] == "rtnetlink");
    assert_eq!(change["what"], "removed address 172.17.0.1/16 from docker0");
    assert!(
        comms(&change["process"]).contains(&"ifup-hook".to_string()),
        "{change:#}"
    );

    let watch = watch_reading(&lab, &journal);
    assert_ne!(lab.client_request(CLIENT_TIMEOUT), Outcome::Http(200));
    let out = watch.stop();
    let v = final_verdict(&out, "route_lost");
    assert_eq!(v["culprit"]["source"], "rtnetlink", "{v:#}");
    assert_eq!(v["culprit"]["journal"], journal.to_str().unwrap());
    assert!(
        comms(&v["culprit"]["process"]).contains(&"ifup-hook".to_string()),
        "{v:#}"
    );
}

#[test]
fn a_restarted_recorder_keeps_its_journal_and_finds_what_changed_while_it_was_stopped() {
    let lab = lab("recrestart");
    let dir = TempDir::new("restart");
    let journal = dir.join("journal");
    let rec = Recorder::start(&journal, &["--netns", &lab.host]);
    // One recorder per journal: a second is refused while the first runs.
    let second = run_droptrace(&["record", "--journal", journal.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(3), "{err}");
    assert!(
        err.contains("another droptrace record is writing this journal"),
        "{err}"
    );
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
    let watch = watch_reading(&lab, &journal);
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
    // Changes (nf_tables tables: recorded on every kernel) go on until one finds no room
    // (the segment's last page may still take a few).
    let mut written: Vec<String> = Vec::new();
    let change = |written: &mut Vec<String>| {
        let table = format!("full{}", written.len());
        lab.exec(&lab.host, &["nft", "add", "table", "inet", &table])
            .unwrap();
        written.push(format!("add table inet {table}"));
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rec.stderr().contains("cannot write the journal") {
        assert!(Instant::now() < deadline, "no error said: {}", rec.stderr());
        change(&mut written);
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
    change(&mut written);
    let ours = |e: &&Value| {
        e["what"]
            .as_str()
            .is_some_and(|w| w.starts_with("add table inet full"))
    };
    let all = rec.wait("every change", |all| {
        all.iter().filter(ours).count() == written.len()
    });
    let values: Vec<&str> = all
        .iter()
        .filter(ours)
        .map(|e| e["what"].as_str().unwrap())
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
    // nf_tables changes, one process each (recorded on every kernel, ≈700 bytes a record).
    let writes = 120;
    let tables = script(
        &dir,
        "add-tables",
        &format!(
            "i=0; while [ $i -lt {writes} ]; do nft add table inet rot$i; i=$((i+1)); done; nft add table inet last"
        ),
    );
    lab.exec(&lab.host, &[&tables]).expect("add tables");
    let all = rec.wait("the last change", |all| {
        all.last()
            .is_some_and(|e| e["what"] == "add table inet last")
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
