//! The command line. Flags and their meaning are a contract: add, never rename.
use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand};

pub use crate::load::ebpf::HookChoice;

#[derive(Debug, Parser)]
#[command(
    name = "droptrace",
    version,
    about = "Why are packets to my published port being dropped, and who caused it?",
    long_about = "droptrace watches the kernel's drop path (kfree_skb with drop reasons) for the ports you name, \
inside the network namespace you name, and prints the dropped packets with the reason and the place \
the kernel dropped it (a storm's repeats counted in the kernel), then the cause, the fix and who made \
the change behind it."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the dropped packets to or from the watched ports, their verdicts, then a summary.
    Watch(WatchArgs),
    /// Render the report of an evidence bundle (any machine, no root needed).
    Report(ReportArgs),
    /// List the published ports: from the container engine, else the DNAT rules.
    Ports(PreflightArgs),
    /// Static preflight, no eBPF: forwarding, DNAT and chains per published port, rules that
    /// would drop or reject it, firewalld, docker-proxy. Exit 0 when healthy, 1 when not.
    Check(CheckArgs),
    /// Replay the incident in throwaway network namespaces and show droptrace's verdict for
    /// each step (a self-test of this kernel). Exit 0 when every step is attributed right.
    Demo(DemoArgs),
    /// Record every change that can break a published port (forwarding and rp_filter
    /// sysctls, iptables-legacy and nf_tables rulesets) with its author, in a journal that
    /// `watch`, `check` and `history` read. Runs until stopped; meant as a service.
    Record(RecordArgs),
    /// Show the recorder's journal: changes with their authors, and when it ran.
    History(HistoryArgs),
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Write the man pages into DIR: droptrace.1 and one per subcommand (droptrace-watch.1…).
    Manpages(ManpagesArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManpagesArgs {
    /// Where to write them, e.g. /usr/local/share/man/man1.
    #[arg(value_name = "DIR")]
    pub dir: std::path::PathBuf,
}

/// The shell completion script for `shell`, from the CLI's own definition.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(
        shell,
        &mut <Cli as clap::CommandFactory>::command(),
        "droptrace",
        out,
    );
}

