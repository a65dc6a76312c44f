//! Podman publishing ports, and the incident's causes for them.
//! - Real rootful Podman (`common::podman`): `podman run -p 5000:5000` discovered over
//!   Podman's Docker-compatible API with the container's name, and from netavark's rules
//!   without the API; each cause attributed with podman's own fixes, with every netavark
//!   firewall driver this machine has (iptables; nftables too from netavark 1.12).
//! - Podman's network backend alone, the real netavark run by hand, publishing `-p 5001:5000`
//!   (host port differs from the container's) with its iptables driver, and the faults users
//!   met with it: a DROP for the container port in FORWARD next to netavark's own
//!   `--ctstate INVALID` DROP.
mod common;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use common::{
    Output, Watch,
    netavark::PodmanHost,
    podman::{PodmanEngine, drivers},
    run_droptrace,
};
use serde_json::Value;
use tracer::lab::{self, Outcome};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a remote client reaches the published port.
const PUBLISHED: SocketAddr = SocketAddr::new(IpAddr::V4(lab::HOST_ADDR), 5001);

/// netavark's INVALID drop (first in its forward chain, as netavark >= 1.5 writes it) and a
/// user's DROP for the container's port in FORWARD.
fn block_container_port(host: &PodmanHost) {
    let lab = &host.lab;
    let invalid = [
        "-I",
        "NETAVARK_FORWARD",
        "1",
        "-m",
        "conntrack",
        "--ctstate",
        "INVALID",
        "-j",
        "DROP",
    ];
    lab.iptables(&invalid).unwrap();
    let drop = [
        "-I",
        "FORWARD",
        "1",
        "-d",
        "10.88.0.2",
        "-p",
        "tcp",
        "--dport",
        "5000",
        "-j",
        "DROP",
    ];
    lab.iptables(&drop).unwrap();
}

#[test]
fn netavark_publishes_and_droptrace_finds_the_port_from_its_rules() {
    let host = PodmanHost::up("nvports", 5001, 5000);
    let lab = &host.lab;
    assert_eq!(
        lab.request(&lab.ext, PUBLISHED, CLIENT_TIMEOUT),
        Outcome::Http(200)
    );
    let out = run_droptrace(&["ports", "--netns", &lab.host, "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let port: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["host_port"] == 5001)
        .unwrap_or_else(|| panic!("5001 not discovered: {text}"));
    assert_eq!(port["container_ip"], "10.88.0.2", "{port}");
    assert_eq!(port["container_port"], 5000, "{port}");
}

#[test]
fn a_drop_for_the_container_port_is_blamed_on_it_not_on_netavarks_invalid_rule() {
    let host = PodmanHost::up("nvdrop", 5001, 5000);
    let lab = &host.lab;
    block_container_port(&host);
    let watch = Watch::start(&["--port", "5001", "--netns", &lab.host]);
    let seen = lab.request(&lab.ext, PUBLISHED, CLIENT_TIMEOUT);
    let out = watch.stop();
    assert_eq!(seen, Outcome::Timeout);
    let verdicts = out.of_type("verdict");
    let v = verdicts
        .iter()
        .find(|v| v["final"] == true)
        .unwrap_or_else(|| panic!("no verdict: {}", out.dump()));
    assert_eq!(v["cause"], "firewall_drop", "{v:#}");
    assert_eq!(v["port"], 5001, "{v:#}");
    assert_eq!(v["proximate"]["hook"], "FORWARD", "{v:#}");
    let rule = v["proximate"]["rule"].as_str().unwrap_or_default();
    assert!(
        rule.contains("filter FORWARD rule 1") && rule.contains("--dport 5000"),
        "the user's rule, not netavark's: {v:#}"
    );
    assert!(!v["fix"].to_string().contains("INVALID"), "{v:#}");
}

#[test]
fn check_sees_a_forward_drop_of_the_container_port_after_dnat() {
    let host = PodmanHost::up("nvcheck", 5001, 5000);
    let lab = &host.lab;
    let healthy = run_droptrace(&["check", "--netns", &lab.host, "--port", "5001", "--json"]);
    assert_eq!(
        healthy.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&healthy.stdout)
    );
    block_container_port(&host);
    let out = run_droptrace(&["check", "--netns", &lab.host, "--port", "5001", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let finding: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "finding")
        .unwrap_or_else(|| panic!("no finding: {text}"));
    assert_eq!(finding["cause"], "firewall_drop", "{finding}");
    assert_eq!(finding["port"], 5001, "{finding}");
    let what = finding["what"].as_str().unwrap_or_default();
    assert!(
        what.contains("FORWARD rule 1") && what.contains("--dport 5000"),
        "{finding}"
    );
    assert!(
        !text.contains("INVALID"),
        "netavark's own rule is no finding: {text}"
    );
}

/// `droptrace ARGS --json`: exit code and every JSON line.
fn json_lines(args: &[&str]) -> (Option<i32>, Vec<Value>) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = run_droptrace(&all);
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out.status.code(), lines)
}

