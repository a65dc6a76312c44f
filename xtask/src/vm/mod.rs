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
    /// cloud build of each, over a bookworm userland.
    #[arg(long, default_value = "all", conflicts_with = "distro")]
    kernel: String,
    /// Engine guests instead of the kernel matrix: each Debian suite (bullseye, bookworm,
    /// trixie, comma-separated, or `all`) boots its own kernel over its own userland and runs
    /// its own dockerd, firewalld and Podman in the engine tests.
    #[arg(long)]
    distro: Option<String>,
    /// Integration test binaries to run after the probe, comma-separated, or `none`
    /// (default: drops,attribution,culprit,reliability,recorder; with --distro docker,podman).
    #[arg(long)]
    tests: Option<String>,
    /// Series (5.10, 6.1, 6.12) or suites that must pass every step. Any other kernel may
    /// instead be refused by droptrace, cleanly: exit 3 with its sentence, fast, never a hang.
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
    /// Guests booted at once (default: one per CPU; a TCG guest keeps one CPU busy).
    #[arg(long)]
    jobs: Option<usize>,
}

const MATRIX_TESTS: &str =
    "drops,attribution,culprit,reliability,recorder,conntrack,routes,isolation";
const ENGINE_TESTS: &str = "docker,podman";

/// One disk image and the kernels booted with it.
struct Plan {
    userland: image::Userland,
    kernels: Vec<KernelPackage>,
    /// Steps this userland cannot run, and why (a guest prints them as skipped).
    skips: Vec<(String, String)>,
}

/// The kernel matrix (every kernel over bookworm's tools) or, with `--distro`, one plan per
/// suite: its own kernel over its own userland.
fn plans(args: &VmArgs, available: Vec<KernelPackage>) -> Result<Vec<Plan>> {
    let Some(distro) = &args.distro else {
        return Ok(vec![Plan {
            userland: image::Userland::matrix(),
            kernels: select(available, &args.kernel)?,
            skips: Vec::new(),
        }]);
    };
    let wanted: Vec<&str> = match distro.as_str() {
        "all" => image::SUITES.iter().map(|s| s.name).collect(),
        list => list.split(',').collect(),
    };
    let mut out = Vec::new();
    for name in wanted {
        let suite = image::SUITES
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no suite {name}: bullseye, bookworm, trixie or all"))?;
        let mut skips = Vec::new();
        if !suite.netavark {
            skips.push((
                "podman".to_string(),
                format!("{name}'s Podman publishes through CNI plugins, not netavark"),
            ));
        }
        out.push(Plan {
            userland: image::Userland::engines(suite),
            kernels: select(available.clone(), suite.series)?,
            skips,
        });
    }
    Ok(out)
}

