//! What a guest boots: the kernel unpacked from its .deb, an initramfs that only reaches the
//! disk (busybox-static and the virtio modules), and an ext4 disk image holding a userland
//! made with debootstrap (bookworm's tools for the kernel matrix; each suite's own engines for
//! `--distro`), its kernels' modules and the payload (droptrace, the test binaries, the guest's
//! init). Guests boot the image with -snapshot: it stays pristine.
use std::{
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use super::apt::Archives;

/// Debian packages of the guest userland: what droptrace runs (iptables-save, nft, ip,
/// conntrack, nsenter), what the lab and the tests run (busybox httpd, curl, setpriv,
/// bpftool) and what the watchdog uses to print a hung program's stacks (eu-stack).
pub const GUEST_PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nftables",
    "conntrack",
    "procps",
    "kmod",
    "busybox-static",
    "curl",
    "util-linux",
    "bpftool",
    "elfutils",
    "ca-certificates",
];
/// The container engines of an engine guest (`--distro`): Debian's dockerd, firewalld (with
/// its system bus; without libpam-systemd its polkit dependency does not configure) and, where
/// the suite publishes with netavark, rootful and rootless Podman.
const DOCKER_FIREWALLD: &[&str] = &["docker.io", "firewalld", "dbus", "libpam-systemd"];
const PODMAN: &[&str] = &["podman", "netavark", "aardvark-dns", "uidmap"];

/// A guest's root filesystem: a Debian suite and the packages on top of minbase.
#[derive(Clone, Debug)]
pub struct Userland {
    /// Its directory under target/vm: `rootfs-NAME`.
    pub name: String,
    pub suite: &'static str,
    pub packages: Vec<&'static str>,
}

impl Userland {
    /// The kernel matrix's userland: bookworm with the tools, for every kernel.
    pub fn matrix() -> Self {
        Userland {
            name: "bookworm".into(),
            suite: "bookworm",
            packages: GUEST_PACKAGES.to_vec(),
        }
    }

    /// A suite's own userland with its own engines (`--distro`).
    pub fn engines(suite: &Suite) -> Self {
        let mut packages = GUEST_PACKAGES.to_vec();
        packages.extend(DOCKER_FIREWALLD);
        if suite.name == "trixie" {
            // From Debian 13 the docker CLI is a package of its own (docker.io recommends it).
            packages.push("docker-cli");
        }
        if suite.netavark {
            packages.extend(PODMAN);
            // Rootless Podman's port forwarder: slirp4netns before Podman 5, pasta from 5 on.
            packages.push(if suite.name == "bookworm" {
                "slirp4netns"
            } else {
                "passt"
            });
        }
        Userland {
            name: format!("{}-engines", suite.name),
            suite: suite.name,
            packages,
        }
    }
}

/// A Debian suite an engine guest runs: its own kernel series under its own userland.
#[derive(Debug)]
pub struct Suite {
    pub name: &'static str,
    pub series: &'static str,
    /// Whether its Podman publishes with netavark (bullseye's Podman 3.0 uses CNI plugins).
    pub netavark: bool,
}

pub const SUITES: &[Suite] = &[
    Suite {
        name: "bullseye",
        series: "5.10",
        netavark: false,
    },
    Suite {
        name: "bookworm",
        series: "6.1",
        netavark: true,
    },
    Suite {
        name: "trixie",
        series: "6.12",
        netavark: true,
    },
];

/// Runs `cmd`, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A userland's root filesystem, made once and kept under `dir` (one to two minutes).
pub fn rootfs(dir: &Path, archives: &Archives, userland: &Userland) -> Result<PathBuf> {
    let name = &userland.name;
    let suite = userland.suite;
    let root = dir.join(format!("rootfs-{name}"));
    let stamp = dir.join(format!("rootfs-{name}.done"));
    let wanted = userland.packages.join(",");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) && root.exists() {
        return Ok(root);
    }
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    eprintln!(
        "[vm] debootstrap {suite} into {} (one to two minutes)",
        root.display()
    );
    run(Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={wanted}")])
        .arg(suite)
        .arg(&root)
        .arg(&archives.main))
    .context("debootstrap (apt-get install debootstrap) could not build the guest userland")?;
    // The downloaded packages would only make the disk image larger.
    for deb in fs::read_dir(root.join("var/cache/apt/archives"))?.flatten() {
        if deb.path().extension().is_some_and(|e| e == "deb") {
            fs::remove_file(deb.path())?;
        }
    }
    fs::write(&stamp, wanted)?;
    Ok(root)
}

/// A kernel unpacked from its package.
pub struct Kernel {
    pub release: String,
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

pub fn unpack_kernel(deb: &Path, dir: &Path) -> Result<Kernel> {
    if !dir.join("boot").exists() {
        fs::create_dir_all(dir)?;
        run(Command::new("dpkg").arg("-x").arg(deb).arg(dir))?;
    }
    let vmlinuz = fs::read_dir(dir.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .starts_with("vmlinuz-")
        })
        .with_context(|| format!("{} holds no boot/vmlinuz-*", deb.display()))?;
    let release = vmlinuz
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    // trixie moved modules to /usr/lib/modules.
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|m| dir.join(m).join(&release))
        .find(|p| p.exists())
        .with_context(|| format!("{} holds no modules for {release}", deb.display()))?;
    Ok(Kernel {
        release,
        vmlinuz,
        modules,
    })
}

/// Copies a kernel's modules into the root filesystem and indexes them (depmod), so that the
/// guest's kmod loads veth, bridge, nf_tables… on demand as a real host does. Returns the copy.
pub fn install_modules(root: &Path, k: &Kernel) -> Result<PathBuf> {
    let dest = root.join("lib/modules").join(&k.release);
    if !dest.join("modules.dep").exists() {
        fs::create_dir_all(dest.parent().unwrap_or(root))?;
        run(Command::new("cp").arg("-a").arg(&k.modules).arg(&dest))?;
        run(Command::new("depmod").arg("-b").arg(root).arg(&k.release))?;
    }
    Ok(dest)
}