/// `droptrace ports ARGS --json`'s line for port 5000.
fn port_5000(args: &[&str]) -> Value {
    let mut all = vec!["ports"];
    all.extend_from_slice(args);
    let (code, ports) = json_lines(&all);
    assert_eq!(code, Some(0), "{ports:?}");
    ports
        .into_iter()
        .find(|p| p["host_port"] == 5000)
        .unwrap_or_else(|| panic!("ports {args:?}: 5000 not listed"))
}

fn check(engine: &PodmanEngine) -> (Option<i32>, Vec<Value>) {
    json_lines(&["check", "--docker-host", engine.sock_arg()])
}

fn watch(engine: &PodmanEngine) -> Watch {
    // No --port, no --netns: both come from Podman's API.
    let w = Watch::start(&["--docker-host", engine.sock_arg()]);
    assert_eq!(
        w.start["netns"],
        common::netns_inode(&engine.lab.host),
        "the engine's namespace is watched: {}",
        w.start
    );
    w
}

/// The run's one final verdict: its cause, naming Podman's container.
fn the_verdict(out: &Output, cause: &str, engine: &PodmanEngine) -> Value {
    let driver = engine.driver;
    let v: Vec<&Value> = out
        .of_type("verdict")
        .into_iter()
        .filter(|v| v["final"] == true)
        .collect();
    if v.len() != 1 {
        // What the namespace looked like, to tell a missed drop from a path not taken.
        let lab = &engine.lab;
        let state: Vec<String> = [
            &["iptables-save", "-c"][..],
            &["nft", "list", "ruleset"],
            &["sysctl", "-a", "--pattern", "forwarding|ip_forward"],
            &["conntrack", "-L"],
            &["ip", "-d", "addr"],
        ]
        .iter()
        .map(|cmd| {
            format!(
                "$ {cmd:?}\n{}",
                lab.exec(&lab.host, cmd).unwrap_or_else(|e| e.to_string())
            )
        })
        .collect();
        // And whether a watch told the namespace and port directly sees the drop.
        let direct = Watch::start(&["--netns", &lab.host, "--port", "5000"]);
        let seen = lab.client_request(CLIENT_TIMEOUT);
        let direct = direct.stop();
        panic!(
            "{driver:?}: one verdict expected: {}\n{}\nwith --netns and --port (client saw {seen}): {}",
            out.dump(),
            state.join("\n"),
            direct.dump()
        );
    }
    assert_eq!(v[0]["cause"], cause, "{driver:?}: {}", out.dump());
    assert_eq!(v[0]["container"], "web", "{driver:?}: {:#}", v[0]);
    v[0].clone()
}

