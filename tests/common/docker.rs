//! Real components for the incident tests: Debian's dockerd (20.10) started by hand inside the
//! lab's host network namespace, in a private mount namespace with its own state directory,
//! and firewalld with a private system bus. The harness starts and stops them, bounded in
//! time, and leaves nothing behind (containers removed, processes killed, files deleted).
#![allow(dead_code)]

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tracer::lab::{self, Lab, LabSpec};

/// How long an engine (dockerd, firewalld, Podman's service) may take to answer: seconds on
/// a host, tens of seconds in an emulated guest (`cargo xtask vm --distro`).
pub const ENGINE_START: Duration = Duration::from_secs(120);

pub struct DockerHost {
    pub lab: Lab,
    pub dir: PathBuf,
    pub sock: PathBuf,
    daemon: Option<Child>,
    firewalld: Option<Child>,
}

pub fn write_script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\nset -e\n{body}\n")).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Runs `script` inside network namespace `ns` with a private mount namespace of its own
/// (its mounts never reach the host), output discarded (the scripts log to files).
pub fn spawn_private(ns: &str, script: &Path) -> std::io::Result<Child> {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "unshare",
            "-m",
            "--propagation",
            "private",
        ])
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// A client namespace, a host namespace for an engine (no server of the lab's own), and a
/// state directory for the engine (`/tmp/dt-ENGINE-HOSTNS`).
pub fn engine_lab(label: &str, engine: &str) -> (Lab, PathBuf) {
    super::require_root();
    let mut spec = LabSpec::new(label);
    spec.server = false;
    spec.docker_by_hand = false;
    let lab = Lab::up(spec).unwrap_or_else(|e| panic!("building the lab: {e}"));
    let dir = std::env::temp_dir().join(format!("dt-{engine}-{}", lab.host));
    std::fs::create_dir_all(&dir).expect("state dir");
    (lab, dir)
}

/// Runs an engine's client (no stdin): its stdout, or its stderr when it fails.
pub fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The docker CLI of Debian's docker.io (a newer client elsewhere on PATH works too: the API
/// version is negotiated).
fn docker_bin() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

/// Container engines need cgroup hierarchies in their mount namespace (`ip netns exec`
/// remounts /sys): cgroup v1 controllers on hybrid hosts (with the unified hierarchy beside
/// them, as such hosts have it: a container given /sys/fs/cgroup finds cgroup v2 there),
/// cgroup2 on unified ones. Shell lines for a script run by `spawn_private`.
pub const CGROUP_MOUNTS: &str = "mount -t tmpfs cgroup_root /sys/fs/cgroup
if grep -q ' /sys/fs/cgroup cgroup2 ' /proc/1/mounts; then
  mount -t cgroup2 none /sys/fs/cgroup
else
  for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
    mkdir -p /sys/fs/cgroup/$c; mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c || true
  done
  mkdir -p /sys/fs/cgroup/systemd; mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd || true
  mkdir -p /sys/fs/cgroup/unified; mount -t cgroup2 none /sys/fs/cgroup/unified || true
fi
";

/// The web container's command: busybox-static serving /www over HTTP on 5000.
pub const WEB_ENTRYPOINT: &str = r#"["/bin/busybox", "httpd", "-f", "-p", "5000", "-h", "/www"]"#;

/// The web container's files in `ctx`: /bin/busybox (this machine's busybox-static) and
/// /www/index.html. Returns `ctx`.
pub fn web_root(ctx: &Path) -> PathBuf {
    std::fs::create_dir_all(ctx.join("www")).unwrap();
    std::fs::create_dir_all(ctx.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("bin/busybox")).expect("busybox-static at /bin/busybox");
    std::fs::write(ctx.join("www/index.html"), "droptrace\n").unwrap();
    ctx.to_path_buf()
}

impl DockerHost {
    /// A client namespace and a host namespace with a real dockerd in it.
    pub fn start(label: &str, userland_proxy: bool) -> DockerHost {
        let mut host = Self::new(label);
        host.start_dockerd(userland_proxy);
        host
    }

    /// A client namespace and a host namespace where firewalld runs first, then dockerd,
    /// which finds firewalld on the (private) system bus and integrates with it: its bridge
    /// in firewalld's `docker` zone, its rules restored after each firewalld reload.
    pub fn start_under_firewalld(label: &str) -> DockerHost {
        let mut host = Self::new(label);
        host.start_firewalld();
        host.start_dockerd(false);
        host
    }

    /// The lab and the state directory, no daemon yet.
    fn new(label: &str) -> DockerHost {
        let (lab, dir) = engine_lab(label, "docker");
        let sock = dir.join("docker.sock");
        DockerHost {
            lab,
            dir,
            sock,
            daemon: None,
            firewalld: None,
        }
    }

