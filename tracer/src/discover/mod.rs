//! Which ports are published, and to which container: from the container engine's API over
//! its unix socket (Docker, or Podman's compatible socket), else from the DNAT rules found in
//! the namespace's ruleset, else from `--port`.
pub mod netns;

use std::{
    net::IpAddr,
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::{Path, PathBuf},
};

use bollard::{API_DEFAULT_VERSION, Docker, models::ContainerSummary};
use serde::Serialize;

use crate::{error::Error, observe::state::Snapshot};

pub const DEFAULT_DOCKER_HOST: &str = "/var/run/docker.sock";
/// How long each engine request may take. Podman's compatible API has taken over 5 s to list
/// containers under load (measured in an emulated guest); a hung engine still cannot hold
/// droptrace longer than this per request.
const ENGINE_TIMEOUT_SECS: u64 = 20;

/// Podman's Docker-compatible socket (rootful).
pub const PODMAN_SOCKET: &str = "/run/podman/podman.sock";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PublishedPort {
    /// Host address the port is bound to (None = every address).
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub proto: String,
    pub container: Option<String>,
    pub container_id: Option<String>,
    pub container_ip: Option<IpAddr>,
    pub container_port: Option<u16>,
    pub network: Option<String>,
    /// `docker`, `podman` (engine API) or `nat-rule` (found in the ruleset).
    pub source: &'static str,
    /// The engine that publishes it (`docker`, `podman`), from its API or from whose rules
    /// translate it (netavark's are Podman's); None when unknown. The fixes follow it.
    pub engine: Option<&'static str>,
}

#[cfg(test)]
impl PublishedPort {
    /// `docker run --name web -p 5000:5000` on the default bridge, as the unit tests use it.
    pub fn docker_web() -> Self {
        PublishedPort {
            host_ip: None,
            host_port: 5000,
            proto: "tcp".into(),
            container: Some("web".into()),
            container_id: Some("72062f9b709a".into()),
            container_ip: Some("172.17.0.2".parse().unwrap()),
            container_port: Some(5000),
            network: Some("bridge".into()),
            source: "docker",
            engine: Some("docker"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Engine {
    pub socket: PathBuf,
    pub name: String,
    pub version: Option<String>,
    /// The engine's pid (from the socket's peer credentials) and its network namespace.
    pub pid: Option<u32>,
    pub netns_path: Option<PathBuf>,
    /// The uid it runs as (the socket's peer credentials).
    pub uid: Option<u32>,
    /// It runs as a user other than root (rootless Podman or Docker): its ports are
    /// forwarded by a userspace process, with no DNAT.
    pub rootless: bool,
}

/// The pid and uid at the other end of a unix socket (SO_PEERCRED).
fn socket_peer(path: &Path) -> Option<(u32, u32)> {
    let stream = UnixStream::connect(path).ok()?;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a valid ucred.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some((cred.pid as u32, cred.uid))
}

/// The process holding the engine's listening socket, and its uid. SO_PEERCRED names the
/// process that called listen(), which may have handed the socket on and exited: seen with
/// Podman 5.4's service, whose peer pid was later another process, in another network
/// namespace. So the peer is checked in /proc, and the holder searched for when it is not it.
fn engine_process(socket: &Path) -> Option<(u32, u32)> {
    let peer = socket_peer(socket);
    if let Some((pid, uid)) = peer
        && holds_listener(pid, socket)
    {
        return Some((pid, uid));
    }
    let pids = std::fs::read_dir("/proc").ok()?;
    pids.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| holds_listener(*pid, socket))
        .and_then(|pid| Some((pid, process_uid(pid)?)))
        .or(peer)
}

/// The engine's own network namespace: the one most of its threads are in. A Go engine
/// (Podman 5.4's service) enters a container's namespace on one locked thread to set its
/// network up, and that thread can be the main one, whose namespace `/proc/PID/ns/net`
/// shows: measured in the trixie guest, where watch then followed the container's
/// namespace. A thread of the majority names it instead.
fn home_netns(pid: u32) -> PathBuf {
    let main = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let inode = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
    };
    let threads: Vec<(PathBuf, u64)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| {
            let path = t.path().join("ns/net");
            inode(&path).map(|i| (path, i))
        })
        .collect();
    let count = |i: u64| threads.iter().filter(|(_, j)| *j == i).count();
    let Some(majority) = threads.iter().map(|(_, i)| *i).max_by_key(|i| count(*i)) else {
        return main;
    };
    if inode(&main) == Some(majority) {
        return main;
    }
    threads
        .into_iter()
        .find(|(_, i)| *i == majority)
        .map_or(main, |(path, _)| path)
}

/// Whether `pid` has the listening unix socket bound at `socket` among its descriptors.
fn holds_listener(pid: u32, socket: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/unix")) else {
        return false;
    };
    let Some(inode) = listening_inode(&table, socket) else {
        return false;
    };
    socket_inodes(pid).contains(&inode)
}

