//! Real rootful Podman for the engine tests: Debian's podman, conmon and netavark, started by
//! hand in the lab's host network namespace as `podman system service` on a private socket, in
//! a private mount namespace with its own storage, configuration, cgroup mounts and
//! /run/netns. The tests drive it with the remote client (`podman --remote --url`) and give
//! droptrace the same socket, Podman's Docker-compatible API. Everything goes with the
//! harness: containers removed, processes killed, files deleted.
#![allow(dead_code)]

use std::{
    net::IpAddr,
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use tracer::lab::{self, Lab};

use super::docker::{
    CGROUP_MOUNTS, ENGINE_START, WEB_ENTRYPOINT, engine_lab, output, spawn_private, web_root,
    write_script,
};

/// netavark's firewall drivers: `iptables` (every netavark), `nftables` (netavark >= 1.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Iptables,
    Nftables,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::Iptables => "iptables",
            Driver::Nftables => "nftables",
        }
    }
}

/// netavark's version, from `netavark --version` ("netavark 1.14.0").
pub fn netavark_version() -> (u32, u32) {
    let out = Command::new(super::netavark::NETAVARK)
        .arg("--version")
        .output()
        .expect("netavark --version (apt-get install netavark)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .split('.')
        .map(|n| n.parse().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0))
}

/// The drivers this machine's netavark has.
pub fn drivers() -> Vec<Driver> {
    match netavark_version() >= (1, 12) {
        true => vec![Driver::Iptables, Driver::Nftables],
        false => vec![Driver::Iptables],
    }
}

pub struct PodmanEngine {
    pub lab: Lab,
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub driver: Driver,
    service: Option<Child>,
    /// The web container's process (in a network namespace of its own: killed by pid if
    /// `podman rm` cannot).
    web_pid: std::cell::Cell<Option<i32>>,
}