/// Writes the man pages, from the CLI's own definition, into `dir` (created if needed); the
/// files written.
pub fn manpages(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>, crate::error::Error> {
    let unwritable = |e: std::io::Error| crate::error::Error::Unwritable {
        path: dir.display().to_string(),
        why: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(unwritable)?;
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::generate_to(cmd.clone(), dir).map_err(unwritable)?;
    let mut written = vec![dir.join("droptrace.1")];
    written.extend(
        cmd.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| dir.join(format!("droptrace-{}.1", s.get_name()))),
    );
    Ok(written)
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The directory given to `watch --evidence`.
    #[arg(value_name = "DIR")]
    pub dir: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct PreflightArgs {
    /// Container engine socket (Docker, or Podman's compatible socket), a path or a unix://
    /// URL. Default: $DOCKER_HOST, $CONTAINER_HOST, /var/run/docker.sock, /run/podman/podman.sock.
    #[arg(long, value_name = "PATH|unix://PATH")]
    pub docker_host: Option<String>,

    /// Network namespace (default: the engine's, else droptrace's own).
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,

    /// Only these ports (and check them even if nothing publishes them).
    #[arg(long = "port", short = 'p', value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// JSON Lines output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub preflight: PreflightArgs,

    /// The recorder's journal, to name the change behind each finding. Default:
    /// /var/lib/droptrace when it exists.
    #[arg(long, value_name = "DIR")]
    pub journal: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Where the journal is kept (created 0700; files 0600).
    #[arg(long, value_name = "DIR", default_value = crate::journal::store::DEFAULT_DIR)]
    pub journal: std::path::PathBuf,

    /// Network namespace whose rulesets to monitor (repeatable): a name from `ip netns list`
    /// or /proc/PID/ns/net. Default: this one and every `ip netns` one, rescanned each
    /// fingerprint. Sysctl writes and iptables-legacy replacements are recorded in every
    /// namespace unless namespaces are named.
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Vec<String>,

    /// Largest size of the journal in bytes; the oldest records go first.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20, value_parser = parse_journal_bytes)]
    pub max_size: u64,

    /// Oldest record kept, in days.
    #[arg(long, value_name = "DAYS", default_value_t = 90.0, value_parser = parse_days)]
    pub max_age: f64,

    /// Seconds between fingerprints of the covered namespaces (changes no hook saw).
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    pub fingerprint_every: Duration,

    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The journal to read.
    #[arg(long, value_name = "DIR", default_value = crate::journal::store::DEFAULT_DIR)]
    pub journal: std::path::PathBuf,

    /// Only this namespace: `host`, a name from `ip netns list`, an inode, or /proc/PID/ns/net.
    #[arg(long, value_name = "NAME|INODE|PATH")]
    pub netns: Option<String>,

    /// Only this sysctl or legacy table (net.ipv4.ip_forward, nat), or changes whose line
    /// contains it (DOCKER).
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,

    /// From this time: RFC 3339 (2026-11-26T13:00:00Z) or an age (90m, 3h, 2d).
    #[arg(long, value_name = "TIME", value_parser = crate::cmd::history::parse_when)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,

    /// Up to this time (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = crate::cmd::history::parse_when)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,

    /// Only changes made from this systemd unit (network.service), or part of its name.
    #[arg(long, value_name = "UNIT")]
    pub unit: Option<String>,

    /// JSON Lines: the journal's records as written.
    #[arg(long)]
    pub json: bool,
}

fn parse_journal_bytes(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count"))?;
    if n < 32 * 1024 {
        return Err(format!(
            "{n} is too small: the journal needs at least 32768 bytes"
        ));
    }
    Ok(n)
}

fn parse_days(s: &str) -> Result<f64, String> {
    let d: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of days"))?;
    if !(d > 0.0 && d.is_finite()) {
        return Err(format!("{s} must be a positive number of days"));
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Remove the namespaces a killed demo left behind, then exit.
    #[arg(long)]
    pub cleanup: bool,

    /// Drop hook to use (see `watch --drop-hook`).
    #[arg(long, value_enum, default_value_t = HookChoice::Auto, hide = true)]
    pub drop_hook: HookChoice,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("capture").args(["pcap", "evidence"]).multiple(true)))]
pub struct WatchArgs {
    /// Port to watch, as source or destination (repeatable; 1-65535).
    #[arg(long = "port", short = 'p', value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Address and port pair to watch, as source or destination, e.g. 172.17.0.2:5000 or
    /// [2001:db8::2]:5000 (repeatable).
    #[arg(long = "addr", value_name = "ADDR:PORT")]
    pub addrs: Vec<SocketAddr>,

    /// Network namespace to watch: a name from `ip netns list` or a path such as
    /// /proc/PID/ns/net. Default: the container engine's namespace when ports come from it,
    /// else the namespace droptrace runs in.
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,

    /// Container engine socket (Docker, or Podman's compatible socket) to discover published
    /// ports from, a path or a unix:// URL. Without --port: $DOCKER_HOST, $CONTAINER_HOST,
    /// /var/run/docker.sock and /run/podman/podman.sock are tried, then the DNAT rules.
    #[arg(long, value_name = "PATH|unix://PATH")]
    pub docker_host: Option<String>,

    /// Watch only the published ports of this container (name or id prefix).
    #[arg(long, value_name = "NAME|ID")]
    pub container: Option<String>,

    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<Duration>,

    /// JSON Lines on stdout: a "start" object, "drop" objects (and "flow" objects counting a
    /// storm's repeats), verdicts, a "summary".
    #[arg(long)]
    pub json: bool,

    /// Name the exact nf_tables rule that drops a packet, with the kernel's rule tracing.
    /// Changes the ruleset while it runs: adds table `inet droptrace_trace` (nftrace on the
    /// watched ports), removed on exit. Without it, rule counters name the rule.
    #[arg(long)]
    pub trace_rules: bool,

    /// Print the kernel side's own anomaly reports on stderr (a full ring or counter map, a
    /// packet it could not read), through aya-log. Off by default: then they cost one check.
    #[arg(long)]
    pub kernel_log: bool,

    /// Leave out the routing-decision and forwarded-packet hooks (for `cargo xtask bench`).
    #[arg(long, hide = true)]
    pub no_forwarding_hooks: bool,

    /// Which routing-decision programs: auto (tp_btf, falling back to the classic fib
    /// tracepoints), tp_btf, or tracepoint. For testing the fallback on kernels with both.
    #[arg(long, value_enum, default_value_t = HookChoice::Auto, hide = true)]
    pub routing_hook: HookChoice,

    /// Serve Prometheus metrics (text exposition) on ADDR, path /metrics, e.g. 0.0.0.0:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Write the headers of dropped packets (captured in the kernel, from the IP header
    /// through the transport header: no payload byte) to this pcapng file, with the drop
    /// reason in each packet's comment.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<std::path::PathBuf>,

    /// With --pcap or --evidence: keep up to N bytes of each dropped packet from its IP
    /// header, payload included (at most 1024). Payload can hold secrets: by default none is
    /// kept.
    #[arg(long, value_name = "N", requires = "capture", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub snaplen: Option<u32>,

    /// Write an evidence bundle into this directory: events.jsonl, verdicts.json,
    /// drops.pcapng, state snapshots at start and at the first verdict, report.md (files 0600).
    #[arg(long, value_name = "DIR")]
    pub evidence: Option<std::path::PathBuf>,

    /// Also report frees on socket teardown (QUEUE_PURGE, SOCKET_CLOSE, or a queue purge
    /// without a reason) and late FINs/RSTs of closed connections that TIME_WAIT discards,
    /// normally noise.
    #[arg(long)]
    pub include_teardown: bool,

    /// One line per dropped packet, as the kernel reports it. By default the kernel counts a
    /// storm's repeats: each flow (reason, place, addresses, port) prints its first few drops
    /// each second, and one "×N" line per second (JSON: "type":"flow") with the exact rest.
    #[arg(long)]
    pub every_drop: bool,

    /// Size of the kernel event ring in bytes (power of two, >= 4096). Counters stay exact
    /// whatever its size; a small ring only loses event lines.
    #[arg(long, value_name = "BYTES", hide = true, value_parser = parse_ring_bytes)]
    pub ring_bytes: Option<u32>,

    /// Which drop hook to use: auto (tp_btf, falling back to the tracepoint), tp_btf, or
    /// tracepoint. For testing the fallback on kernels that have both.
    #[arg(long, value_enum, default_value_t = HookChoice::Auto, hide = true)]
    pub drop_hook: HookChoice,

    /// The recorder's journal (`droptrace record`), to name a change made before this run
    /// as a verdict's culprit. Default: /var/lib/droptrace when it exists.
    #[arg(long, value_name = "DIR")]
    pub journal: Option<std::path::PathBuf>,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("{s} must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!("{n} must be a power of two of at least 4096"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_and_out_of_range_are_usage_errors() {
        for bad in ["0", "65536", "-1", "http"] {
            let err = Cli::try_parse_from(["droptrace", "watch", "--port", bad]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}: {err}");
        }
    }

    #[test]
    fn repeated_ports_and_addresses_are_collected() {
        let cli = Cli::try_parse_from([
            "droptrace",
            "watch",
            "--port",
            "5000",
            "-p",
            "8080",
            "--addr",
            "[2001:db8::2]:5000",
            "--duration",
            "1.5",
            "--json",
        ])
        .unwrap();
        let Command::Watch(args) = cli.command else {
            panic!("parsed as watch");
        };
        assert_eq!(args.ports, vec![5000, 8080]);
        assert_eq!(args.addrs[0].port(), 5000);
        assert_eq!(args.duration, Some(Duration::from_millis(1500)));
        assert!(args.json);
    }

    #[test]
    fn nonsense_durations_and_ring_sizes_are_refused() {
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("soon").is_err());
        assert!(parse_ring_bytes("5000").is_err());
        assert_eq!(parse_ring_bytes("4096"), Ok(4096));
    }
}