/// The inodes of the sockets among a process's descriptors (`/proc/PID/fd` → `socket:[N]`).
pub fn socket_inodes(pid: impl std::fmt::Display) -> std::collections::BTreeSet<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Default::default();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// The inode of the listening socket bound at `socket` in a /proc/net/unix table
/// (`Num RefCount Protocol Flags Type St Inode Path`; flag 00010000 is a listener).
fn listening_inode(table: &str, socket: &Path) -> Option<u64> {
    let canonical = std::fs::canonicalize(socket).ok();
    let same = |p: &str| {
        Path::new(p) == socket || canonical.is_some() && std::fs::canonicalize(p).ok() == canonical
    };
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (flags, inode, path) = (f.get(3)?, f.get(6)?, f.get(7)?);
        (*flags == "00010000" && same(path)).then(|| inode.parse().ok())?
    })
}

/// The real uid of a process, from /proc/PID/status.
fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

/// Published ports from the engine's container list (pure, for tests over real API JSON).
pub fn published_from_summaries(
    list: &[ContainerSummary],
    source: &'static str,
) -> Vec<PublishedPort> {
    let mut out: Vec<PublishedPort> = Vec::new();
    for c in list {
        let name = c
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_string());
        let (network, container_ip) = c
            .network_settings
            .as_ref()
            .and_then(|ns| ns.networks.as_ref())
            .and_then(|nets| {
                let mut nets: Vec<_> = nets.iter().collect();
                nets.sort_by(|a, b| a.0.cmp(b.0));
                nets.into_iter().find_map(|(net, ep)| {
                    let ip = ep
                        .ip_address
                        .as_deref()
                        .filter(|s| !s.is_empty())?
                        .parse()
                        .ok()?;
                    Some((Some(net.clone()), Some(ip)))
                })
            })
            .unwrap_or((None, None));
        for p in c.ports.iter().flatten() {
            let Some(public) = p.public_port else {
                continue;
            };
            let proto = p
                .typ
                .map(|t| t.to_string())
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "tcp".into());
            let host_ip: Option<IpAddr> =
                p.ip.as_deref()
                    .and_then(|ip| ip.parse().ok())
                    .filter(|ip: &IpAddr| !ip.is_unspecified());
            // Docker lists a port once per address family (0.0.0.0 and ::): one is enough.
            if out.iter().any(|o| {
                o.host_port == public
                    && o.proto == proto
                    && o.container_id.as_deref() == c.id.as_deref().map(short_id).as_deref()
            }) {
                continue;
            }
            out.push(PublishedPort {
                host_ip,
                host_port: public,
                proto,
                container: name.clone(),
                container_id: c.id.as_deref().map(short_id),
                container_ip,
                container_port: Some(p.private_port),
                network: network.clone(),
                source,
                engine: Some(source),
            });
        }
    }
    out.sort_by_key(|p| (p.host_port, p.proto.clone()));
    out
}