    fn start_dockerd(&mut self, userland_proxy: bool) {
        let d = self.dir.display();
        // With firewalld already up, dockerd reaches it over the same bus a host's would.
        let bus = match self.firewalld {
            Some(_) => format!("export DBUS_SYSTEM_BUS_ADDRESS={}\n", self.bus()),
            None => String::new(),
        };
        write_script(
            &self.dir.join("start-dockerd"),
            &format!(
                "{CGROUP_MOUNTS}\
                 mkdir -p /run/containerd && mount -t tmpfs tmpfs /run/containerd\n\
                 {bus}\
                 exec dockerd --data-root {d}/root --exec-root {d}/exec --pidfile {d}/dockerd.pid \
                   -H unix://{d}/docker.sock --storage-driver vfs --userland-proxy={userland_proxy} \
                   > {d}/dockerd.log 2>&1"
            ),
        );
        let daemon = spawn_private(&self.lab.host, &self.dir.join("start-dockerd"))
            .expect("start dockerd (apt-get install docker.io)");
        self.daemon = Some(daemon);
        let deadline = Instant::now() + ENGINE_START;
        while self
            .docker(&["version", "--format", "{{.Server.Version}}"])
            .is_err()
        {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
                panic!("dockerd did not come up in {ENGINE_START:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn docker(&self, args: &[&str]) -> Result<String, String> {
        output(
            Command::new(docker_bin())
                .arg("-H")
                .arg(format!("unix://{}", self.sock.display()))
                .args(args)
                .env("DOCKER_BUILDKIT", "0"),
        )
    }

    /// `docker run -d --name web -p 5000:5000` of an image built `FROM scratch` with
    /// busybox-static serving HTTP on 5000.
    pub fn run_web(&self) {
        let ctx = web_root(&self.dir.join("image"));
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM scratch\nCOPY bin /bin\nCOPY www /www\nENTRYPOINT {WEB_ENTRYPOINT}\n"),
        )
        .unwrap();
        self.docker(&["build", "-q", "-t", "dtweb", ctx.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("docker build: {e}"));
        self.docker(&["run", "-d", "--name", "web", "-p", "5000:5000", "dtweb"])
            .unwrap_or_else(|e| panic!("docker run: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.lab.client_request(Duration::from_secs(1));
            if seen == lab::Outcome::Http(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the published port never answered: {seen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn bus(&self) -> String {
        format!("unix:path={}", self.dir.join("fw/bus").display())
    }

    /// Starts firewalld (nftables backend) in the host namespace with a private system bus,
    /// and waits until it reports `running`. Its start-up rewrites the ruleset.
    pub fn start_firewalld(&mut self) {
        let fw = self.dir.join("fw");
        std::fs::create_dir_all(fw.join("etc")).unwrap();
        let f = fw.display();
        std::fs::write(
            fw.join("bus.conf"),
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
                 \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig>\
                 <type>system</type><listen>unix:path={f}/bus</listen><auth>EXTERNAL</auth>\
                 <policy context=\"default\"><allow user=\"*\"/><allow own=\"*\"/>\
                 <allow send_type=\"method_call\"/><allow send_type=\"signal\"/>\
                 <allow send_type=\"method_return\"/><allow send_type=\"error\"/>\
                 <allow receive_type=\"method_call\"/><allow receive_type=\"signal\"/>\
                 <allow receive_type=\"method_return\"/><allow receive_type=\"error\"/>\
                 </policy></busconfig>\n"
            ),
        )
        .unwrap();
        // firewalld keeps state in /run/firewalld and /etc/firewalld: private copies.
        write_script(
            &fw.join("start-firewalld"),
            &format!(
                "mkdir -p /run/firewalld && mount -t tmpfs tmpfs /run/firewalld\n\
                 cp -a /etc/firewalld/. {f}/etc/ && mount --bind {f}/etc /etc/firewalld\n\
                 [ -S {f}/bus ] || dbus-daemon --config-file={f}/bus.conf --nofork --nopidfile > {f}/dbus.log 2>&1 &\n\
                 for i in $(seq 1 50); do [ -S {f}/bus ] && break; sleep 0.1; done\n\
                 export DBUS_SYSTEM_BUS_ADDRESS=unix:path={f}/bus\n\
                 exec firewalld --nofork --nopid --log-file {f}/firewalld.log > {f}/firewalld.out 2>&1"
            ),
        );
        let child = spawn_private(&self.lab.host, &fw.join("start-firewalld"))
            .expect("start firewalld (apt-get install firewalld dbus)");
        self.firewalld = Some(child);
        let deadline = Instant::now() + ENGINE_START;
        while self
            .firewall_cmd(&["--state"])
            .map(|s| s.trim() != "running")
            .unwrap_or(true)
        {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(fw.join("firewalld.log")).unwrap_or_default();
                panic!("firewalld did not come up in {ENGINE_START:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `systemctl restart firewalld`: firewalld is stopped (SIGTERM: it cleans up as it
    /// exits) and started again on the same bus.
    pub fn restart_firewalld(&mut self) {
        if let Some(mut child) = self.firewalld.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + ENGINE_START;
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.start_firewalld();
    }

    /// firewalld's version (`firewall-cmd --version`), e.g. (2, 3).
    pub fn firewalld_version(&self) -> (u32, u32) {
        let v = self.firewall_cmd(&["--version"]).unwrap_or_default();
        let mut parts = v.trim().split('.').map(|n| n.parse().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }

    pub fn firewall_cmd(&self, args: &[&str]) -> Result<String, String> {
        output(
            Command::new("ip")
                .args(["netns", "exec", &self.lab.host, "firewall-cmd"])
                .args(args)
                .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus()),
        )
    }
}

impl Drop for DockerHost {
    fn drop(&mut self) {
        // Containers first (their processes live in namespaces of their own), bounded.
        let ids = self.docker(&["ps", "-aq"]).unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        for child in [self.firewalld.take(), self.daemon.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        // dockerd, containerd, shims, firewalld, dbus-daemon: everything in the namespace.
        lab::kill_namespace_processes(&self.lab.host);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