impl PodmanEngine {
    /// A client namespace and a host namespace with Podman's service in it, netavark set to
    /// `driver`.
    pub fn start(label: &str, driver: Driver) -> PodmanEngine {
        let (lab, dir) = engine_lab(label, "podman");
        std::fs::create_dir_all(dir.join("net")).expect("network config dir");
        let d = dir.display();
        // Podman 5 reads the driver from containers.conf; older ones pass NETAVARK_FW on.
        let fw = driver.name();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 [network]\nnetwork_config_dir = \"{d}/net\"\nfirewall_driver = \"{fw}\"\n"
            ),
        )
        .expect("containers.conf");
        // Its own /run/netns, /run/containers and /dev/shm: the containers' namespaces never
        // show among the host's, netavark's address allocations and Podman's lock file
        // (/dev/shm/libpod_lock) stay in it.
        let script = format!(
            "{CGROUP_MOUNTS}\
             mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns\n\
             mkdir -p /run/containers && mount -t tmpfs tmpfs /run/containers\n\
             mkdir -p /dev/shm && mount -t tmpfs tmpfs /dev/shm\n\
             export CONTAINERS_CONF={d}/containers.conf NETAVARK_FW={fw}\n\
             exec podman --root {d}/root --runroot {d}/run --storage-driver vfs --tmpdir {d}/tmp \
               system service --time=0 unix://{d}/podman.sock > {d}/podman.log 2>&1"
        );
        Self::launch(lab, dir, driver, &script)
    }

    /// Rootless Podman: the service runs as uid 65534 (no subordinate ids: one mapped id is
    /// enough for the web image), its ports forwarded by Podman's own rootless port
    /// forwarder (slirp4netns with rootlessport before Podman 5, pasta from 5 on).
    pub fn start_rootless(label: &str) -> PodmanEngine {
        let (lab, dir) = engine_lab(label, "podman");
        for sub in ["home", "xdg", "root", "run", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).expect("rootless dirs");
        }
        let chown = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(chown.success(), "chown {}", dir.display());
        let d = dir.display();
        // On cgroup v2, a subtree of its own, delegated to the user as systemd does for a
        // login session: rootless Podman reads and writes its own cgroup.
        let cg = format!("/sys/fs/cgroup/{}", lab.host);
        let script = format!(
            "{CGROUP_MOUNTS}\
             if [ -f /sys/fs/cgroup/cgroup.controllers ]; then\n\
               mkdir -p {cg} && chown -R 65534:65534 {cg} && echo $$ > {cg}/cgroup.procs\n\
             fi\n\
             chmod 700 {d}/xdg\n\
             exec setpriv --reuid 65534 --regid 65534 --clear-groups \
               env HOME={d}/home XDG_RUNTIME_DIR={d}/xdg \
               podman --root {d}/root --runroot {d}/run --storage-driver vfs --tmpdir {d}/tmp \
                 --cgroup-manager cgroupfs --events-backend file --log-level info \
               system service --time=0 unix://{d}/podman.sock > {d}/podman.log 2>&1"
        );
        Self::launch(lab, dir, Driver::Iptables, &script)
    }

    /// Runs the service's start script in the lab's host namespace and waits for its API.
    fn launch(lab: Lab, dir: PathBuf, driver: Driver, script: &str) -> PodmanEngine {
        write_script(&dir.join("start-podman"), script);
        let service = spawn_private(&lab.host, &dir.join("start-podman"))
            .expect("start podman (apt-get install podman)");
        let sock = dir.join("podman.sock");
        let mut engine = PodmanEngine {
            lab,
            dir,
            sock,
            driver,
            service: Some(service),
            web_pid: Default::default(),
        };
        let deadline = Instant::now() + ENGINE_START;
        while let Err(client) = engine.podman(&["version"]) {
            let exited = engine
                .service
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(engine.dir.join("podman.log")).unwrap_or_default();
                panic!(
                    "podman system service did not answer ({exited:?}; {ENGINE_START:?} allowed): {client}\n{log}"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        engine
    }

    /// The remote client against this service.
    pub fn podman(&self, args: &[&str]) -> Result<String, String> {
        output(
            Command::new("timeout")
                .args(["120", "podman", "--remote", "--url"])
                .arg(format!("unix://{}", self.sock.display()))
                .args(args),
        )
    }

    pub fn sock_arg(&self) -> &str {
        self.sock.to_str().expect("UTF-8 socket path")
    }

    /// `podman run -d --name web -p 5000:5000` of an image imported from a tarball of
    /// busybox-static serving HTTP on 5000; waits until a remote client gets its page.
    pub fn run_web(&self) {
        self.try_run_web()
            .unwrap_or_else(|e| panic!("podman run: {e}"));
    }

    /// `run_web`, with `podman run`'s error returned rather than a panic.
    pub fn try_run_web(&self) -> Result<(), String> {
        let ctx = web_root(&self.dir.join("image"));
        let tar = self.dir.join("image.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&ctx)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .expect("tar");
        assert!(out.status.success(), "tar: {out:?}");
        let entrypoint = format!("ENTRYPOINT {WEB_ENTRYPOINT}");
        self.podman(&[
            "import",
            "--change",
            &entrypoint,
            tar.to_str().unwrap(),
            "dtweb",
        ])
        .unwrap_or_else(|e| panic!("podman import: {e}"));
        // Explicit limits: Podman's default (the hard limit of its own process) can exceed
        // what this root may set (no CAP_SYS_RESOURCE on some CI machines).
        self.podman(&[
            "run",
            "-d",
            "--name",
            "web",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "-p",
            "5000:5000",
            "dtweb",
        ])
        .map_err(|e| {
            let log = std::fs::read_to_string(self.dir.join("podman.log")).unwrap_or_default();
            format!("{e}\n{log}")
        })?;
        let pid = self.podman(&["inspect", "-f", "{{.State.Pid}}", "web"]);
        self.web_pid
            .set(pid.ok().and_then(|p| p.trim().parse().ok()));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen = self.lab.client_request(Duration::from_secs(1));
            if seen == lab::Outcome::Http(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the published port never answered: {seen}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The web container's address on Podman's network.
    pub fn web_ip(&self) -> IpAddr {
        let ip = self
            .podman(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"])
            .unwrap_or_else(|e| panic!("podman inspect: {e}"));
        ip.trim()
            .parse()
            .unwrap_or_else(|e| panic!("container address {ip:?}: {e}"))
    }

    /// Removes netavark's DNAT for the published port the way an admin's flush does: the nat
    /// table with the iptables driver (`iptables -t nat -F`), netavark's table with the
    /// nftables driver (`nft delete table inet netavark`).
    pub fn flush_netavark_nat(&self) {
        let cmd: &[&str] = match self.driver {
            Driver::Iptables => &["iptables", "-t", "nat", "-F"],
            Driver::Nftables => &["nft", "delete", "table", "inet", "netavark"],
        };
        self.lab
            .exec(&self.lab.host, cmd)
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    }
}

impl Drop for PodmanEngine {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-f", "-t", "0", "--all"]);
        if let Some(pid) = self.web_pid.get().filter(|p| *p > 1) {
            // SAFETY: kill has no memory effects; a pid already gone is ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(mut child) = self.service.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The service, conmon and the containers' processes left in the namespace.
        lab::kill_namespace_processes(&self.lab.host);
        // The rootless service's delegated cgroup, if it made one (empty now).
        let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{}", self.lab.host));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