/// Published ports from the engine's `/containers/json` body (for fuzzing and fixtures).
pub fn published_from_json(json: &str) -> Result<Vec<PublishedPort>, String> {
    let list: Vec<ContainerSummary> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(published_from_summaries(&list, "docker"))
}

/// The unix socket a `--docker-host` value or a `DOCKER_HOST`-style URL names: a path, or a
/// `unix://` URL. Other schemes (a remote engine over tcp or ssh) cannot be watched from here.
pub fn unix_socket(spec: &str) -> Result<PathBuf, Error> {
    let refuse = |why: &str| Error::NoEngine {
        socket: spec.to_string(),
        why: why.to_string(),
    };
    match spec.split_once("://") {
        None if !spec.is_empty() => Ok(PathBuf::from(spec)),
        None => Err(refuse("empty socket path")),
        Some(("unix", path)) if path.starts_with('/') => Ok(PathBuf::from(path)),
        Some(("unix", _)) => Err(refuse(
            "a unix:// URL needs an absolute path: unix:///run/podman/podman.sock",
        )),
        Some((scheme, _)) => Err(refuse(&format!(
            "droptrace talks to the engine over its unix socket, not {scheme}://; run droptrace on the engine's host and give its socket (unix:///var/run/docker.sock)"
        ))),
    }
}

/// Where to look for the engine, in order, and whether the user named it (then failing to
/// reach it is an error): `--docker-host`; else `$DOCKER_HOST` or `$CONTAINER_HOST` when they
/// name a unix socket; else Docker's socket, then Podman's rootful one.
pub fn engine_sockets(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Vec<PathBuf>, bool), Error> {
    if let Some(spec) = flag {
        return Ok((vec![unix_socket(spec)?], true));
    }
    let mut out: Vec<PathBuf> = ["DOCKER_HOST", "CONTAINER_HOST"]
        .into_iter()
        .filter_map(&env)
        .filter_map(|spec| unix_socket(&spec).ok())
        .collect();
    out.extend([DEFAULT_DOCKER_HOST, PODMAN_SOCKET].map(PathBuf::from));
    out.extend(rootless_sockets(Path::new("/run/user")));
    out.dedup();
    Ok((out, false))
}

/// Rootless engines' sockets under `run_user` (/run/user/UID/podman/podman.sock,
/// /run/user/UID/docker.sock), in uid order: asked after the rootful ones, so that a host
/// running only rootless containers is not mistaken for one without an engine.
fn rootless_sockets(run_user: &Path) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(run_user) else {
        return Vec::new();
    };
    let mut uids: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
    uids.sort();
    uids.iter()
        .flat_map(|d| [d.join("podman/podman.sock"), d.join("docker.sock")])
        .filter(|s| s.exists())
        .collect()
}