/// The disk image of `root` (ext4, sized to fit with room for the tests' files).
pub fn disk_image(root: &Path, image: &Path) -> Result<()> {
    let used = run(Command::new("du").args(["-sm"]).arg(root))?;
    let used_mb: u64 = used
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du printed no size")?;
    let size = format!("{}M", used_mb * 3 / 2 + 1024);
    let _ = fs::remove_file(image);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(root)
        .arg(image)
        .arg(&size))?;
    Ok(())
}

/// Modules to reach the disk, in load order: each module after those it depends on, and
/// only those that are modules in this kernel (built-in ones need nothing).
pub fn boot_modules(modules_dir: &Path) -> Result<Vec<PathBuf>> {
    let dep = fs::read_to_string(modules_dir.join("modules.dep"))
        .with_context(|| format!("{}/modules.dep", modules_dir.display()))?;
    let deps: Vec<(String, Vec<String>)> = dep
        .lines()
        .filter_map(|l| {
            let (m, rest) = l.split_once(':')?;
            Some((
                m.to_string(),
                rest.split_whitespace().map(str::to_string).collect(),
            ))
        })
        .collect();
    let mut order = Vec::new();
    for wanted in ["virtio_pci", "virtio_blk"] {
        add_with_deps(&deps, wanted, &mut order);
    }
    Ok(order.into_iter().map(|m| modules_dir.join(m)).collect())
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

fn add_with_deps(deps: &[(String, Vec<String>)], name: &str, order: &mut Vec<String>) {
    let Some((path, needs)) = deps.iter().find(|(m, _)| module_name(m) == name) else {
        return; // built in
    };
    if order.contains(path) {
        return;
    }
    // modules.dep lists a module's dependencies with the deepest last.
    for need in needs.iter().rev() {
        add_with_deps(deps, &module_name(need), order);
    }
    if !order.contains(path) {
        order.push(path.clone());
    }
}

/// The initramfs: busybox, the boot modules (decompressed: busybox insmod reads plain .ko
/// only) and an /init that mounts /dev/vda and switches to the guest's own init.
pub fn initramfs(kernel: &Kernel, out: &Path) -> Result<()> {
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
        cpio.dir(dir);
    }
    let busybox =
        fs::read("/bin/busybox").context("/bin/busybox: apt-get install busybox-static")?;
    cpio.file("bin/busybox", 0o755, &busybox);
    let mut names = Vec::new();
    for module in boot_modules(&kernel.modules)? {
        let data = fs::read(&module)?;
        let data = match module.extension().and_then(|e| e.to_str()) {
            Some("xz") => decompress(&["xz", "-dc"], &module)?,
            Some("zst") => decompress(&["zstd", "-dc"], &module)?,
            _ => data,
        };
        let name = format!("{}.ko", module_name(&module.to_string_lossy()));
        cpio.file(&format!("lib/modules/{name}"), 0o644, &data);
        names.push(name);
    }
    let init = INITRAMFS_INIT.replace("@MODULES@", &names.join(" "));
    cpio.file("init", 0o755, init.as_bytes());
    fs::write(out, cpio.finish())?;
    Ok(())
}

fn decompress(tool: &[&str], path: &Path) -> Result<Vec<u8>> {
    let out = Command::new(tool[0]).args(&tool[1..]).arg(path).output()?;
    ensure!(
        out.status.success(),
        "{} {} failed",
        tool[0],
        path.display()
    );
    Ok(out.stdout)
}

const INITRAMFS_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in @MODULES@; do insmod /lib/modules/$m || echo "initramfs: insmod $m failed"; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
if ! mount -t ext4 -o rw /dev/vda /newroot; then
  echo "@@DTVM fatal: cannot mount /dev/vda@@"
  echo o > /proc/sysrq-trigger
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /droptrace-vm/init
"#;

/// A newc cpio archive, written by hand: the kernel's initramfs format needs no tool.
#[derive(Default)]
pub(super) struct Cpio {
    data: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, body: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            body.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.data.extend_from_slice(header.as_bytes());
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    pub(super) fn file(&mut self, name: &str, perm: u32, body: &[u8]) {
        self.entry(name, 0o100000 | perm, body);
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.data
    }
}

/// Writes an executable file.
pub fn write_executable(path: &Path, body: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(body)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_modules_come_after_their_dependencies() {
        // The shape of Debian 6.1's modules.dep for the virtio disk path.
        let dir = std::env::temp_dir().join(format!("dtvm-deps-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("modules.dep"),
            "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\nkernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio.ko:\nkernel/drivers/virtio/virtio_ring.ko:\nkernel/drivers/virtio/virtio_pci_legacy_dev.ko:\nkernel/drivers/virtio/virtio_pci_modern_dev.ko:\n",
        )
        .unwrap();
        let order: Vec<String> = boot_modules(&dir)
            .unwrap()
            .iter()
            .map(|p| module_name(&p.to_string_lossy()))
            .collect();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            order,
            [
                "virtio",
                "virtio_ring",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci",
                "virtio_blk"
            ]
        );
    }

    #[test]
    fn cpio_entries_are_aligned_and_trailed() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"#!/bin/sh\n");
        let data = c.finish();
        assert!(data.starts_with(b"070701"));
        assert_eq!(data.len() % 4, 0);
        let text = String::from_utf8_lossy(&data);
        assert!(text.contains("init\0") && text.contains("TRAILER!!!\0"));
    }
}