#[test]
fn podman_ports_are_found_over_its_api_with_the_container_and_from_netavarks_rules() {
    for driver in drivers() {
        let engine = PodmanEngine::start("pmports", driver);
        engine.run_web();
        let version = engine
            .podman(&["version", "--format", "{{.Server.Version}}"])
            .unwrap_or_default();
        let prefix = format!("podman-{}-{}", version.trim(), driver.name());
        common::save_engine_fixtures(&engine.lab, &engine.sock, &prefix);
        let w = watch(&engine);
        assert_eq!(w.start["ports"], serde_json::json!([5000]), "{driver:?}");
        assert_eq!(w.start["engine"]["name"], "podman", "{driver:?}");
        assert_eq!(w.start["published"][0]["container"], "web", "{driver:?}");
        assert_eq!(
            engine.lab.client_request(CLIENT_TIMEOUT),
            Outcome::Http(200)
        );
        let out = w.stop();
        assert!(
            out.of_type("verdict").is_empty(),
            "{driver:?}: {}",
            out.dump()
        );

        let web = port_5000(&["--docker-host", engine.sock_arg()]);
        assert_eq!(web["container"], "web", "{web}");
        assert_eq!(web["source"], "podman", "{web}");
        assert_eq!(web["container_ip"], engine.web_ip().to_string(), "{web}");

        // Without the API: netavark's DNAT in the namespace's ruleset.
        let web = port_5000(&["--netns", &engine.lab.host]);
        assert_eq!(web["source"], "nat-rule", "{web}");
        assert_eq!(
            web["engine"], "podman",
            "netavark's rules are Podman's: {web}"
        );
        assert_eq!(web["container_ip"], engine.web_ip().to_string(), "{web}");

        let (code, lines) = check(&engine);
        assert_eq!(code, Some(0), "{driver:?}: {lines:#?}");
        assert_eq!(lines.last().unwrap()["healthy"], true, "{lines:#?}");
    }
}

#[test]
fn forwarding_off_for_a_podman_port_is_forwarding_disabled_naming_the_container() {
    for driver in drivers() {
        let engine = PodmanEngine::start("pmfwd", driver);
        engine.run_web();
        let w = watch(&engine);
        engine
            .lab
            .sysctl(&engine.lab.host, "net.ipv4.ip_forward", "0")
            .unwrap();
        assert_eq!(engine.lab.client_request(CLIENT_TIMEOUT), Outcome::Timeout);
        let out = w.stop();
        the_verdict(&out, "forwarding_disabled", &engine);
        let (code, lines) = check(&engine);
        assert_eq!(code, Some(1), "{driver:?}: {lines:#?}");
        assert_eq!(lines[0]["cause"], "forwarding_disabled", "{lines:#?}");
    }
}

#[test]
fn netavarks_dnat_flushed_is_missing_chain_with_podmans_fix() {
    for driver in drivers() {
        let engine = PodmanEngine::start("pmnat", driver);
        engine.run_web();
        engine.flush_netavark_nat();
        let w = watch(&engine);
        let seen = engine.lab.client_request(CLIENT_TIMEOUT);
        let out = w.stop();
        // What the client met, kept beside the engine's fixtures (the README's table).
        let version = engine.podman(&["version", "--format", "{{.Server.Version}}"]);
        common::save_fixture(
            &format!(
                "podman-{}-{}-nat-flushed-client.txt",
                version.unwrap_or_default().trim(),
                driver.name()
            ),
            &format!("{seen}\n"),
        );
        let (code, lines) = check(&engine);
        assert_eq!(code, Some(1), "{driver:?}: {lines:#?}");
        let f = lines
            .iter()
            .find(|l| l["cause"] == "missing_chain")
            .unwrap_or_else(|| panic!("{driver:?}: no missing_chain: {lines:#?}"));
        let what = f["what"].as_str().unwrap_or_default();
        match seen {
            // Rootful Podman (4.3.1, 5.4.2): conmon holds the port with a listening
            // socket, accepts the connection and never answers. Nothing is dropped; check
            // says why.
            Outcome::Connected => {
                assert!(out.drops().is_empty(), "{}", out.dump());
                assert!(
                    what.contains("conmon") && what.contains("still listens"),
                    "{f:#}"
                );
            }
            // Nothing holds the port: the host answers the SYN with a RST, a drop watch
            // attributes to the missing DNAT.
            Outcome::Refused => {
                let v = the_verdict(&out, "missing_chain", &engine);
                assert!(
                    v["fix"].to_string().contains("podman network reload"),
                    "{v:#}"
                );
            }
            other => panic!("{driver:?}: the client saw {other}: {}", out.dump()),
        }
        assert_eq!(f["container"], "web", "{f:#}");
        let fix = f["fix"].as_str().unwrap_or_default();
        assert!(fix.contains("podman network reload"), "{f:#}");
        assert!(!fix.contains("docker"), "podman's words: {f:#}");
    }
}

