//! Address, route and link changes in a namespace, from rtnetlink's notifications, with who
//! asked for each. A notification carries the netlink port of the socket whose request made
//! the change, or 0 when the kernel made it itself (a router advertisement's route expired, a
//! connected route went with its address). While the requester lives, /proc names the process
//! that holds that socket (systemd-networkd, NetworkManager). After it has exited (`ip addr
//! flush`), the port is still its process id: netlink's autobind gives a socket its process's
//! id, and libnl adds a counter above bit 22. The exec record completes it.
//!
//! Kept: what can take a container's traffic away. That is an address added to or removed from
//! a bridge, a default route, a route via a bridge, a blackhole/unreachable/prohibit route, and a
//! bridge or veth that is deleted, set down, or taken off its bridge. A connected route
//! the kernel removes along with its address is not kept: the address's own line explains it.
use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver},
    },
    time::{Duration, Instant},
};

use crate::discover::netns::{Netns, is_bridge};

/// One kept change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkChange {
    /// `removed address 172.17.0.1/16 from docker0`.
    pub what: String,
    /// The interface it is about.
    pub iface: String,
    /// `address`, `route` or `link`.
    pub object: &'static str,
    /// `added`, `removed`, `down`, `detached`.
    pub action: &'static str,
    /// The address or route as `ip` prints it (`172.17.0.1/16`, `default via fe80::1 dev
    /// eth-ext proto ra`).
    pub value: Option<String>,
    /// The requesting socket's netlink port: 0 when the kernel made the change itself.
    pub port: u32,
    /// The process holding that socket when the notification was read (pid, comm).
    pub holder: Option<(u32, String)>,
    pub time: chrono::DateTime<chrono::Utc>,
}

impl LinkChange {
    /// The requester's process id: the socket's holder, else the id autobind gave the port
    /// (negative ports are autobind's fallback and name no process).
    pub fn pid(&self) -> Option<u32> {
        if let Some((pid, _)) = &self.holder {
            return Some(*pid);
        }
        let pid = self.port & 0x3f_ffff;
        (self.port != 0 && (self.port as i32) > 0 && pid > 0).then_some(pid)
    }
}

// uapi linux/rtnetlink.h, linux/if_addr.h, linux/if_link.h.
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u32 = 254;
const RTPROT_KERNEL: u8 = 2;
const IFF_UP: u32 = 0x1;

/// What is known of a link, to tell a change from a repeat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Link {
    name: String,
    kind: String,
    up: bool,
    master: u32,
}

impl Link {
    fn watched(&self) -> bool {
        is_bridge(&self.name) || self.kind == "bridge" || self.kind == "veth"
    }
}

/// The netlink attributes of a message body after its fixed header.
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((kind, &b[4..len]));
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

fn attr<'a>(list: &[(u16, &'a [u8])], kind: u16) -> Option<&'a [u8]> {
    list.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

fn u32_of(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

fn cstr(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

fn addr_of(family: u8, v: &[u8]) -> Option<IpAddr> {
    match (family as i32, v.len()) {
        (libc::AF_INET, 4) => Some(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
        (libc::AF_INET6, 16) => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?))),
        _ => None,
    }
}

fn protocol_name(p: u8) -> String {
    match p {
        2 => "kernel".into(),
        3 => "boot".into(),
        4 => "static".into(),
        9 => "ra".into(),
        16 => "dhcp".into(),
        _ => p.to_string(),
    }
}

/// A message of one notification, with the interfaces known so far.
#[derive(Default)]
pub struct Decoder {
    links: HashMap<u32, Link>,
}

/// Who sent a message and what it was.
struct Message<'a> {
    kind: u16,
    port: u32,
    body: &'a [u8],
}

