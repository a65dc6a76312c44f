//! `cargo xtask image`: the container image of deploy/, built here without a registry. The
//! base is a Debian 12 root made with debootstrap from this machine's apt sources and imported
//! into the given dockerd; on it, the static binary (`cargo xtask dist`), by
//! deploy/Containerfile.offline. The image is also written as a `docker save` archive, to
//! `docker load` on the nodes.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{dist, vm::apt::Archives};

/// The tools droptrace runs, in the base: iptables(-legacy)-save, nft, conntrack, ip.
const BASE_PACKAGES: &str = "iptables,nftables,conntrack,iproute2";
pub const BASE: &str = "droptrace-base:bookworm";
pub const IMAGE: &str = "droptrace:latest";

#[derive(clap::Args)]
pub struct ImageArgs {
    /// The dockerd to build with (a socket path or unix:// URL; default $DOCKER_HOST, then
    /// /var/run/docker.sock).
    #[arg(long, value_name = "PATH|unix://PATH")]
    pub docker_host: Option<String>,
}

/// The base root, made once under target/image (debootstrap, about a minute).
fn base_root(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("rootfs-bookworm");
    let stamp = dir.join("rootfs-bookworm.done");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(BASE_PACKAGES) && root.exists() {
        return Ok(root);
    }
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    let archives = Archives::of_this_machine()?;
    eprintln!(
        "[image] debootstrap bookworm into {} (about a minute)",
        root.display()
    );
    let out = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={BASE_PACKAGES}"),
            "bookworm",
        ])
        .arg(&root)
        .arg(&archives.main)
        .stdin(Stdio::null())
        .output()
        .context("debootstrap (apt-get install debootstrap)")?;
    if !out.status.success() {
        bail!(
            "debootstrap failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // What an image does not need: package lists and caches, documentation.
    for junk in [
        "var/cache/apt",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
    ] {
        let _ = fs::remove_dir_all(root.join(junk));
    }
    fs::write(&stamp, BASE_PACKAGES)?;
    Ok(root)
}

/// `docker -H HOST ARGS…`, failing with its stderr.
fn docker(host: &str, args: &[&str], stdin: Option<&Path>) -> Result<String> {
    let mut cmd = Command::new("docker");
    cmd.arg("-H")
        .arg(host)
        .args(args)
        .env("DOCKER_BUILDKIT", "0");
    if let Some(file) = stdin {
        cmd.stdin(fs::File::open(file)?);
    }
    let out = cmd
        .output()
        .context("the docker client (apt-get install docker.io)")?;
    if !out.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn docker_host(args: &ImageArgs) -> String {
    let given = args
        .docker_host
        .clone()
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "/var/run/docker.sock".into());
    if given.contains("://") {
        given
    } else {
        format!("unix://{given}")
    }
}

pub fn run(args: ImageArgs) -> Result<()> {
    let host = docker_host(&args);
    docker(&host, &["version", "--format", "{{.Server.Version}}"], None).with_context(|| {
        format!("no dockerd answers on {host}: start one, or pass --docker-host")
    })?;
    let binary = dist::build()?;
    let dir = PathBuf::from("target/image");
    fs::create_dir_all(&dir)?;
    let root = base_root(&dir)?;

    let tar = dir.join("base.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--numeric-owner", "-cf"])
        .arg(&tar)
        .arg(".")
        .status()?;
    anyhow::ensure!(status.success(), "tar of {} failed", root.display());
    docker(&host, &["import", "-", BASE], Some(&tar))?;

    let context = dir.join("context");
    fs::create_dir_all(&context)?;
    fs::copy(&binary, context.join("droptrace"))?;
    fs::copy(
        "deploy/Containerfile.offline",
        context.join("Containerfile"),
    )?;
    let ctx = context.to_string_lossy();
    let file = context.join("Containerfile");
    docker(
        &host,
        &[
            "build",
            "-q",
            "-t",
            IMAGE,
            "-f",
            &file.to_string_lossy(),
            &ctx,
        ],
        None,
    )?;
    let saved = dir.join("droptrace-image.tar");
    docker(
        &host,
        &["save", "-o", &saved.to_string_lossy(), IMAGE],
        None,
    )?;
    println!(
        "{IMAGE} built on {host}; saved as {} (docker load -i it on a node)",
        saved.display()
    );
    Ok(())
}
