//! The culprit: real processes change forwarding or the firewall in the lab's host namespace
//! while droptrace watches; the change lines and the verdicts must name them.
mod common;

use std::{os::unix::fs::PermissionsExt, path::PathBuf, time::Duration};

use common::{Output, Watch, assert_sysctl_author_unrecordable, attached, require_root};
use serde_json::Value;
use tracer::lab::{Lab, LabSpec, Outcome};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

fn lab(label: &str) -> Lab {
    require_root();
    Lab::up(LabSpec::new(label)).unwrap_or_else(|e| panic!("building the lab: {e}"))
}

/// A script file that deletes itself with its directory when dropped.
struct Script {
    dir: PathBuf,
    path: PathBuf,
}

impl Script {
    fn new(name: &str, body: &str) -> Script {
        let dir =
            std::env::temp_dir().join(format!("droptrace-culprit-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Script { dir, path }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn changes(out: &Output) -> Vec<&Value> {
    out.of_type("change")
}

fn final_verdict<'a>(out: &'a Output, cause: &str) -> &'a Value {
    out.of_type("verdict")
        .into_iter()
        .find(|v| v["final"] == true && v["cause"] == cause)
        .unwrap_or_else(|| panic!("no final {cause} verdict: {}", out.dump()))
}

fn ancestor_comms(process: &Value) -> Vec<String> {
    process["ancestors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["comm"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_web_app_that_disables_forwarding_is_named_with_its_process_chain() {
    let lab = lab("webapp");
    // The incident: a "web app" whose restart hook resets networking through a shell.
    let webapp = Script::new(
        "webapp",
        "sh -c 'sysctl -w net.ipv4.ip_forward=0 >/dev/null'",
    );
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    lab.exec(&lab.host, &[webapp.path()])
        .expect("run the web app");
    let seen = lab.client_request(CLIENT_TIMEOUT);
    let out = watch.stop();
    assert_eq!(seen, Outcome::Timeout);
    if !attached(&out, "sysctl_writes") {
        return assert_sysctl_author_unrecordable(&out);
    }

    let change = changes(&out)
        .into_iter()
        .find(|c| c["key"] == "net.ipv4.ip_forward")
        .unwrap_or_else(|| panic!("no sysctl change line: {}", out.dump()));
    assert_eq!(change["source"], "sysctl");
    assert_eq!(change["old"], "1");
    assert_eq!(change["new"], "0");
    let process = &change["process"];
    assert_eq!(process["comm"], "sysctl");
    assert_eq!(process["captured"], "kernel");
    let cmdline = process["cmdline"].as_str().unwrap_or_default();
    assert!(
        cmdline.starts_with("sysctl -w net.ipv4.ip_forward"),
        "{cmdline}"
    );
    let comms = ancestor_comms(process);
    assert_eq!(
        comms.first().map(String::as_str),
        Some("sh"),
        "parent: {comms:?}"
    );
    assert_eq!(
        comms.get(1).map(String::as_str),
        Some("webapp"),
        "grandparent: {comms:?}"
    );
    let webapp_cmd = process["ancestors"][1]["cmdline"]
        .as_str()
        .unwrap_or_default();
    assert!(webapp_cmd.contains("webapp"), "{webapp_cmd}");

    let v = final_verdict(&out, "forwarding_disabled");
    assert_eq!(v["culprit"]["key"], "net.ipv4.ip_forward", "{v:#}");
    assert_eq!(v["culprit"]["process"]["pid"], process["pid"]);
}

#[test]
fn a_script_that_deletes_the_nat_chain_is_named_with_what_vanished() {
    let lab = lab("natscript");
    let ipt = "iptables-nft";
    let script = Script::new(
        "flush-docker-nat",
        &format!(
            "{ipt} -t nat -D PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
             {ipt} -t nat -D OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER\n\
             {ipt} -t nat -F DOCKER\n{ipt} -t nat -X DOCKER"
        ),
    );
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    lab.exec(&lab.host, &[script.path()])
        .expect("run the script");
    let seen = lab.client_request(CLIENT_TIMEOUT);
    let out = watch.stop();
    assert_eq!(seen, Outcome::Refused);

    let all = changes(&out);
    assert!(
        all.len() >= 4,
        "one change per iptables call: {}",
        out.dump()
    );
    for c in &all {
        assert_eq!(c["source"], "nftables", "{c}");
        assert_eq!(c["process"]["comm"], "iptables-nft", "{c}");
        assert!(
            ancestor_comms(&c["process"]).contains(&"flush-docker-na".to_string()),
            "{c}"
        );
    }
    let vanished: Vec<String> = all
        .iter()
        .flat_map(|c| c["changes"].as_array().cloned().unwrap_or_default())
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect();
    assert!(
        vanished.iter().any(|x| x == "delete chain ip nat DOCKER"),
        "{vanished:#?}"
    );
    assert!(
        vanished.iter().any(
            |x| x.starts_with("delete rule ip nat DOCKER") && x.contains("dnat")
                || x.contains("DNAT")
        ),
        "the DNAT rule's content is named: {vanished:#?}"
    );

    let v = final_verdict(&out, "missing_chain");
    let culprit = &v["culprit"];
    assert!(
        culprit.is_object(),
        "missing_chain must link the change: {v:#}"
    );
    assert!(
        culprit["what"]
            .as_str()
            .unwrap_or_default()
            .contains("ip nat"),
        "{culprit:#}"
    );
    assert!(ancestor_comms(&culprit["process"]).contains(&"flush-docker-na".to_string()));
}

#[test]
fn a_native_nft_flush_ruleset_is_seen_and_attributed() {
    let lab = lab("nftflush");
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    lab.exec(&lab.host, &["nft", "flush", "ruleset"])
        .expect("nft flush ruleset");
    // Wait for the change line (the monitor reports asynchronously), bounded.
    std::thread::sleep(Duration::from_millis(500));
    let out = watch.stop();
    let c = changes(&out)
        .into_iter()
        .find(|c| c["process"]["comm"] == "nft")
        .unwrap_or_else(|| panic!("no change by nft: {}", out.dump()));
    let list = c["changes"].to_string();
    assert!(
        list.contains("delete table ip nat") && list.contains("delete table ip filter"),
        "{list}"
    );
    assert_eq!(c["process"]["cmdline"], "nft flush ruleset");
}

#[test]
fn legacy_table_replacements_are_attributed_in_the_kernel() {
    let lab = lab("legacychange");
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    lab.exec(
        &lab.host,
        &[
            "iptables-legacy",
            "-t",
            "filter",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "5000",
            "-j",
            "DROP",
        ],
    )
    .expect("iptables-legacy");
    std::thread::sleep(Duration::from_millis(300));
    let out = watch.stop();
    if !attached(&out, "iptables_legacy_replace") {
        let notes = out.of_type("start")[0]["notes"].to_string();
        assert!(notes.contains("cgroup/setsockopt unavailable"), "{notes}");
        return;
    }
    let c = changes(&out)
        .into_iter()
        .find(|c| c["source"] == "iptables-legacy")
        .unwrap_or_else(|| panic!("no legacy change: {}", out.dump()));
    assert_eq!(c["key"], "filter");
    assert_eq!(c["process"]["captured"], "kernel");
    let cmd = c["process"]["cmdline"].as_str().unwrap_or_default();
    assert!(
        cmd.starts_with("iptables-legacy -t filter -A INPUT"),
        "{cmd}"
    );
}

#[test]
fn writes_in_other_namespaces_are_not_changes_of_this_one() {
    let watched = lab("nswatch");
    let other = lab("nsother");
    let watch = Watch::start(&["--port", "5000", "--netns", &watched.host]);
    other
        .sysctl(&other.host, "net.ipv4.ip_forward", "0")
        .unwrap();
    other.iptables(&["-t", "nat", "-F", "DOCKER"]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = watch.stop();
    assert!(
        changes(&out).is_empty(),
        "another namespace's changes leaked in: {}",
        out.dump()
    );
}

#[test]
fn a_change_made_before_the_run_is_said_honestly() {
    let lab = lab("before");
    lab.sysctl(&lab.host, "net.ipv4.ip_forward", "0").unwrap();
    let watch = Watch::start(&["--port", "5000", "--netns", &lab.host]);
    assert_eq!(lab.client_request(CLIENT_TIMEOUT), Outcome::Timeout);
    let out = watch.stop();
    if !attached(&out, "sysctl_writes") {
        return assert_sysctl_author_unrecordable(&out);
    }
    let v = final_verdict(&out, "forwarding_disabled");
    assert!(v["culprit"].is_null(), "{v:#}");
    let note = v["culprit_note"].as_str().unwrap_or_default();
    assert!(
        note.contains("before droptrace started") && note.contains("/etc/sysctl.d"),
        "{note}"
    );
}