fn messages(mut b: &[u8]) -> Vec<Message<'_>> {
    let mut out = Vec::new();
    while b.len() >= 16 {
        let len = u32::from_ne_bytes(b[0..4].try_into().unwrap_or_default()) as usize;
        if len < 16 || len > b.len() {
            break;
        }
        out.push(Message {
            kind: u16::from_ne_bytes([b[4], b[5]]),
            port: u32::from_ne_bytes(b[12..16].try_into().unwrap_or_default()),
            body: &b[16..len],
        });
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

/// A change, before its author and time are known.
type Found = (String, String, &'static str, &'static str, Option<String>);

impl Decoder {
    fn name(&self, index: u32) -> String {
        self.links
            .get(&index)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("if{index}"))
    }

    /// A link message: the state kept, and what changed for a watched link.
    fn link(&mut self, kind: u16, body: &[u8]) -> Option<Found> {
        let index = u32_of(body.get(4..8)?)?;
        let flags = u32_of(body.get(8..12)?)?;
        let list = attrs(body.get(16..)?);
        let old = self.links.get(&index).cloned();
        let mut now = old.clone().unwrap_or_default();
        if let Some(n) = attr(&list, IFLA_IFNAME) {
            now.name = cstr(n);
        }
        if let Some(info) = attr(&list, IFLA_LINKINFO)
            && let Some(k) = attr(&attrs(info), IFLA_INFO_KIND)
        {
            now.kind = cstr(k);
        }
        now.up = flags & IFF_UP != 0;
        now.master = attr(&list, IFLA_MASTER).and_then(u32_of).unwrap_or(0);
        if kind == RTM_DELLINK {
            self.links.remove(&index);
            return now.watched().then(|| {
                (
                    format!("deleted link {}", now.name),
                    now.name,
                    "link",
                    "removed",
                    None,
                )
            });
        }
        self.links.insert(index, now.clone());
        let old = old?;
        if !now.watched() {
            return None;
        }
        if old.up && !now.up {
            return Some((
                format!("set {} down", now.name),
                now.name,
                "link",
                "down",
                None,
            ));
        }
        if old.master != 0 && now.master != old.master {
            let bridge = self.name(old.master);
            let what = format!("took {} off bridge {bridge}", now.name);
            return Some((what, now.name, "link", "detached", Some(bridge)));
        }
        None
    }

    fn address(&self, kind: u16, body: &[u8]) -> Option<Found> {
        let (family, prefix) = (*body.first()?, *body.get(1)?);
        let iface = self.name(u32_of(body.get(4..8)?)?);
        let list = attrs(body.get(8..)?);
        let raw = attr(&list, IFA_LOCAL).or_else(|| attr(&list, IFA_ADDRESS))?;
        let addr = addr_of(family, raw)?;
        let link_local = matches!(addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80);
        if !is_bridge(&iface) || link_local {
            return None;
        }
        let value = format!("{addr}/{prefix}");
        let (what, action) = match kind {
            RTM_NEWADDR => (format!("added address {value} to {iface}"), "added"),
            _ => (format!("removed address {value} from {iface}"), "removed"),
        };
        Some((what, iface, "address", action, Some(value)))
    }

    fn route(&self, kind: u16, port: u32, body: &[u8]) -> Option<Found> {
        let (family, dst_len) = (*body.first()?, *body.get(1)?);
        let (table, protocol, rtype) = (*body.get(4)?, *body.get(5)?, *body.get(7)?);
        let list = attrs(body.get(12..)?);
        let table = attr(&list, RTA_TABLE)
            .and_then(u32_of)
            .unwrap_or(table as u32);
        let oif = attr(&list, RTA_OIF).and_then(u32_of);
        let iface = oif.map(|i| self.name(i)).unwrap_or_default();
        // unicast 1; blackhole 6, unreachable 7, prohibit 8 send matching traffic nowhere.
        let refusing = matches!(rtype, 6..=8);
        let bridge = is_bridge(&iface);
        let by_kernel = port == 0 && protocol == RTPROT_KERNEL;
        let kept = table == RT_TABLE_MAIN
            && (rtype == 1 || refusing)
            && (dst_len == 0 || bridge || refusing)
            && !by_kernel;
        if !kept {
            return None;
        }
        let mut value = match attr(&list, RTA_DST).and_then(|d| addr_of(family, d)) {
            Some(dst) => format!("{dst}/{dst_len}"),
            None => "default".to_string(),
        };
        if refusing {
            let name = ["blackhole", "unreachable", "prohibit"][rtype as usize - 6];
            value = format!("{name} {value}");
        }
        if let Some(gw) = attr(&list, RTA_GATEWAY).and_then(|g| addr_of(family, g)) {
            value.push_str(&format!(" via {gw}"));
        }
        if !iface.is_empty() {
            value.push_str(&format!(" dev {iface}"));
        }
        value.push_str(&format!(" proto {}", protocol_name(protocol)));
        let (what, action) = match kind {
            RTM_NEWROUTE => (format!("added route {value}"), "added"),
            _ => (format!("removed route {value}"), "removed"),
        };
        Some((what, iface, "route", action, Some(value)))
    }

    /// The kept changes of one datagram (several messages, each with its sender's port).
    pub fn decode(&mut self, datagram: &[u8]) -> Vec<(Found, u32)> {
        messages(datagram)
            .into_iter()
            .filter_map(|m| {
                let found = match m.kind {
                    RTM_NEWLINK | RTM_DELLINK => self.link(m.kind, m.body),
                    RTM_NEWADDR | RTM_DELADDR => self.address(m.kind, m.body),
                    RTM_NEWROUTE | RTM_DELROUTE => self.route(m.kind, m.port, m.body),
                    _ => None,
                };
                found.map(|f| (f, m.port))
            })
            .collect()
    }
}

