//! Builds the kernel side (tracer-ebpf) for the BPF target and leaves the object in OUT_DIR,
//! where `load/ebpf.rs` embeds it with `include_bytes_aligned!`.
//!
//! The eBPF crate needs `-Z build-std=core`. The toolchain is a pinned *stable* one (see
//! rust-toolchain.toml), so unstable flags are unlocked for the nested cargo with
//! RUSTC_BOOTSTRAP=1, which aya-build honours. The host build itself stays on stable rules.
use std::{env, path::PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("tracer has no parent directory"))?
        .join("tracer-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("path {} is not UTF-8", ebpf_dir.display()))?;

    let toolchain = env::var("RUSTUP_TOOLCHAIN").unwrap_or_default();
    // rustup sets RUSTUP_TOOLCHAIN to the full name (1.99.1-x86_64-unknown-linux-gnu); keep the
    // same toolchain for the nested build so both halves agree on the compiler.
    let toolchain = if toolchain.is_empty() {
        aya_build::Toolchain::Nightly
    } else {
        aya_build::Toolchain::Custom(Box::leak(toolchain.into_boxed_str()))
    };
    println!("cargo::rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    // SAFETY: build scripts are single-threaded at this point; nothing reads the environment
    // concurrently.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };

    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        toolchain,
    )
}
