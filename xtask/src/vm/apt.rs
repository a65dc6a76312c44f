//! Debian's cloud kernels, fetched with apt-get through a private apt configuration: the
//! machine's own sources are never edited. The archive is the one this machine's apt already
//! uses (read from its sources), so the matrix follows whatever mirror or proxy it is set up with.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

/// The suites whose kernels the matrix boots (Debian 11, 12, 13).
pub const SUITES: &[&str] = &["bullseye", "bookworm", "trixie"];
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The archive and security archive this machine's apt uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Archives {
    pub main: String,
    pub security: String,
}

impl Archives {
    /// Read from /etc/apt/sources.list and /etc/apt/sources.list.d (one-line and deb822).
    pub fn of_this_machine() -> Result<Self> {
        let mut text = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
        if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
            let mut files: Vec<_> = dir.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                let name = f.to_string_lossy();
                if name.ends_with(".list") || name.ends_with(".sources") {
                    text.push('\n');
                    text.push_str(&fs::read_to_string(&f).unwrap_or_default());
                }
            }
        }
        Self::from_sources(&text).context(
            "this machine's apt sources name no Debian archive (a suite such as bookworm and its -security): pass --mirror and --security-mirror",
        )
    }

    /// The first URI serving a Debian release suite, and the first serving a -security suite.
    pub fn from_sources(text: &str) -> Option<Self> {
        let entries = entries(text);
        let serves = |pred: &dyn Fn(&str) -> bool| {
            entries
                .iter()
                .find(|(_, suites)| suites.iter().any(|s| pred(s)))
                .map(|(uri, _)| uri.trim_end_matches('/').to_string())
        };
        let release = |s: &str| SUITES.contains(&s) || ["buster", "forky", "sid"].contains(&s);
        let main = serves(&|s| release(s))?;
        let security = serves(&|s| s.ends_with("-security"))?;
        Some(Self { main, security })
    }

    fn source_list(&self) -> String {
        let mut out = String::new();
        for suite in SUITES {
            out.push_str(&format!(
                "deb [signed-by={KEYRING}] {} {suite} main\ndeb [signed-by={KEYRING}] {} {suite}-security main\n",
                self.main, self.security
            ));
        }
        out
    }
}

/// (URI, suites) of every `deb` entry, one-line or deb822.
fn entries(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut words = rest.split_whitespace().peekable();
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            for w in words.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push((uri.to_string(), vec![suite.to_string()]));
        }
    }
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_string())
            })
        };
        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let enabled = field("Enabled").is_none_or(|e| e != "no");
        if let (true, true, Some(uris), Some(suites)) =
            (is_deb, enabled, field("URIs"), field("Suites"))
        {
            let suites: Vec<String> = suites.split_whitespace().map(str::to_string).collect();
            for uri in uris.split_whitespace() {
                out.push((uri.to_string(), suites.clone()));
            }
        }
    }
    out
}

