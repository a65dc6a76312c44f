//! `cargo xtask …`: chores a build.rs should not do.
//!   lab up       build the namespace lab and keep it until Enter/Ctrl-C (for poking by hand)
//!   lab cleanup  remove namespaces left behind by labs whose process was killed
//!   clippy       clippy with -D warnings on the host crates and on the eBPF crate (BPF target)
//!   bench        overhead, drop capacity, time to first verdict, footprint (target/bench/)
//!   dist         the static binary target/dist/droptrace (musl, eBPF object embedded)
//!   image        the container image of deploy/, built offline with a given dockerd
//!   vm           the kernel matrix: Debian's kernels in QEMU, demo and tests inside
use std::{io::BufRead, process::Command};

mod bench;
mod dist;
mod image;
mod vm;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracer::lab::{self, Backend, Lab, LabSpec};

#[derive(Parser)]
struct Xtask {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// The namespace lab used by the integration tests and the demo.
    #[command(subcommand)]
    Lab(LabTask),
    /// Clippy (-D warnings) on the host crates and on tracer-ebpf for the BPF target.
    Clippy,
    /// Benchmarks in a namespace lab, against the bpftrace one-liner (≈6 minutes, root).
    Bench {
        /// Only these phases (p1…p8, comma-separated), written to target/bench/partial.json
        /// beside the full run's bench.json: for measuring one change quickly.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// The droptrace binary to measure instead of this tree's release build (another
        /// commit's, for a before/after in one run of the same lab).
        #[arg(long)]
        droptrace: Option<std::path::PathBuf>,
    },
    /// The static binary: target/dist/droptrace (x86_64 musl, runs on any x86_64 Linux).
    Dist,
    /// The container image droptrace:latest, built without a registry: a debootstrapped
    /// Debian 12 base imported into the given dockerd, the static binary on it (root).
    Image(image::ImageArgs),
    /// The kernel matrix: Debian's cloud kernels booted in QEMU, the demo and the
    /// integration tests run inside each (root; results in target/vm/results.json).
    Vm(vm::VmArgs),
}

#[derive(Subcommand)]
enum LabTask {
    /// Build a lab and keep it until Enter is pressed (or stdin closes).
    Up {
        #[arg(long, default_value_t = 5000)]
        port: u16,
        /// Write Docker's rules with iptables-legacy instead of iptables-nft.
        #[arg(long)]
        legacy: bool,
    },
    /// Remove lab namespaces left behind by killed runs.
    Cleanup,
}

fn main() -> Result<()> {
    match Xtask::parse().command {
        Task::Lab(LabTask::Up { port, legacy }) => {
            let mut spec = LabSpec::new("manual");
            spec.port = port;
            if legacy {
                spec.backend = Backend::IptablesLegacy;
            }
            let lab = Lab::up(spec).context("building the lab")?;
            println!(
                "client ns: {}\nhost ns:   {}\nctr ns:    {}",
                lab.ext, lab.host, lab.ctr
            );
            println!(
                "try: ip netns exec {} curl -m 3 http://{}:{port}/",
                lab.ext,
                lab::HOST_ADDR
            );
            println!("press Enter to tear it down");
            let _ = std::io::stdin().lock().lines().next();
            drop(lab);
        }
        Task::Bench { only, droptrace } => {
            let bin = match droptrace {
                Some(bin) => bin,
                None => bench::release_binary()?,
            };
            bench::run(&bin, std::path::Path::new("target/bench"), &only)?;
        }
        Task::Clippy => {
            cargo(
                &[
                    "clippy",
                    "--all-targets",
                    "--locked",
                    "--",
                    "-D",
                    "warnings",
                ],
                false,
            )?;
            // The eBPF crate only builds for the BPF target, with core built from source; the
            // pinned toolchain is stable, so unlock -Z flags for this invocation only.
            cargo(
                &[
                    "clippy",
                    "-p",
                    "tracer-ebpf",
                    "--release",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--",
                    "-D",
                    "warnings",
                ],
                true,
            )?;
        }
        Task::Dist => {
            let path = dist::build()?;
            println!("{} (static, x86_64)", path.display());
        }
        Task::Vm(args) => vm::run(args)?,
        Task::Image(args) => image::run(args)?,
        Task::Lab(LabTask::Cleanup) => {
            for ns in lab::cleanup_stale() {
                println!("removed {ns}");
            }
        }
    }
    Ok(())
}

fn cargo(args: &[&str], bootstrap: bool) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args);
    if bootstrap {
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    let status = cmd
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    anyhow::ensure!(
        status.success(),
        "cargo {} failed ({status})",
        args.join(" ")
    );
    Ok(())
}
