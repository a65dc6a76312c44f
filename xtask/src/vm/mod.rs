//! `cargo xtask vm`: the kernel matrix. Debian's own cloud kernels (5.10, 6.1, 6.12) booted
//! in QEMU over a bookworm userland; in each guest the static `target/dist/droptrace` runs a
//! probe (`watch --duration 1 --json`: which hooks load), `droptrace demo`, then the chosen
//! integration test binaries. Results: a table on stdout and `target/vm/results.json`.
//!
//! Pipeline: dist binary + test binaries → kernels (private apt) → disk image (debootstrap
//! rootfs, modules, payload) → one guest per kernel (watchdog inside, deadline outside) →
//! console markers → verdict per step → table.
pub mod apt;
mod guest;
mod image;
mod report;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use apt::{Archives, KernelPackage, PrivateApt};
use guest::Accel;

const VM_DIR: &str = "target/vm";
const GUEST_INIT: &str = include_str!("guest-init.sh");

#[derive(clap::Args)]
pub struct VmArgs {
    /// Kernel series to boot (5.10, 6.1, 6.12, comma-separated) or `all`: the newest Debian
    /// cloud build of each.
    #[arg(long, default_value = "all")]
    kernel: String,
    /// Integration test binaries to run after the demo, comma-separated, or `none`.
    #[arg(long, default_value = "drops,attribution,culprit,reliability,recorder")]
    tests: String,
    /// Series that must pass every step. Any other kernel may instead be refused by
    /// droptrace, cleanly: exit 3 with its sentence, fast, never a hang.
    #[arg(long, value_delimiter = ',')]
    must_pass: Vec<String>,
    #[arg(long, value_enum, default_value = "auto")]
    accel: Accel,
    /// Seconds one step may run in the guest before its stacks are printed and it is killed.
    #[arg(long, default_value_t = 900)]
    step_limit: u64,
    /// Print every console line (default: step markers only; the full console is in
    /// target/vm/<kernel>/console.log).
    #[arg(long)]
    verbose: bool,
    /// Debian archive URI (default: the one this machine's apt sources use).
    #[arg(long)]
    mirror: Option<String>,
    /// Debian security archive URI (default: the one this machine's apt sources use).
    #[arg(long)]
    security_mirror: Option<String>,
}

pub fn run(args: VmArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "cargo xtask vm needs root: debootstrap and the image's device files need it"
    );
    let dir = PathBuf::from(VM_DIR);
    fs::create_dir_all(&dir)?;
    let tests: Vec<String> = match args.tests.as_str() {
        "none" | "" => Vec::new(),
        list => list.split(',').map(str::to_string).collect(),
    };

    eprintln!("[vm] building the static binary (cargo xtask dist)");
    let droptrace = crate::dist::build()?;
    let test_bins = test_binaries(&tests)?;

    let archives = archives(&args)?;
    let apt = PrivateApt::new(&dir.join("apt"), &archives)?;
    eprintln!("[vm] apt-get update (private configuration in {VM_DIR}/apt)");
    apt.update()?;
    let packages = select(apt.cloud_kernels()?, &args.kernel)?;
    let mut kernels = Vec::new();
    for pkg in &packages {
        eprintln!("[vm] kernel {} {}", pkg.name, pkg.version);
        let deb = apt.download(pkg, &dir.join("debs"))?;
        let unpacked = image::unpack_kernel(&deb, &dir.join("kernels").join(&pkg.name))?;
        kernels.push((pkg.clone(), unpacked));
    }

    let root = image::rootfs(&dir, &archives)?;
    for (_, kernel) in kernels.iter_mut() {
        // From here on, the indexed copy in the guest's root filesystem.
        kernel.modules = image::install_modules(&root, kernel)?;
    }
    install_payload(&root, &droptrace, &test_bins)?;
    let disk = dir.join("disk.img");
    eprintln!("[vm] disk image {}", disk.display());
    image::disk_image(&root, &disk)?;

    let accel = match args.accel {
        Accel::Auto if guest::kvm_works(&kernels[0].1.vmlinuz, &dir) => Accel::Kvm,
        Accel::Auto => Accel::Tcg,
        chosen => chosen,
    };
    eprintln!("[vm] accelerator: {accel:?}");

    let mut steps = vec!["probe".to_string(), "demo".to_string()];
    steps.extend(tests.iter().cloned());
    let mut results = Vec::new();
    for (pkg, kernel) in &kernels {
        results.push(run_kernel(pkg, kernel, &steps, accel, &args, &dir)?);
    }
    let matrix = report::Matrix {
        accel,
        steps,
        kernels: results,
    };
    print!("{}", matrix.table());
    let json = dir.join("results.json");
    fs::write(&json, serde_json::to_string_pretty(&matrix)?)?;
    eprintln!("[vm] wrote {}", json.display());
    matrix.check(&args.must_pass)
}