/// apt-get and apt-cache confined to `dir` (their own source list, lists and cache).
pub struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    pub fn new(dir: &Path, archives: &Archives) -> Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        fs::write(dir.join("sources.list"), archives.source_list())?;
        let status = dir.join("status");
        if !status.exists() {
            fs::write(&status, "")?;
        }
        // apt resolves relative Dir:: paths against its own directories: give it absolute ones.
        let dir = dir
            .canonicalize()
            .with_context(|| format!("{}", dir.display()))?;
        Ok(Self { dir })
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        let d = self.dir.display();
        for opt in [
            format!("Dir::Etc::SourceList={d}/sources.list"),
            "Dir::Etc::SourceParts=/dev/null".to_string(),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::Cache={d}/cache"),
            format!("Dir::State::status={d}/status"),
            "Debug::NoLocking=1".to_string(),
            "APT::Architecture=amd64".to_string(),
        ] {
            cmd.args(["-o", &opt]);
        }
        cmd
    }

    pub fn update(&self) -> Result<()> {
        let out = self
            .command("apt-get")
            .args(["-qq", "update"])
            .output()
            .context("running apt-get")?;
        ensure!(
            out.status.success(),
            "apt-get update (private configuration in {}) failed: {}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// The newest cloud kernel of each series (`5.10`, `6.1`, `6.12`) the suites offer.
    pub fn cloud_kernels(&self) -> Result<Vec<KernelPackage>> {
        let names = self
            .command("apt-cache")
            .args(["pkgnames", "linux-image-"])
            .output()?;
        let names: Vec<String> = String::from_utf8_lossy(&names.stdout)
            .lines()
            .filter(|n| series_of(n).is_some())
            .map(str::to_string)
            .collect();
        ensure!(
            !names.is_empty(),
            "the private apt lists name no linux-image-*-cloud-amd64"
        );
        let shown = self
            .command("apt-cache")
            .args(["show", "--no-all-versions"])
            .args(&names)
            .output()?;
        Ok(newest_per_series(&String::from_utf8_lossy(&shown.stdout)))
    }

    /// Downloads `pkg` into `dir` (once) and returns the .deb.
    pub fn download(&self, pkg: &KernelPackage, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir)?;
        let existing = |dir: &Path| -> Option<PathBuf> {
            fs::read_dir(dir)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    let n = p.file_name().unwrap_or_default().to_string_lossy();
                    n.starts_with(&format!("{}_", pkg.name)) && n.ends_with(".deb")
                })
        };
        if let Some(deb) = existing(dir) {
            return Ok(deb);
        }
        let out = self
            .command("apt-get")
            .args(["-qq", "download", &pkg.name])
            .current_dir(dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "apt-get download {} failed: {}",
                pkg.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        existing(dir).with_context(|| format!("apt-get download {} left no .deb", pkg.name))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KernelPackage {
    pub name: String,
    pub version: String,
    pub series: String,
}

/// `5.10` for linux-image-5.10.0-32-cloud-amd64, `6.12` for linux-image-6.12.117+deb13-…;
/// None for anything but a versioned cloud kernel image (meta packages, -dbg, -unsigned).
pub fn series_of(package: &str) -> Option<String> {
    let abi = package
        .strip_prefix("linux-image-")?
        .strip_suffix("-cloud-amd64")?;
    let mut parts = abi.split(['.', '-', '+']);
    let (major, minor) = (parts.next()?, parts.next()?);
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (numeric(major) && numeric(minor)).then(|| format!("{major}.{minor}"))
}

/// From `apt-cache show` stanzas, the package of the highest version in each series.
fn newest_per_series(show: &str) -> Vec<KernelPackage> {
    let mut best: Vec<KernelPackage> = Vec::new();
    for stanza in show.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let (Some(name), Some(version)) = (field("Package:"), field("Version:")) else {
            continue;
        };
        let Some(series) = series_of(&name) else {
            continue;
        };
        let candidate = KernelPackage {
            name,
            version,
            series,
        };
        match best.iter_mut().find(|k| k.series == candidate.series) {
            Some(k) if version_key(&candidate.version) > version_key(&k.version) => *k = candidate,
            Some(_) => {}
            None => best.push(candidate),
        }
    }
    best.sort_by_key(|k| version_key(&k.series));
    best
}

/// Numeric parts of a Debian kernel version (6.1.176-1 → [6, 1, 176, 1]), for ordering.
fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_read_from_deb822_and_one_line_sources() {
        // The shape of Debian 12's /etc/apt/sources.list.d/debian.sources.
        let deb822 = "Types: deb\nURIs: http://archive.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://archive.example/debian-security\nSuites: bookworm-security\nComponents: main\n";
        let a = Archives::from_sources(deb822).unwrap();
        assert_eq!(a.main, "http://archive.example/debian");
        assert_eq!(a.security, "http://archive.example/debian-security");
        let one_line = "deb [arch=amd64] http://m.example/debian/ bullseye main\ndeb http://s.example/debian-security bullseye-security main\n";
        let a = Archives::from_sources(one_line).unwrap();
        assert_eq!(a.main, "http://m.example/debian");
        assert_eq!(a.security, "http://s.example/debian-security");
        assert_eq!(
            Archives::from_sources("deb https://x.example/apt cloud-sdk main"),
            None
        );
    }

    #[test]
    fn only_versioned_cloud_kernels_have_a_series() {
        assert_eq!(
            series_of("linux-image-5.10.0-32-cloud-amd64").as_deref(),
            Some("5.10")
        );
        assert_eq!(
            series_of("linux-image-6.12.117+deb13-cloud-amd64").as_deref(),
            Some("6.12")
        );
        assert_eq!(series_of("linux-image-cloud-amd64"), None);
        assert_eq!(series_of("linux-image-6.1.0-50-cloud-amd64-dbg"), None);
        assert_eq!(series_of("linux-image-6.1.0-50-amd64"), None);
    }

    #[test]
    fn the_newest_build_of_each_series_wins() {
        let show = "Package: linux-image-6.1.0-49-cloud-amd64\nVersion: 6.1.170-1\n\nPackage: linux-image-6.1.0-50-cloud-amd64\nVersion: 6.1.176-1\n\nPackage: linux-image-5.10.0-32-cloud-amd64\nVersion: 5.10.223-1\n\nPackage: linux-image-6.1.0-9-cloud-amd64\nVersion: 6.1.27-1\n";
        let got = newest_per_series(show);
        let names: Vec<_> = got.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "linux-image-5.10.0-32-cloud-amd64",
                "linux-image-6.1.0-50-cloud-amd64"
            ]
        );
    }
}
