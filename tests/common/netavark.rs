//! A real netavark (Podman's network backend, Debian's /usr/lib/podman/netavark) run by hand
//! in the lab's host namespace: it builds its bridge (podman0, 10.88.0.0/16), the container's
//! interface (10.88.0.2) and its own firewall rules for a published port, exactly as Podman
//! asks it to (`netavark setup` with Podman's JSON). The lab's namespaces take everything
//! with them when they go; the configuration directory is removed too.
#![allow(dead_code)]

use std::{net::Ipv4Addr, path::PathBuf, process::Command};

use tracer::lab::{Lab, LabSpec};

pub const NETAVARK: &str = "/usr/lib/podman/netavark";
pub const CTR: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);

pub struct PodmanHost {
    pub lab: Lab,
    config: PathBuf,
}

/// Podman's request for one container on its default network, publishing
/// `host_port` to the container's `ctr_port` (`podman run -p host_port:ctr_port`).
fn request(host_port: u16, ctr_port: u16) -> String {
    format!(
        r#"{{
  "container_id": "f031bf33eecba75d0d84952337b1ceef6a239eb8e94b48aee0993d0791345325",
  "container_name": "registry",
  "port_mappings": [{{"host_ip": "", "container_port": {ctr_port}, "host_port": {host_port}, "range": 1, "protocol": "tcp"}}],
  "networks": {{"podman": {{"static_ips": ["{CTR}"], "interface_name": "eth0"}}}},
  "network_info": {{"podman": {{"name": "podman", "id": "2f259bab93aaaaa2542ba43ef33eb990d0999ee1b9924b557b7be53c0b7a1bb9", "driver": "bridge", "network_interface": "podman0", "subnets": [{{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}}], "ipv6_enabled": false, "internal": false, "dns_enabled": false, "ipam_options": {{"driver": "host-local"}}}}}}
}}"#
    )
}

impl PodmanHost {
    /// A client, a host running netavark's iptables driver, and a container serving HTTP on
    /// `ctr_port`, published on the host's `host_port`.
    pub fn up(label: &str, host_port: u16, ctr_port: u16) -> PodmanHost {
        super::require_root();
        assert!(
            std::path::Path::new(NETAVARK).exists(),
            "netavark is not installed: scripts/test.sh installs it (apt-get install netavark)"
        );
        let mut spec = LabSpec::new(label);
        spec.docker_by_hand = false;
        spec.server = false;
        spec.port = ctr_port;
        let mut lab = Lab::up(spec).unwrap_or_else(|e| panic!("building the lab: {e}"));
        let config = std::env::temp_dir().join(format!("{}-netavark", lab.host));
        let ctr_path = format!("/run/netns/{}", lab.ctr);
        let out = Command::new("timeout")
            .args(["30", "ip", "netns", "exec", &lab.host, NETAVARK, "--config"])
            .arg(&config)
            .args(["setup", &ctr_path])
            // No firewalld reaches this namespace: the iptables driver, as on a host without it.
            .env("DBUS_SYSTEM_BUS_ADDRESS", "")
            .env("NETAVARK_FW", "iptables")
            .stdin(
                std::fs::File::open({
                    let path = config.with_extension("json");
                    std::fs::write(&path, request(host_port, ctr_port)).expect("write request");
                    path
                })
                .expect("open request"),
            )
            .output()
            .expect("run netavark");
        assert!(
            out.status.success(),
            "netavark setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab.start_server_at(CTR)
            .unwrap_or_else(|e| panic!("starting the container's server: {e}"));
        PodmanHost { lab, config }
    }
}

impl Drop for PodmanHost {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.config);
        let _ = std::fs::remove_file(self.config.with_extension("json"));
    }
}