fn netlink_socket(groups: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before it is owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // A read returns within this, so the thread sees the stop flag.
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 300_000,
    };
    // SAFETY: the option value is a timeval that outlives the call, with its size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    // SAFETY: sockaddr_nl is plain data; zeroed is its unbound value.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = groups;
    // SAFETY: sa is a valid sockaddr_nl of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is writable for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The links there are now (a dump), so a later notification can be told from a repeat.
fn dump_links(decoder: &mut Decoder) -> io::Result<()> {
    let fd = netlink_socket(0)?;
    // nlmsghdr (16) + ifinfomsg (16): RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP.
    let mut req = [0u8; 32];
    req[0..4].copy_from_slice(&32u32.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_UNSPEC as u8;
    // SAFETY: req is readable for its length.
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let n = recv(&fd, &mut buf)?;
        for m in messages(&buf[..n]) {
            match m.kind {
                NLMSG_DONE | NLMSG_ERROR => return Ok(()),
                RTM_NEWLINK => {
                    decoder.link(m.kind, m.body);
                }
                _ => {}
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "the link dump did not finish within 3 s",
    ))
}

/// The process that holds the NETLINK_ROUTE socket bound to `port` in this thread's namespace.
/// Bounded: a host with very many processes is searched for at most 200 ms.
fn holder(port: u32) -> Option<(u32, String)> {
    let table = std::fs::read_to_string("/proc/thread-self/net/netlink").ok()?;
    let inode = table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 10 && f[1] == "0" && f[2] == port.to_string())
            .then(|| f[f.len() - 1].to_string())
    })?;
    let wanted = format!("socket:[{inode}]");
    let deadline = Instant::now() + Duration::from_millis(200);
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if Instant::now() > deadline {
            return None;
        }
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str())
        });
        if holds {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            return Some((pid, comm.trim().to_string()));
        }
    }
    None
}

/// rtnetlink's notifications of one namespace, read on a thread of its own until dropped.
pub struct RtnlMonitor {
    stop: Arc<AtomicBool>,
    pub changes: Receiver<LinkChange>,
}

impl RtnlMonitor {
    pub fn start(ns: &Netns) -> Result<Self, String> {
        let (tx, rx) = mpsc::channel();
        let stop = Self::spawn(ns, move |c| tx.send(c).is_ok())?;
        Ok(Self { stop, changes: rx })
    }