/// The first engine that answers among `engine_sockets`, with its published ports. None
/// (and why) when no engine answers and none was named; an error when the named one does not.
pub async fn find_engine(
    flag: Option<&str>,
    required: bool,
) -> Result<Result<(Engine, Vec<PublishedPort>), Error>, Error> {
    let (sockets, named) = engine_sockets(flag, |v| std::env::var(v).ok())?;
    let mut first_err = None;
    for socket in &sockets {
        if !named && !socket.exists() {
            continue;
        }
        match from_engine(socket).await {
            Ok(found) => return Ok(Ok(found)),
            Err(e) if named || required => return Err(e),
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    let none = || Error::NoEngine {
        socket: sockets
            .iter()
            .map(|s| s.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        why: "no such socket".into(),
    };
    match first_err {
        Some(e) => Ok(Err(e)),
        None if required => Err(none()),
        None => Ok(Err(none())),
    }
}

/// Asks the engine at `socket`. Errors say what to do without an engine.
pub async fn from_engine(socket: &Path) -> Result<(Engine, Vec<PublishedPort>), Error> {
    let no_engine = |why: String| Error::NoEngine {
        socket: socket.display().to_string(),
        why,
    };
    if !socket.exists() {
        return Err(no_engine("no such socket".into()));
    }
    let path = socket
        .to_str()
        .ok_or_else(|| no_engine("path is not UTF-8".into()))?;
    let docker = Docker::connect_with_unix(path, ENGINE_TIMEOUT_SECS, API_DEFAULT_VERSION)
        .map_err(|e| no_engine(e.to_string()))?
        .negotiate_version()
        .await
        .map_err(|e| no_engine(e.to_string()))?;
    let version = docker
        .version()
        .await
        .map_err(|e| no_engine(e.to_string()))?;
    let is_podman = version
        .components
        .as_ref()
        .is_some_and(|c| c.iter().any(|c| c.name.to_lowercase().contains("podman")));
    let source = if is_podman { "podman" } else { "docker" };
    let list = docker
        .list_containers(None)
        .await
        .map_err(|e| no_engine(e.to_string()))?;
    let peer = engine_process(socket);
    let pid = peer.map(|(pid, _)| pid);
    let engine = Engine {
        socket: socket.to_path_buf(),
        name: source.to_string(),
        version: version.version,
        pid,
        netns_path: pid.map(home_netns),
        uid: peer.map(|(_, uid)| uid),
        rootless: peer.is_some_and(|(_, uid)| uid != 0),
    };
    Ok((engine, published_from_summaries(&list, source)))
}

/// The namespace to look in: the one the user named, else the engine's own (where its ports
/// are published), else droptrace's.
pub fn watched_netns(
    spec: Option<&str>,
    engine: Option<&Engine>,
) -> Result<crate::discover::netns::Netns, Error> {
    use crate::discover::netns::Netns;
    match (spec, engine.and_then(|e| e.netns_path.as_ref())) {
        (Some(spec), _) => Netns::resolve(spec),
        (None, Some(path)) => Netns::resolve(&path.display().to_string()),
        (None, None) => Netns::current(),
    }
}

/// Ports translated by DNAT rules in the namespace: the fallback without an engine.
pub fn from_rules(snap: &Snapshot) -> Vec<PublishedPort> {
    let mut out: Vec<PublishedPort> = Vec::new();
    for rs in &snap.iptables {
        let Some(nat) = rs.table("nat") else { continue };
        for chain in &nat.chains {
            for rule in &chain.rules {
                let (Some((lo, hi)), Some("DNAT")) = (rule.dport, rule.target.as_deref()) else {
                    continue;
                };
                if lo != hi || rule.dport_negated {
                    continue;
                }
                let to = rule.dnat_target();
                // One entry per port and family (Docker with IPv6 publishes both).
                let v6 = |ip: Option<IpAddr>| ip.is_some_and(|ip| ip.is_ipv6());
                let is_v6 = v6(to.map(|(a, _)| a));
                if out
                    .iter()
                    .any(|o| o.host_port == lo && v6(o.container_ip) == is_v6)
                {
                    continue;
                }
                out.push(PublishedPort {
                    host_ip: rule.dst.as_deref().and_then(|d| {
                        d.trim_end_matches("/32")
                            .trim_end_matches("/128")
                            .parse()
                            .ok()
                    }),
                    host_port: lo,
                    proto: rule.proto.clone().unwrap_or_else(|| "tcp".into()),
                    container: None,
                    container_id: netavark_container(nat, &chain.name),
                    container_ip: to.map(|(a, _)| a),
                    container_port: to.and_then(|(_, p)| p).or(Some(lo)),
                    network: None,
                    source: "nat-rule",
                    engine: engine_of_chain(&chain.name),
                });
            }
        }
    }
    for rule in snap.nft.native_rules() {
        out.extend(published_by_nft(rule).filter(|p| {
            !out.iter()
                .any(|o| o.host_port == p.host_port && o.proto == p.proto)
        }));
    }
    out.sort_by_key(|p| p.host_port);
    out
}

/// A port a native nftables DNAT rule publishes (Docker 29's `docker-bridges`, netavark's
/// `inet netavark`): one destination port translated to an address. netavark's DNS
/// redirection (the gateway's port 53 to itself) publishes nothing.
fn published_by_nft(rule: &crate::observe::state::nft::Rule) -> Option<PublishedPort> {
    if rule.verdict.as_deref() != Some("dnat") || rule.dport_negated {
        return None;
    }
    let [(port, hi)] = rule.dports.as_slice() else {
        return None;
    };
    let (to_addr, to_port) = rule.dnat_to.as_ref()?;
    if port != hi || rule.daddr.as_deref() == Some(to_addr.as_str()) {
        return None;
    }
    Some(PublishedPort {
        host_ip: rule.daddr.as_deref().and_then(|d| d.parse().ok()),
        host_port: *port,
        proto: rule.proto.clone().unwrap_or_else(|| "tcp".into()),
        container: None,
        container_id: None,
        container_ip: to_addr.parse().ok(),
        container_port: to_port.or(Some(*port)),
        network: None,
        source: "nat-rule",
        engine: match rule.table.as_str() {
            "netavark" => Some("podman"),
            t if t.starts_with("docker") => Some("docker"),
            _ => None,
        },
    })
}

/// Whose nat chain this is: Docker's `DOCKER`, netavark's `NETAVARK-*` (Podman's).
fn engine_of_chain(chain: &str) -> Option<&'static str> {
    match chain {
        "DOCKER" => Some("docker"),
        c if c.starts_with("NETAVARK") => Some("podman"),
        _ => None,
    }
}

/// The container a netavark DNAT chain serves: netavark jumps to it from
/// NETAVARK-HOSTPORT-DNAT with `--comment "dnat name: NETWORK id: CONTAINER_ID"`.
fn netavark_container(nat: &crate::observe::state::iptables::Table, chain: &str) -> Option<String> {
    let hostport = nat
        .chains
        .iter()
        .find(|c| c.name == "NETAVARK-HOSTPORT-DNAT")?;
    hostport
        .rules
        .iter()
        .filter(|r| r.target.as_deref() == Some(chain))
        .find_map(|r| {
            let id = r.spec.split(" id: ").nth(1)?;
            Some(short_id(id.trim_matches(|c: char| !c.is_ascii_hexdigit())))
        })
}

/// `--container NAME|ID`: the ports of that container, or an error listing the known ones.
pub fn select_container(
    ports: Vec<PublishedPort>,
    wanted: &str,
) -> Result<Vec<PublishedPort>, Error> {
    let wanted = wanted.trim_start_matches('/');
    let chosen: Vec<PublishedPort> = ports
        .iter()
        .filter(|p| {
            p.container.as_deref() == Some(wanted)
                || p.container_id.as_deref().is_some_and(|id| {
                    !wanted.is_empty() && (id.starts_with(wanted) || wanted.starts_with(id))
                })
        })
        .cloned()
        .collect();
    if chosen.is_empty() {
        let mut known: Vec<String> = ports.iter().filter_map(|p| p.container.clone()).collect();
        known.sort();
        known.dedup();
        return Err(Error::UnknownContainer {
            wanted: wanted.to_string(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        });
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    // `curl --unix-socket $SOCK http://localhost/v1.41/containers/json` against Debian's
    // dockerd 20.10.24 after `docker run -d --name web -p 5000:5000 dtweb` (see tests/docker.rs).
    const CONTAINERS_JSON: &str = include_str!("testdata/docker-20.10-containers.json");

    #[test]
    fn real_engine_json_gives_the_published_port_and_its_container() {
        let list: Vec<ContainerSummary> = serde_json::from_str(CONTAINERS_JSON).expect("API JSON");
        let ports = published_from_summaries(&list, "docker");
        assert_eq!(ports.len(), 1, "{ports:#?}");
        let p = &ports[0];
        assert_eq!((p.host_port, p.proto.as_str()), (5000, "tcp"));
        assert_eq!(p.container.as_deref(), Some("web"));
        assert_eq!(p.container_ip, Some("172.17.0.2".parse().unwrap()));
        assert_eq!(p.container_port, Some(5000));
        assert_eq!(p.network.as_deref(), Some("bridge"));
        assert_eq!(p.container_id.as_deref().map(str::len), Some(12));
    }

    /// A real engine's answers for `run -d --name web -p 5000:5000`, saved by the engine
    /// tests in each suite's guest (testdata/engines/README.md): its container list, and the
    /// rules it wrote as `iptables-save` text and `nft -j list ruleset`.
    struct EngineFixture {
        name: &'static str,
        engine: &'static str,
        api: &'static str,
        iptables_save: &'static str,
        nft_json: &'static str,
    }

    macro_rules! engine_fixture {
        ($engine:literal, $prefix:literal) => {
            EngineFixture {
                name: $prefix,
                engine: $engine,
                api: include_str!(concat!("testdata/engines/", $prefix, "-containers.json")),
                iptables_save: include_str!(concat!(
                    "testdata/engines/",
                    $prefix,
                    "-iptables-save.txt"
                )),
                nft_json: include_str!(concat!(
                    "testdata/engines/",
                    $prefix,
                    "-nft-list-ruleset.json"
                )),
            }
        };
    }

    const ENGINE_FIXTURES: &[EngineFixture] = &[
        engine_fixture!("docker", "docker-20.10.5"),
        engine_fixture!("docker", "docker-20.10.24"),
        engine_fixture!("docker", "docker-26.1.5"),
        engine_fixture!("podman", "podman-4.3.1-iptables"),
        engine_fixture!("podman", "podman-5.4.2-iptables"),
        engine_fixture!("podman", "podman-5.4.2-nftables"),
    ];

    /// The API and the rules agree on the published port, whichever engine wrote them; the
    /// rules alone name the engine (and netavark's comment the container).
    #[test]
    fn real_engines_publish_the_same_port_in_their_api_and_their_rules() {
        use crate::observe::state::{iptables, nft};
        for f in ENGINE_FIXTURES {
            let list: Vec<ContainerSummary> =
                serde_json::from_str(f.api).unwrap_or_else(|e| panic!("{}: {e}", f.name));
            let api = published_from_summaries(&list, f.engine);
            assert_eq!(api.len(), 1, "{}: {api:#?}", f.name);
            let web = &api[0];
            assert_eq!(web.host_port, 5000, "{}", f.name);
            assert_eq!(web.container.as_deref(), Some("web"), "{}", f.name);
            let snap = Snapshot {
                iptables: vec![iptables::parse("iptables-nft", f.iptables_save)],
                nft: nft::parse(f.nft_json).unwrap_or_else(|e| panic!("{}: {e}", f.name)),
                ..Snapshot::default()
            };
            let rules = from_rules(&snap);
            assert_eq!(rules.len(), 1, "{}: {rules:#?}", f.name);
            let found = &rules[0];
            assert_eq!(found.host_port, 5000, "{}", f.name);
            assert_eq!(found.container_ip, web.container_ip, "{}", f.name);
            assert_eq!(found.container_port, Some(5000), "{}", f.name);
            assert_eq!(found.engine, Some(f.engine), "{}", f.name);
            if snap.iptables[0]
                .table("nat")
                .is_some_and(|t| t.chains.iter().any(|c| c.name == "NETAVARK-HOSTPORT-DNAT"))
            {
                assert_eq!(found.container_id, web.container_id, "{}", f.name);
            }
        }
    }

    /// `ip netns exec $N cat /proc/net/unix` with Debian 12's `podman system service --time=0
    /// unix:///tmp/cap/podman.sock` running in namespace $N (its fd 7 is socket:[3048976]).
    #[test]
    fn the_engines_listener_is_found_in_proc_net_unix() {
        let table = include_str!("testdata/proc-net-unix-podman-service.txt");
        let sock = Path::new("/tmp/cap/podman.sock");
        assert_eq!(listening_inode(table, sock), Some(3048976));
        // Its unnamed datagram socket and other paths are not it.
        assert_eq!(
            listening_inode(table, Path::new("/tmp/cap/other.sock")),
            None
        );
        assert_eq!(listening_inode("", sock), None);
    }

    #[test]
    fn containers_are_selected_by_name_or_id_prefix() {
        let list: Vec<ContainerSummary> = serde_json::from_str(CONTAINERS_JSON).unwrap();
        let ports = published_from_summaries(&list, "docker");
        let id = ports[0].container_id.clone().unwrap();
        assert_eq!(select_container(ports.clone(), "web").unwrap().len(), 1);
        assert_eq!(select_container(ports.clone(), &id[..6]).unwrap().len(), 1);
        let err = select_container(ports, "nope").unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("web"), "{err}");
    }

    #[test]
    fn dnat_rules_are_the_fallback() {
        let snap = Snapshot {
            iptables: vec![crate::observe::state::iptables::parse(
                "iptables-nft",
                include_str!("../observe/state/testdata/iptables-nft-save-docker-user-drop.txt"),
            )],
            ..Snapshot::default()
        };
        let ports = from_rules(&snap);
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].host_port, 5000);
        assert_eq!(ports[0].container_ip, Some("172.17.0.2".parse().unwrap()));
        assert_eq!(ports[0].source, "nat-rule");
    }

    #[test]
    fn a_port_published_over_both_families_is_listed_once_per_family() {
        use crate::observe::state::iptables::parse;
        let snap = Snapshot {
            iptables: vec![
                parse(
                    "iptables-nft",
                    include_str!(
                        "../observe/state/testdata/iptables-nft-save-docker-user-drop.txt"
                    ),
                ),
                parse(
                    "ip6tables-nft",
                    include_str!("../observe/state/testdata/ip6tables-nft-save-docker-ipv6.txt"),
                ),
            ],
            ..Snapshot::default()
        };
        let ips: Vec<_> = from_rules(&snap)
            .into_iter()
            .map(|p| (p.host_port, p.container_ip.map(|ip| ip.to_string())))
            .collect();
        assert_eq!(
            ips,
            [
                (5000, Some("172.17.0.2".into())),
                (5000, Some("fd00:17::2".into()))
            ]
        );
    }

    #[test]
    fn docker_host_takes_a_path_or_a_unix_url_and_refuses_remote_engines() {
        assert_eq!(
            unix_socket("unix:///run/podman/podman.sock").unwrap(),
            PathBuf::from("/run/podman/podman.sock")
        );
        assert_eq!(
            unix_socket("/var/run/docker.sock").unwrap(),
            PathBuf::from("/var/run/docker.sock")
        );
        for bad in [
            "tcp://10.0.0.1:2375",
            "ssh://host",
            "unix://relative.sock",
            "",
        ] {
            let e = unix_socket(bad).unwrap_err().to_string();
            assert!(e.contains(bad) || bad.is_empty(), "{e}");
        }
        assert!(
            unix_socket("tcp://h:2375")
                .unwrap_err()
                .to_string()
                .contains("unix socket")
        );
    }

    #[test]
    fn the_engine_is_looked_for_where_the_environment_then_the_defaults_say() {
        let env = |var: &str| match var {
            "DOCKER_HOST" => Some("tcp://remote:2375".to_string()),
            "CONTAINER_HOST" => Some("unix:///run/user/0/podman/podman.sock".to_string()),
            _ => None,
        };
        let (sockets, named) = engine_sockets(None, env).unwrap();
        assert!(!named);
        assert_eq!(
            sockets,
            [
                "/run/user/0/podman/podman.sock",
                DEFAULT_DOCKER_HOST,
                PODMAN_SOCKET
            ]
            .map(PathBuf::from)
        );
        let (sockets, named) = engine_sockets(Some("unix:///x.sock"), env).unwrap();
        assert!(named);
        assert_eq!(sockets, vec![PathBuf::from("/x.sock")]);
        assert!(engine_sockets(Some("tcp://h:1"), env).is_err());
    }
}