#[test]
fn a_forward_drop_of_a_podman_container_is_firewall_drop_naming_it() {
    for driver in drivers() {
        let engine = PodmanEngine::start("pmdrop", driver);
        engine.run_web();
        let ip = engine.web_ip().to_string();
        let drop = [
            "-I", "FORWARD", "1", "-d", &ip, "-p", "tcp", "--dport", "5000", "-j", "DROP",
        ];
        engine.lab.iptables(&drop).unwrap();
        let w = watch(&engine);
        assert_eq!(engine.lab.client_request(CLIENT_TIMEOUT), Outcome::Timeout);
        let out = w.stop();
        let v = the_verdict(&out, "firewall_drop", &engine);
        assert_eq!(v["proximate"]["hook"], "FORWARD", "{v:#}");
        let rule = v["proximate"]["rule"].as_str().unwrap_or_default();
        assert!(
            rule.contains("FORWARD rule 1") && rule.contains(&ip),
            "{v:#}"
        );
        let (code, lines) = check(&engine);
        assert_eq!(code, Some(1), "{driver:?}: {lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l["cause"] == "firewall_drop" && l["container"] == "web"),
            "{lines:#?}"
        );
    }
}

/// Rootless Podman publishes with a userspace forwarder on the host port, no DNAT: `ports`,
/// `check` and `watch` say so; forwarding off harms nothing (measured), and what blocks the
/// host's input path is found there.
#[test]
fn rootless_podman_ports_are_said_to_be_forwarded_in_userspace() {
    let engine = PodmanEngine::start_rootless("pmrootless");
    // The engine is known rootless from its socket's peer before any container runs.
    let human = run_droptrace(&["ports", "--docker-host", engine.sock_arg()]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("podman runs rootless here as uid 65534") && text.contains("not DNATed"),
        "{text}"
    );
    if let Err(e) = engine.try_run_web() {
        // Some CI sandboxes give /dev/net/tun to root only: no rootless networking there.
        // Guests (`cargo xtask vm --distro bookworm,trixie`) run this test in full.
        let tun = std::fs::metadata("/dev/net/tun").map(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.permissions().mode() & 0o006
        });
        assert!(
            e.contains("/dev/net/tun") && tun.map_or(true, |m| m != 0o006),
            "rootless podman run: {e}"
        );
        eprintln!("skipped: /dev/net/tun is missing or not open to other users here: {e}");
        return;
    }
    // Kept beside the fixtures: the guests' runs show the rootless path really ran.
    let version = engine.podman(&["version", "--format", "{{.Server.Version}}"]);
    common::save_fixture(
        &format!(
            "podman-{}-rootless-ran.txt",
            version.unwrap_or_default().trim()
        ),
        "a remote client reached the rootless container\n",
    );
    let sock = engine.sock_arg();
    let web = port_5000(&["--docker-host", sock]);
    assert_eq!(web["rootless"], true, "{web}");
    assert_eq!(web["container"], "web", "{web}");

    let rootless_check = |when: &str, want: Option<i32>| {
        let (code, lines) = check(&engine);
        assert_eq!(code, want, "{when}: {lines:#?}");
        let summary = lines.last().unwrap();
        assert!(
            summary["notes"].to_string().contains("not DNATed"),
            "{summary}"
        );
        lines
    };
    rootless_check("healthy", Some(0));
    engine
        .lab
        .sysctl(&engine.lab.host, "net.ipv4.ip_forward", "0")
        .unwrap();
    assert_eq!(
        engine.lab.client_request(CLIENT_TIMEOUT),
        Outcome::Http(200)
    );
    rootless_check("ip_forward=0", Some(0));

    let drop = [
        "-I", "INPUT", "1", "-p", "tcp", "--dport", "5000", "-j", "DROP",
    ];
    engine.lab.iptables(&drop).unwrap();
    let w = watch(&engine);
    assert!(
        w.start["notes"].to_string().contains("runs rootless"),
        "{}",
        w.start
    );
    assert_eq!(engine.lab.client_request(CLIENT_TIMEOUT), Outcome::Timeout);
    let out = w.stop();
    let v = the_verdict(&out, "firewall_drop", &engine);
    assert_eq!(v["proximate"]["hook"], "LOCAL_IN", "{v:#}");
    let lines = rootless_check("INPUT drop", Some(1));
    assert!(
        lines
            .iter()
            .any(|l| l["cause"] == "firewall_drop" && l["port"] == 5000),
        "{lines:#?}"
    );
}