pub fn run(args: VmArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "cargo xtask vm needs root: debootstrap and the image's device files need it"
    );
    let dir = PathBuf::from(VM_DIR);
    fs::create_dir_all(&dir)?;
    let default_tests = if args.distro.is_some() {
        ENGINE_TESTS
    } else {
        MATRIX_TESTS
    };
    let tests: Vec<String> = match args.tests.as_deref().unwrap_or(default_tests) {
        "none" | "" => Vec::new(),
        list => list.split(',').map(str::to_string).collect(),
    };

    eprintln!("[vm] building the static binary (cargo xtask dist)");
    let droptrace = crate::dist::build()?;
    // Engine guests run older C libraries than this machine's (bullseye: glibc 2.31): their
    // test binaries are static, like droptrace.
    let target = args.distro.as_ref().map(|_| crate::dist::TARGET);
    let test_bins = test_binaries(&tests, target)?;

    let archives = archives(&args)?;
    let apt = PrivateApt::new(&dir.join("apt"), &archives)?;
    eprintln!("[vm] apt-get update (private configuration in {VM_DIR}/apt)");
    apt.update()?;
    let plans = plans(&args, apt.cloud_kernels()?)?;

    let mut steps = vec!["probe".to_string()];
    if args.distro.is_none() {
        steps.push("demo".to_string());
    }
    steps.extend(tests.iter().cloned());
    let mut accel = args.accel;
    let mut guests = Vec::new();
    for plan in &plans {
        let mut kernels = Vec::new();
        for pkg in &plan.kernels {
            eprintln!("[vm] kernel {} {}", pkg.name, pkg.version);
            let deb = apt.download(pkg, &dir.join("debs"))?;
            let unpacked = image::unpack_kernel(&deb, &dir.join("kernels").join(&pkg.name))?;
            kernels.push((pkg.clone(), unpacked));
        }
        let root = image::rootfs(&dir, &archives, &plan.userland)?;
        for (_, kernel) in kernels.iter_mut() {
            // From here on, the indexed copy in the guest's root filesystem.
            kernel.modules = image::install_modules(&root, kernel)?;
        }
        install_payload(&root, &droptrace, &test_bins, &plan.skips)?;
        let disk = dir.join(format!("disk-{}.img", plan.userland.name));
        eprintln!("[vm] disk image {}", disk.display());
        image::disk_image(&root, &disk)?;
        if accel == Accel::Auto {
            accel = match guest::kvm_works(&kernels[0].1.vmlinuz, &dir) {
                true => Accel::Kvm,
                false => Accel::Tcg,
            };
            eprintln!("[vm] accelerator: {accel:?}");
        }
        for (pkg, kernel) in kernels {
            guests.push(Guest {
                label: match &args.distro {
                    Some(_) => plan.userland.suite.to_string(),
                    None => pkg.series.clone(),
                },
                suite: plan.userland.suite,
                pkg,
                kernel,
                disk: disk.clone(),
            });
        }
    }
    let results = boot_all(&guests, &steps, accel, &args, &dir)?;
    let matrix = report::Matrix {
        accel,
        steps,
        kernels: results,
    };
    print!("{}", matrix.table());
    let json = dir.join(match args.distro {
        Some(_) => "engines.json",
        None => "results.json",
    });
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
fn test_binaries(names: &[String], target: Option<&str>) -> Result<Vec<(String, PathBuf)>> {
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
    if let Some(target) = target {
        cmd.args(["--target", target]);
    }
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

/// /droptrace-vm in the guest: init, the static droptrace, the test binaries, and a file per
/// step this guest skips (`skip/STEP` holds why).
fn install_payload(
    root: &Path,
    droptrace: &Path,
    tests: &[(String, PathBuf)],
    skips: &[(String, String)],
) -> Result<()> {
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
    fs::create_dir_all(payload.join("skip"))?;
    for (step, why) in skips {
        fs::write(payload.join("skip").join(step), why)?;
    }
    Ok(())
}

/// Unpacks the guest's base64 tarball of fixtures into `out` (emptied first).
fn unpack_artifacts(b64: &str, out: &Path) -> Result<()> {
    use std::io::Write as _;
    if out.exists() {
        fs::remove_dir_all(out)?;
    }
    fs::create_dir_all(out)?;
    let tarball = out.with_extension("tar.gz.b64");
    fs::File::create(&tarball)?.write_all(b64.as_bytes())?;
    let script = format!(
        "base64 -d '{}' | tar -xz -C '{}'",
        tarball.display(),
        out.display()
    );
    image::run(Command::new("sh").args(["-c", &script]))
        .context("unpacking the guest's fixtures")?;
    fs::remove_file(&tarball)?;
    Ok(())
}

/// One guest to boot: a kernel and the disk image it boots with.
struct Guest {
    label: String,
    suite: &'static str,
    pkg: KernelPackage,
    kernel: image::Kernel,
    disk: PathBuf,
}

/// Boots every guest, `--jobs` at a time, and returns their results in `guests`' order.
fn boot_all(
    guests: &[Guest],
    steps: &[String],
    accel: Accel,
    args: &VmArgs,
    dir: &Path,
) -> Result<Vec<report::KernelResult>> {
    use std::sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    };
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, guests.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<report::KernelResult>>>> =
        Mutex::new((0..guests.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(g) = guests.get(i) else { break };
                    let result = run_kernel(g, steps, accel, args, dir).map(|mut r| {
                        r.suite = g.suite.to_string();
                        r
                    });
                    if let Ok(mut all) = results.lock() {
                        all[i] = Some(result);
                    }
                }
            });
        }
    });
    let all = results
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a guest's thread panicked"))?;
    all.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("a guest was never booted"))))
        .collect()
}

fn run_kernel(
    g: &Guest,
    steps: &[String],
    accel: Accel,
    args: &VmArgs,
    dir: &Path,
) -> Result<report::KernelResult> {
    let (pkg, kernel) = (&g.pkg, &g.kernel);
    let kdir = dir.join("kernels").join(&pkg.name);
    let initrd = kdir.join("initrd.cpio");
    image::initramfs(kernel, &initrd)?;
    let limit = Duration::from_secs(args.step_limit);
    // Every step may use its whole limit and then have its stacks printed (eu-stack reads a
    // process in seconds on a host, in tens of seconds under emulation); the guest powers
    // itself off after all of them.
    let per_step = limit + Duration::from_secs(90);
    let budget = per_step * steps.len() as u32 + Duration::from_secs(60);
    // The matrix's console.log; an engine guest's beside it, named by its suite.
    let log = match g.label == pkg.series {
        true => kdir.join("console.log"),
        false => kdir.join(format!("console-{}.log", g.label)),
    };
    eprintln!("[vm] booting {} ({:?})", kernel.release, accel);
    let (console, killed) = guest::boot(&guest::Boot {
        label: &g.label,
        vmlinuz: &kernel.vmlinuz,
        initrd: &initrd,
        image: &g.disk,
        steps,
        limit,
        budget,
        accel,
        log: &log,
        verbose: args.verbose,
    })?;
    let run = guest::parse_console(&console);
    if let Some(b64) = &run.artifacts {
        let out = dir.join("fixtures").join(&g.label);
        unpack_artifacts(b64, &out)?;
        eprintln!(
            "[vm {}] the tests' fixtures are in {}",
            g.label,
            out.display()
        );
    }
    Ok(report::KernelResult::new(
        pkg,
        &kernel.release,
        &run,
        killed,
        &log,
    ))
}
