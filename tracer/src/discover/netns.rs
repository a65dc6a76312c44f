//! Network namespaces: naming the one to watch, running code inside it, and naming its
//! interfaces. Interface indexes repeat across namespaces, so names must be looked up in the
//! namespace the event came from.
use std::{
    collections::HashMap,
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::error::Error;

const NSIO: libc::c_ulong = 0xb7;
/// ioctl(fd, NS_GET_NSTYPE) returns the CLONE_NEW* type of a namespace file (Linux >= 4.11).
const NS_GET_NSTYPE: libc::c_ulong = (NSIO << 8) | 0x3;

/// How long a read-only tool (iptables-save, nft, ip, conntrack) may take in the namespace.
pub const TOOL_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A network namespace, held open so that its inode cannot be reused while we watch it.
#[derive(Debug)]
pub struct Netns {
    /// What the user called it (`host-ns`, `/proc/812/ns/net`, `current`).
    pub name: String,
    pub path: PathBuf,
    /// nsfs inode: what the kernel side reads as `net->ns.inum`.
    pub inode: u32,
    file: File,
}

impl Netns {
    /// The namespace droptrace itself runs in.
    pub fn current() -> Result<Self, Error> {
        Self::open("current", Path::new("/proc/self/ns/net"))
    }

    /// `--netns NAME|PATH`: a name under /run/netns, or a path such as /proc/PID/ns/net.
    pub fn resolve(spec: &str) -> Result<Self, Error> {
        let path = if spec.contains('/') {
            PathBuf::from(spec)
        } else {
            Path::new("/run/netns").join(spec)
        };
        Self::open(spec, &path)
    }

    fn open(name: &str, path: &Path) -> Result<Self, Error> {
        let file = File::open(path).map_err(|err| Error::UnknownNetns {
            spec: name.to_string(),
            reason: format!("{}: {err}", path.display()),
        })?;
        // SAFETY: the fd is open for the duration of the call; NS_GET_NSTYPE takes no argument.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind != libc::CLONE_NEWNET {
            return Err(Error::NotANetns {
                path: path.display().to_string(),
            });
        }
        let meta = file.metadata().map_err(|e| Error::Io(e.to_string()))?;
        Ok(Self {
            name: name.to_string(),
            path: path.to_path_buf(),
            inode: meta.ino() as u32,
            file,
        })
    }

    /// Runs a read-only tool inside the namespace (as `nsenter --net=PATH ARGS…` would, the
    /// child joining it before exec: one exec less per tool, which was most of a state
    /// read's time) and collects its output. A tool that is not installed is an error of kind
    /// NotFound. A tool that has not finished within TOOL_LIMIT (a wedged netlink socket, a
    /// lock held elsewhere) is killed and reported as timed out: no caller waits forever.
    pub fn tool_output(&self, args: &[&str]) -> io::Result<std::process::Output> {
        use std::{
            os::unix::process::CommandExt,
            process::{Command, Stdio},
        };
        let (tool, rest) = args
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no tool to run"))?;
        let ns = self.file.as_raw_fd();
        let mut cmd = Command::new(tool);
        cmd.args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: between fork and exec the child only makes the setns system call (async-
        // signal-safe) on a descriptor this Netns keeps open.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = child.id() as libc::pid_t;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(TOOL_LIMIT) {
            Ok(out) => out,
            Err(_) => {
                // SAFETY: the child is not reaped until wait_with_output returns, so `pid`
                // still names it (it cannot have been reused).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("did not finish within {} s", TOOL_LIMIT.as_secs()),
                ))
            }
        }
    }

    /// Runs `f` on a thread that has joined this namespace. Sockets created there stay bound
    /// to it after the thread ends.
    pub fn run_in<F, R>(&self, f: F) -> io::Result<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let fd = self.file.try_clone()?;
        std::thread::spawn(move || -> io::Result<R> {
            // SAFETY: fd is a valid namespace file; setns only changes this thread.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("thread in the namespace panicked"))?
    }
}

/// Whether `name` is one container engines give their bridges (docker0, br-*, podman0, cni0…).
pub fn is_bridge(name: &str) -> bool {
    ["docker", "br-", "podman", "cni", "cbr", "virbr"]
        .iter()
        .any(|p| name.starts_with(p))
}

impl Netns {
    /// The namespace file, opened again: for a thread that joins it for as long as it runs.
    pub fn file(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// The namespace's interfaces (ifindex, name), as if_nameindex(3) lists them there;
    /// empty when they cannot be listed.
    pub fn interfaces(&self) -> Vec<(u32, String)> {
        self.run_in(|| {
            let mut out = Vec::new();
            // SAFETY: if_nameindex returns a NULL-terminated array (or NULL) that is read
            // before if_freenameindex releases it; each name is a NUL-terminated string.
            unsafe {
                let list = libc::if_nameindex();
                if list.is_null() {
                    return out;
                }
                let mut cur = list;
                while (*cur).if_index != 0 && !(*cur).if_name.is_null() {
                    let name = std::ffi::CStr::from_ptr((*cur).if_name);
                    out.push(((*cur).if_index, name.to_string_lossy().into_owned()));
                    cur = cur.add(1);
                }
                libc::if_freenameindex(list);
            }
            out
        })
        .unwrap_or_default()
    }
}

/// ifindex → interface name inside one namespace, through a socket created there.
pub struct IfNames {
    sock: Option<OwnedFd>,
    cache: HashMap<u32, String>,
}

impl IfNames {
    pub fn new(ns: &Netns) -> Self {
        let sock = ns
            .run_in(|| {
                // SAFETY: plain socket(2) call; the result is checked.
                let fd = unsafe {
                    libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
                };
                // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
                (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
            })
            .ok()
            .flatten();
        Self {
            sock,
            cache: HashMap::new(),
        }
    }

    /// Interface name, or `if<N>` when it is unknown (gone, or another namespace's index).
    pub fn name(&mut self, ifindex: u32) -> String {
        if ifindex == 0 {
            return "-".to_string();
        }
        if let Some(name) = self.cache.get(&ifindex) {
            return name.clone();
        }
        match self.lookup(ifindex) {
            Some(name) => {
                self.cache.insert(ifindex, name.clone());
                name
            }
            None => format!("if{ifindex}"),
        }
    }

    fn lookup(&self, ifindex: u32) -> Option<String> {
        let sock = self.sock.as_ref()?;
        // SAFETY: ifreq is plain data; zeroed is a valid initial value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        req.ifr_ifru.ifru_ifindex = ifindex as libc::c_int;
        // SAFETY: SIOCGIFNAME reads ifr_ifindex and writes ifr_name within the struct.
        let rc =
            unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFNAME as libc::Ioctl, &mut req) };
        if rc != 0 {
            return None;
        }
        let bytes: Vec<u8> = req
            .ifr_name
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_namespace_has_an_inode_and_loopback() {
        let ns = Netns::current().expect("own netns");
        assert!(ns.inode > 0);
        let mut names = IfNames::new(&ns);
        assert_eq!(names.name(1), "lo");
        assert_eq!(names.name(0), "-");
    }

    #[test]
    fn unknown_names_and_non_namespace_files_are_refused() {
        let err = Netns::resolve("droptrace-no-such-ns").unwrap_err();
        assert!(err.to_string().contains("ip netns list"), "{err}");
        let err = Netns::resolve("/etc/hostname").unwrap_err();
        assert!(matches!(err, Error::NotANetns { .. }), "{err}");
    }
}
