//! `cargo xtask dist`: one static binary, `target/dist/droptrace`, with the eBPF object
//! embedded. Built for x86_64-unknown-linux-musl so that it needs no C library on the host:
//! copy it to any x86_64 Linux (Debian 11's glibc 2.31 and older userlands included) and run it.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail, ensure};

use crate::cargo;

pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// Builds the static binary and returns its path.
pub fn build() -> Result<PathBuf> {
    cargo(
        &[
            "build",
            "--release",
            "--locked",
            "-p",
            "tracer",
            "--bin",
            "droptrace",
            "--target",
            TARGET,
        ],
        false,
    )
    .with_context(|| {
        format!("building the static binary for {TARGET} (its standard library comes with rustup target add {TARGET})")
    })?;
    let built = Path::new("target").join(TARGET).join("release/droptrace");
    let out = Path::new("target/dist");
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let dist = out.join("droptrace");
    fs::copy(&built, &dist)
        .with_context(|| format!("copying {} to {}", built.display(), dist.display()))?;
    ensure_static(&dist)?;
    Ok(dist)
}

/// Fails unless `path` is an x86_64 ELF executable that needs no program interpreter (no
/// dynamic loader, so no C library of the host is used).
pub fn ensure_static(path: &Path) -> Result<()> {
    let elf = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if let Some(interp) = interpreter(&elf)? {
        bail!(
            "{} is dynamically linked (interpreter {interp}): it would need the host's C library",
            path.display()
        );
    }
    Ok(())
}

const PT_INTERP: u32 = 3;

/// The PT_INTERP path of an ELF64 little-endian executable, if it has one.
fn interpreter(elf: &[u8]) -> Result<Option<String>> {
    ensure!(
        elf.len() > 64 && elf[..4] == *b"\x7fELF" && elf[4] == 2 && elf[5] == 1,
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| -> Result<usize> {
        let bytes = elf.get(o..o + 8).context("ELF file truncated")?;
        Ok(u64::from_le_bytes(bytes.try_into()?) as usize)
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20)?, u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let kind = elf
            .get(ph..ph + 4)
            .context("ELF program header truncated")?;
        if u32::from_le_bytes(kind.try_into()?) == PT_INTERP {
            let (off, size) = (u64_at(ph + 8)?, u64_at(ph + 32)?);
            let path = elf
                .get(off..off + size)
                .context("ELF interpreter truncated")?;
            let path = String::from_utf8_lossy(path)
                .trim_end_matches('\0')
                .to_string();
            return Ok(Some(path));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_names_its_interpreter() {
        // Any program of this machine's userland is dynamically linked against its libc.
        let elf = fs::read("/bin/sh").unwrap();
        let interp = interpreter(&elf)
            .unwrap()
            .expect("/bin/sh has an interpreter");
        assert!(interp.contains("ld-linux"), "{interp}");
        assert!(ensure_static(Path::new("/bin/sh")).is_err());
    }

    #[test]
    fn a_static_executable_has_none() {
        // busybox-static (installed by scripts/setup.sh) is the static binary every Debian has.
        let elf = fs::read("/bin/busybox").expect("busybox-static: apt-get install busybox-static");
        assert_eq!(interpreter(&elf).unwrap(), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(interpreter(b"not an elf").is_err());
        let mut truncated = fs::read("/bin/sh").unwrap();
        truncated.truncate(80);
        assert!(interpreter(&truncated).is_err());
    }
}