    /// Subscribes in `ns` (before it returns: no change after it is missed) and gives each
    /// kept change to `deliver` until it returns false or the returned flag is set.
    pub fn spawn(
        ns: &Netns,
        mut deliver: impl FnMut(LinkChange) -> bool + Send + 'static,
    ) -> Result<Arc<AtomicBool>, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let (ready_tx, ready) = mpsc::channel::<Result<(), String>>();
        let ns_file = ns
            .file()
            .map_err(|e| format!("cannot reopen the namespace: {e}"))?;
        std::thread::spawn(move || {
            // SAFETY: ns_file is a namespace file; setns changes only this thread.
            if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = ready_tx.send(Err(format!(
                    "cannot join the namespace: {}",
                    io::Error::last_os_error()
                )));
                return;
            }
            let groups = RTMGRP_LINK
                | RTMGRP_IPV4_IFADDR
                | RTMGRP_IPV4_ROUTE
                | RTMGRP_IPV6_IFADDR
                | RTMGRP_IPV6_ROUTE;
            let fd = match netlink_socket(groups) {
                Ok(fd) => fd,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot open an rtnetlink socket: {e}")));
                    return;
                }
            };
            let mut decoder = Decoder::default();
            let _ = dump_links(&mut decoder);
            let _ = ready_tx.send(Ok(()));
            read_loop(&fd, &mut decoder, &stopped, &mut deliver);
        });
        match ready.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(stop),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the rtnetlink monitor did not start within 5 s".into()),
        }
    }
}

fn read_loop(
    fd: &OwnedFd,
    decoder: &mut Decoder,
    stop: &AtomicBool,
    deliver: &mut dyn FnMut(LinkChange) -> bool,
) {
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let n = match recv(fd, &mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => continue,
            // A burst overflowed the socket: the changes it held are lost, later ones are not.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
            Err(_) => return,
        };
        let time = chrono::Utc::now();
        for ((what, iface, object, action, value), port) in decoder.decode(&buf[..n]) {
            let holder = (port != 0).then(|| holder(port)).flatten();
            let change = LinkChange {
                what,
                iface,
                object,
                action,
                value,
                port,
                holder,
                time,
            };
            if !deliver(change) {
                return;
            }
        }
    }
}

