//! One guest: QEMU boots a kernel with the disk image, the guest's init runs the steps, and
//! the host reads the serial console line by line until the guest powers off or the host's
//! own deadline passes (then QEMU is killed: nothing here can leave CI stuck).
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::image::Cpio;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when a probe boot succeeds, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

pub struct Boot<'a> {
    pub label: &'a str,
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub image: &'a Path,
    pub steps: &'a [String],
    /// Per step, enforced inside the guest.
    pub limit: Duration,
    /// The whole guest, enforced inside it; the host allows a minute more, then kills QEMU.
    pub budget: Duration,
    pub accel: Accel,
    pub log: &'a Path,
    pub verbose: bool,
}

fn qemu(accel: Accel, vmlinuz: &Path, initrd: &Path, append: &str) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    match accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        // One TCG thread for both vCPUs: with a thread per vCPU, a kernel text patch (a static
        // key flipped when droptrace links or unlinks a cgroup program) can leave the other
        // vCPU executing the patch's int3 after it was removed: "Oops: int3" in the guest, seen
        // once in do_sock_setsockopt on 6.12. The guest still has two CPUs.
        _ => cmd.args(["-accel", "tcg,thread=single", "-cpu", "max"]),
    };
    cmd.args([
        "-smp", "2", "-m", "3072", "-display", "none", "-monitor", "none",
    ])
    .args([
        "-serial",
        "stdio",
        "-no-reboot",
        "-nic",
        "none",
        "-snapshot",
    ])
    .arg("-kernel")
    .arg(vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", append])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // QEMU dies with the thread that started it (which waits for it): a killed
    // `cargo xtask vm` leaves no guest running.
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// Reads the child's console until it exits or `deadline` passes (then it is killed).
/// Returns the console text and whether the deadline cut it short.
fn read_console(
    mut child: Child,
    deadline: Duration,
    mut on_line: impl FnMut(&str),
) -> Result<(String, bool)> {
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let (tx, rx) = mpsc::channel::<String>();
    let tx2 = tx.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            let _ = tx2.send(format!("[qemu] {line}"));
        }
    });
    let started = Instant::now();
    let mut text = String::new();
    let mut killed = false;
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                // The serial console ends lines with \r\n.
                let line = line.trim_end_matches('\r');
                on_line(line);
                text.push_str(line);
                text.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Timeout) if left.is_zero() => {
                let _ = child.kill();
                killed = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if child.try_wait()?.is_some() && reader.is_finished() {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.wait();
    Ok((text, killed))
}

/// Boots the guest and returns its console.
pub fn boot(b: &Boot) -> Result<(String, bool)> {
    let append = format!(
        "console=ttyS0 panic=-1 quiet rw dtvm.steps={} dtvm.limit={} dtvm.budget={}",
        b.steps.join(","),
        b.limit.as_secs(),
        b.budget.as_secs()
    );
    let child = qemu(b.accel, b.vmlinuz, b.initrd, &append)
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", b.image.display()))
        .spawn()
        .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let mut log = fs::File::create(b.log).with_context(|| format!("{}", b.log.display()))?;
    let label = b.label.to_string();
    let verbose = b.verbose;
    read_console(child, b.budget + Duration::from_secs(60), |line| {
        let _ = writeln!(log, "{line}");
        if verbose {
            eprintln!("[{label}] {line}");
        } else if let Some(marker) = line.strip_prefix("@@DTVM ") {
            eprintln!("[vm {label}] {}", marker.trim_end_matches("@@"));
        }
    })
}

/// Whether KVM really runs a guest here: /dev/kvm can exist while every guest fails early
/// (seen on these machines), so one tiny guest is booted with it and must say so.
pub fn kvm_works(vmlinuz: &Path, dir: &Path) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let initrd: PathBuf = dir.join("kvm-probe.cpio");
    let Ok(busybox) = fs::read("/bin/busybox") else {
        return false;
    };
    let mut cpio = Cpio::default();
    cpio.file("bin/busybox", 0o755, &busybox);
    let init = "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc 2>/dev/null || { /bin/busybox mkdir /proc; /bin/busybox mount -t proc proc /proc; }\necho @@DTVM kvm works@@\necho o > /proc/sysrq-trigger\n";
    cpio.file("init", 0o755, init.as_bytes());
    if fs::write(&initrd, cpio.finish()).is_err() {
        return false;
    }
    let mut child = qemu(Accel::Kvm, vmlinuz, &initrd, "console=ttyS0 panic=-1 quiet");
    let Ok(child) = child.spawn() else {
        return false;
    };
    read_console(child, Duration::from_secs(20), |_| {})
        .map(|(text, _)| text.contains("@@DTVM kvm works@@"))
        .unwrap_or(false)
}