fn archives(args: &VmArgs) -> Result<Archives> {
    let mine = Archives::of_this_machine();
    match (&args.mirror, &args.security_mirror) {
        (Some(main), Some(security)) => Ok(Archives {
            main: main.clone(),
            security: security.clone(),
        }),
        (main, security) => {
            let mine = mine?;
            Ok(Archives {
                main: main.clone().unwrap_or(mine.main),
                security: security.clone().unwrap_or(mine.security),
            })
        }
    }
}

/// The packages of the series asked for.
fn select(available: Vec<KernelPackage>, wanted: &str) -> Result<Vec<KernelPackage>> {
    if wanted == "all" {
        return Ok(available);
    }
    let mut out = Vec::new();
    for series in wanted.split(',') {
        let pkg = available
            .iter()
            .find(|k| k.series == series)
            .with_context(|| {
                let have: Vec<_> = available.iter().map(|k| k.series.as_str()).collect();
                format!(
                    "no Debian cloud kernel of series {series}: available {}",
                    have.join(", ")
                )
            })?;
        out.push(pkg.clone());
    }
    Ok(out)
}

/// Builds the integration test binaries (`cargo test --no-run`) and returns name → path.
fn test_binaries(names: &[String]) -> Result<Vec<(String, PathBuf)>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "test",
        "--no-run",
        "--locked",
        "-p",
        "tracer",
        "--message-format=json",
    ]);
    for n in names {
        cmd.args(["--test", n]);
    }
    eprintln!("[vm] building test binaries: {}", names.join(", "));
    let out = cmd.output().context("running cargo test --no-run")?;
    ensure!(
        out.status.success(),
        "cargo test --no-run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(exe)) = (
            is_test,
            msg["target"]["name"].as_str(),
            msg["executable"].as_str(),
        ) && names.iter().any(|n| n == name)
        {
            bins.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    for n in names {
        if !bins.iter().any(|(b, _)| b == n) {
            bail!("no integration test binary named {n} (see tracer/Cargo.toml [[test]])");
        }
    }
    Ok(bins)
}

/// /droptrace-vm in the guest: init, the static droptrace, the test binaries.
fn install_payload(root: &Path, droptrace: &Path, tests: &[(String, PathBuf)]) -> Result<()> {
    let payload = root.join("droptrace-vm");
    if payload.exists() {
        fs::remove_dir_all(&payload)?;
    }
    fs::create_dir_all(payload.join("tests"))?;
    image::write_executable(&payload.join("init"), GUEST_INIT.as_bytes())?;
    fs::copy(droptrace, payload.join("droptrace"))?;
    for (name, exe) in tests {
        fs::copy(exe, payload.join("tests").join(name))
            .with_context(|| format!("copying {}", exe.display()))?;
    }
    Ok(())
}

fn run_kernel(
    pkg: &KernelPackage,
    kernel: &image::Kernel,
    steps: &[String],
    accel: Accel,
    args: &VmArgs,
    dir: &Path,
) -> Result<report::KernelResult> {
    let kdir = dir.join("kernels").join(&pkg.name);
    let initrd = kdir.join("initrd.cpio");
    image::initramfs(kernel, &initrd)?;
    let limit = Duration::from_secs(args.step_limit);
    // Every step may use its whole limit and then have its stacks printed (eu-stack reads a
    // process in seconds on a host, in tens of seconds under emulation); the guest powers
    // itself off after all of them.
    let per_step = limit + Duration::from_secs(90);
    let budget = per_step * steps.len() as u32 + Duration::from_secs(60);
    let log = kdir.join("console.log");
    eprintln!("[vm] booting {} ({:?})", kernel.release, accel);
    let (console, killed) = guest::boot(&guest::Boot {
        label: &pkg.series,
        vmlinuz: &kernel.vmlinuz,
        initrd: &initrd,
        image: &dir.join("disk.img"),
        steps,
        limit,
        budget,
        accel,
        log: &log,
        verbose: args.verbose,
    })?;
    let run = guest::parse_console(&console);
    Ok(report::KernelResult::new(
        pkg,
        &kernel.release,
        &run,
        killed,
        &log,
    ))
}