impl Drop for RtnlMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message: header (type, port) and body.
    fn msg(kind: u16, port: u32, body: &[u8]) -> Vec<u8> {
        let len = 16 + body.len();
        let mut m = Vec::new();
        m.extend((len as u32).to_ne_bytes());
        m.extend(kind.to_ne_bytes());
        m.extend(0u16.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend(port.to_ne_bytes());
        m.extend(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn rta(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend(((4 + value.len()) as u16).to_ne_bytes());
        a.extend(kind.to_ne_bytes());
        a.extend(value);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn link_body(index: u32, name: &str, up: bool, master: u32) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b[4..8].copy_from_slice(&index.to_ne_bytes());
        b[8..12].copy_from_slice(&(up as u32).to_ne_bytes());
        b.extend(rta(IFLA_IFNAME, format!("{name}\0").as_bytes()));
        if master != 0 {
            b.extend(rta(IFLA_MASTER, &master.to_ne_bytes()));
        }
        if name.starts_with("veth") {
            b.extend(rta(IFLA_LINKINFO, &rta(IFLA_INFO_KIND, b"veth\0")));
        }
        b
    }

    #[test]
    fn an_address_removed_from_a_bridge_is_kept_with_its_requester() {
        let mut d = Decoder::default();
        d.decode(&msg(RTM_NEWLINK, 0, &link_body(3, "docker0", true, 0)));
        let mut body = vec![libc::AF_INET as u8, 16, 0, 0];
        body.extend(3u32.to_ne_bytes());
        body.extend(rta(IFA_LOCAL, &[172, 17, 0, 1]));
        let got = d.decode(&msg(RTM_DELADDR, 4242, &body));
        assert_eq!(got.len(), 1);
        let ((what, iface, object, action, value), port) = &got[0];
        assert_eq!(what, "removed address 172.17.0.1/16 from docker0");
        assert_eq!(
            (iface.as_str(), *object, *action),
            ("docker0", "address", "removed")
        );
        assert_eq!((value.as_deref(), *port), (Some("172.17.0.1/16"), 4242));
    }

    #[test]
    fn an_expired_default_route_is_the_kernels_and_a_connected_route_is_not_kept() {
        let mut d = Decoder::default();
        d.decode(&msg(RTM_NEWLINK, 0, &link_body(2, "eth-ext", true, 0)));
        d.decode(&msg(RTM_NEWLINK, 0, &link_body(3, "docker0", true, 0)));
        let route = |dst: Option<&[u8]>, len: u8, proto: u8, oif: u32, gw: Option<&[u8]>| {
            let family = if gw.is_some_and(|g| g.len() == 16) {
                libc::AF_INET6
            } else {
                libc::AF_INET
            };
            let mut b = vec![family as u8, len, 0, 0, 254, proto, 0, 1, 0, 0, 0, 0];
            if let Some(dst) = dst {
                b.extend(rta(RTA_DST, dst));
            }
            b.extend(rta(RTA_OIF, &oif.to_ne_bytes()));
            if let Some(gw) = gw {
                b.extend(rta(RTA_GATEWAY, gw));
            }
            b
        };
        let fe80: Ipv6Addr = "fe80::1".parse().unwrap();
        let expired = route(None, 0, 9, 2, Some(&fe80.octets()));
        let got = d.decode(&msg(RTM_DELROUTE, 0, &expired));
        assert_eq!(
            got[0].0.0,
            "removed route default via fe80::1 dev eth-ext proto ra"
        );
        assert_eq!(got[0].1, 0, "no process asked");
        let connected = route(Some(&[172, 17, 0, 0]), 16, RTPROT_KERNEL, 3, None);
        assert!(d.decode(&msg(RTM_DELROUTE, 0, &connected)).is_empty());
        let by_hand = d.decode(&msg(RTM_DELROUTE, 777, &connected));
        assert_eq!(
            by_hand[0].0.0,
            "removed route 172.17.0.0/16 dev docker0 proto kernel"
        );
    }

    #[test]
    fn links_are_kept_only_when_a_bridge_or_veth_goes_down_away_or_off_its_bridge() {
        let mut d = Decoder::default();
        d.decode(&msg(RTM_NEWLINK, 0, &link_body(3, "docker0", true, 0)));
        d.decode(&msg(RTM_NEWLINK, 0, &link_body(4, "veth1a2b", true, 3)));
        d.decode(&msg(RTM_NEWLINK, 0, &link_body(2, "eth0", true, 0)));
        assert!(
            d.decode(&msg(RTM_NEWLINK, 0, &link_body(3, "docker0", true, 0)))
                .is_empty()
        );
        assert!(
            d.decode(&msg(RTM_NEWLINK, 0, &link_body(2, "eth0", false, 0)))
                .is_empty()
        );
        let off = d.decode(&msg(RTM_NEWLINK, 99, &link_body(4, "veth1a2b", true, 0)));
        assert_eq!(off[0].0.0, "took veth1a2b off bridge docker0");
        let down = d.decode(&msg(RTM_NEWLINK, 99, &link_body(3, "docker0", false, 0)));
        assert_eq!(down[0].0.0, "set docker0 down");
        let gone = d.decode(&msg(RTM_DELLINK, 99, &link_body(3, "docker0", false, 0)));
        assert_eq!(gone[0].0.0, "deleted link docker0");
    }

    #[test]
    fn a_port_names_its_process_as_autobind_and_libnl_give_it() {
        let c = |port: u32| LinkChange {
            what: String::new(),
            iface: String::new(),
            object: "address",
            action: "removed",
            value: None,
            port,
            holder: None,
            time: chrono::Utc::now(),
        };
        assert_eq!(c(4242).pid(), Some(4242));
        assert_eq!(c(4242 | (3 << 22)).pid(), Some(4242), "libnl's counter");
        assert_eq!(c(0).pid(), None, "the kernel");
        assert_eq!(
            c(-4100i32 as u32).pid(),
            None,
            "autobind's fallback names no process"
        );
    }
}