/// What one step printed and how it ended, read from the console markers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepRun {
    pub name: String,
    pub output: String,
    pub rc: Option<i32>,
    pub secs: Option<f64>,
    pub hang: bool,
    pub skipped: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct GuestRun {
    pub release: Option<String>,
    /// The base64 tarball of files the tests left (`DROPTRACE_FIXTURES`), if any.
    pub artifacts: Option<String>,
    pub steps: Vec<StepRun>,
    pub done: bool,
    pub budget_exhausted: bool,
    pub fatal: Option<String>,
}

pub fn parse_console(text: &str) -> GuestRun {
    let mut run = GuestRun::default();
    let mut current: Option<StepRun> = None;
    let mut artifacts: Option<String> = None;
    for line in text.lines() {
        if let Some(b64) = artifacts.as_mut() {
            if line.contains("@@DTVM artifacts end@@") {
                run.artifacts = artifacts.take();
            } else {
                b64.push_str(line.trim());
            }
            continue;
        }
        if line.contains("@@DTVM artifacts begin@@") {
            artifacts = Some(String::new());
            continue;
        }
        let Some(marker) = line
            .find("@@DTVM ")
            .map(|i| &line[i + 7..])
            .and_then(|m| m.strip_suffix("@@"))
        else {
            if let Some(step) = current.as_mut() {
                step.output.push_str(line);
                step.output.push('\n');
            }
            continue;
        };
        if let Some(release) = marker.strip_prefix("kernel ") {
            run.release = Some(release.to_string());
        } else if marker == "done" {
            run.done = true;
        } else if marker.starts_with("budget exhausted") {
            run.budget_exhausted = true;
        } else if let Some(why) = marker.strip_prefix("fatal: ") {
            run.fatal = Some(why.to_string());
        } else if let Some(rest) = marker.strip_prefix("step=") {
            let (name, what) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Some(why) = what.strip_prefix("skipped: ") {
                run.steps.push(StepRun {
                    name: name.to_string(),
                    skipped: Some(why.to_string()),
                    ..StepRun::default()
                });
            } else if what == "begin" {
                if let Some(open) = current.take() {
                    run.steps.push(open);
                }
                current = Some(StepRun {
                    name: name.to_string(),
                    ..StepRun::default()
                });
            } else if let Some(step) = current.as_mut().filter(|s| s.name == name) {
                if what.starts_with("hang") {
                    step.hang = true;
                } else if let Some(end) = what.strip_prefix("end ") {
                    for kv in end.split_whitespace() {
                        match kv.split_once('=') {
                            Some(("rc", v)) => step.rc = v.parse().ok(),
                            Some(("secs", v)) => step.secs = v.parse().ok(),
                            _ => {}
                        }
                    }
                    run.steps.extend(current.take());
                }
            }
        }
    }
    run.steps.extend(current);
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_split_the_console_into_steps() {
        let console = "SeaBIOS\n@@DTVM kernel 6.1.0-50-cloud-amd64@@\r\n@@DTVM step=demo begin@@\ndroptrace demo: building\nevery step was attributed right\n@@DTVM step=demo end rc=0 secs=21.4@@\n@@DTVM step=drops begin@@\ntest a ... ok\n@@DTVM step=drops hang after 600s: threads' stacks follow@@\n--- pid 9\n@@DTVM step=drops end rc=137 secs=600.2@@\n@@DTVM done@@\n";
        let run = parse_console(&console.replace('\r', ""));
        assert_eq!(run.release.as_deref(), Some("6.1.0-50-cloud-amd64"));
        assert!(run.done);
        assert_eq!(run.steps.len(), 2);
        assert_eq!(run.steps[0].rc, Some(0));
        assert_eq!(run.steps[0].secs, Some(21.4));
        assert!(run.steps[0].output.contains("attributed right"));
        assert!(run.steps[1].hang);
        assert_eq!(run.steps[1].rc, Some(137));
        assert!(run.steps[1].output.contains("--- pid 9"));
    }

    #[test]
    fn a_guest_that_died_mid_step_leaves_the_step_open() {
        let run = parse_console(
            "@@DTVM step=probe end rc=3 secs=0.1@@\n@@DTVM step=drops skipped: refused@@\n@@DTVM step=demo begin@@\nKernel panic\n",
        );
        assert_eq!(run.steps[0].skipped.as_deref(), Some("refused"));
        let run = parse_console("@@DTVM step=demo begin@@\nKernel panic\n");
        assert!(!run.done);
        assert_eq!(run.steps[0].rc, None);
        assert!(run.steps[0].output.contains("Kernel panic"));
    }
}
