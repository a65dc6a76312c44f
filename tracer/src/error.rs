//! Errors a user can meet. Each message says what went wrong and what to do next; `main`
//! prints it in one sentence (no backtrace) and exits with `exit_code()`.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "droptrace needs root: loading eBPF programs requires CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (missing: {missing}); run it with sudo"
    )]
    NotRoot { missing: String },

    #[error(
        "kernel has no BTF at {0}: droptrace needs CONFIG_DEBUG_INFO_BTF=y (distribution kernels since Linux 5.4 have it; RHEL 8.2+, Ubuntu 20.10+, Debian 11+)"
    )]
    NoBtf(String),

    #[error("cannot parse the kernel BTF at {path}: {reason}; is it a BTF blob from this kernel?")]
    BadBtf { path: String, reason: String },

    #[error(
        "the running kernel's BTF has no {field}: this kernel's layout is not supported yet; please report `uname -r`"
    )]
    MissingField { field: String },

    #[error(
        "tracefs is not mounted and could not be mounted ({0}): mount it with `mount -t tracefs tracefs /sys/kernel/tracing` and retry"
    )]
    NoTracefs(String),

    #[error(
        "network namespace {spec:?} not found: {reason}; list named ones with `ip netns list`, or pass /proc/PID/ns/net of a process inside it"
    )]
    UnknownNetns { spec: String, reason: String },

    #[error(
        "{path} is not a network namespace (it is not an nsfs file of type net): pass a name from `ip netns list` or /proc/PID/ns/net"
    )]
    NotANetns { path: String },

    #[error("port {0} is out of range: a published port is 1-65535")]
    BadPort(u32),

    #[error("no port to watch: pass --port PORT (for example --port 5000)")]
    NoPorts,

    #[error(
        "nothing checked: no published port found in namespace {netns} (no container engine answered and no DNAT rule names a port): name one with --port PORT (for example --port 5000), or the engine's socket with --docker-host PATH"
    )]
    NothingToCheck { netns: String },

    #[error("cannot attach the drop probe: {0}")]
    Attach(String),

    #[error("cannot load droptrace's eBPF programs into this kernel: {0}")]
    Load(String),

    #[error(
        "namespaces of an earlier demo are still there ({0}): remove them with `droptrace demo --cleanup`, then run the demo again"
    )]
    DemoLeftovers(String),

    #[error(
        "no container engine answers at {socket} ({why}): is dockerd (or podman.socket) running? Pass --docker-host PATH for another socket, or --port PORT to watch without discovery"
    )]
    NoEngine { socket: String, why: String },

    #[error(
        "container {wanted:?} is not among the containers that publish ports ({known}): check `droptrace ports`"
    )]
    UnknownContainer { wanted: String, known: String },

    #[error(
        "cannot write {path} ({why}): choose a directory droptrace can write to, on a filesystem with space"
    )]
    Unwritable { path: String, why: String },

    #[error(
        "{path} is not a droptrace evidence bundle ({why}): pass the directory given to --evidence"
    )]
    NotABundle { path: String, why: String },

    #[error(
        "cannot serve metrics on {addr} ({why}): pick a free address, e.g. --metrics 127.0.0.1:9464"
    )]
    MetricsBind { addr: String, why: String },

    #[error(
        "no change journal at {path} ({why}): start the recorder (`droptrace record`, or deploy/droptrace-record.service), or pass --journal DIR"
    )]
    NoJournal { path: String, why: String },

    #[error("{0}")]
    Io(String),
}

impl Error {
    /// Exit status: 2 for a usage error (as clap uses), 3 for the environment (privilege,
    /// missing kernel feature), 4 for a runtime failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::BadPort(_)
            | Error::NoPorts
            | Error::NothingToCheck { .. }
            | Error::UnknownNetns { .. }
            | Error::NotANetns { .. }
            | Error::UnknownContainer { .. }
            | Error::NotABundle { .. } => 2,
            Error::NotRoot { .. }
            | Error::NoBtf(_)
            | Error::BadBtf { .. }
            | Error::MissingField { .. }
            | Error::NoTracefs(_)
            | Error::Load(_)
            | Error::Attach(_)
            | Error::DemoLeftovers(_)
            | Error::NoEngine { .. }
            | Error::Unwritable { .. }
            | Error::MetricsBind { .. }
            | Error::NoJournal { .. } => 3,
            Error::Io(_) => 4,
        }
    }
}
