//! The capability inspector: what the running kernel offers, probed once before anything is
//! loaded. Every optional hook declares what it needs from here and what is lost without it
//! (`loader::OptionalHook`); the start line's notes come from those declarations. Facts come
//! from the kernel's BTF, /proc/self/mounts and sysfs, never from the version number:
//! distributions backport (Debian's 6.1 has the 6.14 `icmp_send` tracepoint).
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use super::btf::KernelBtf;

/// Tracepoint → its arguments' C types on the running kernel (None: no such tracepoint).
pub type Prototypes = BTreeMap<&'static str, Option<Vec<String>>>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The BTF-typed tracepoints droptrace may hook, as this kernel declares them.
    pub prototypes: Prototypes,
    /// `enum skb_drop_reason` (Linux 5.17): the drop path's precision.
    pub drop_reasons: bool,
    /// BPF_PROG_TYPE_NETFILTER links (`struct bpf_nf_link`, Linux 6.4): the hook probes.
    pub netfilter_links: bool,
    /// cgroup bpf_links (`struct bpf_cgroup_link`, Linux 5.7): detached when droptrace dies,
    /// unlike BPF_PROG_ATTACH, so the only way droptrace attaches to a cgroup.
    pub cgroup_links: bool,
    /// The cgroup v2 mount point, where the change probes attach.
    pub cgroup2_root: Option<PathBuf>,
    /// Where tracefs is mounted (classic tracepoints need it).
    pub tracefs: Option<PathBuf>,
    /// A kprobe PMU exists (CONFIG_KPROBES).
    pub kprobes: bool,
    /// The kernel was built with BPF trampolines (fentry/fexit); a kernel can still refuse
    /// them at load time, which only loading tells.
    pub trampolines: bool,
}

impl Capabilities {
    /// Probes the running kernel, with its BTF already parsed.
    pub fn probe(btf: &KernelBtf, tracepoints: &[&'static str]) -> Self {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        Self::from_sources(btf, tracepoints, &mounts, Path::new("/sys"))
    }

    /// The same, from given sources (the tests' captured data).
    pub fn from_sources(
        btf: &KernelBtf,
        tracepoints: &[&'static str],
        mounts: &str,
        sys: &Path,
    ) -> Self {
        Self {
            prototypes: tracepoints
                .iter()
                .map(|&t| (t, btf.tracepoint_args(t)))
                .collect(),
            drop_reasons: btf.has_type("skb_drop_reason"),
            netfilter_links: btf.has_type("bpf_nf_link"),
            cgroup_links: btf.has_type("bpf_cgroup_link"),
            cgroup2_root: mount_points(mounts, "cgroup2").into_iter().next(),
            tracefs: tracefs_point(mounts),
            kprobes: sys.join("bus/event_source/devices/kprobe/type").exists(),
            trampolines: btf.has_type("bpf_trampoline"),
        }
    }
}

/// Mount points of every filesystem of type `fstype`, in mount order.
pub fn mount_points(mounts: &str, fstype: &str) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, point, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == fstype).then(|| PathBuf::from(point))
        })
        .collect()
}

/// The tracefs mount point: the standard places first, else the first one mounted.
fn tracefs_point(mounts: &str) -> Option<PathBuf> {
    let points = mount_points(mounts, "tracefs");
    super::tracefs::CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|c| points.contains(c))
        .or_else(|| points.into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = include_str!("testdata/mounts-6.18-hybrid-cgroup.txt");

    fn btf() -> KernelBtf {
        KernelBtf::from_sys().expect("the tests need this kernel's BTF")
    }

    #[test]
    fn a_hybrid_cgroup_host_has_its_cgroup2_root_below_the_v1_hierarchies() {
        assert_eq!(
            mount_points(HYBRID, "cgroup2"),
            [PathBuf::from("/sys/fs/cgroup/unified")]
        );
        assert!(mount_points(HYBRID, "cgroup").len() > 3);
        assert_eq!(
            tracefs_point(HYBRID),
            None,
            "the build machine boots without tracefs"
        );
    }

    #[test]
    fn tracefs_is_found_where_it_is_mounted() {
        let debugfs_only = "debugfs /sys/kernel/debug debugfs rw 0 0\ntracefs /sys/kernel/debug/tracing tracefs rw 0 0\n";
        assert_eq!(
            tracefs_point(debugfs_only),
            Some(PathBuf::from("/sys/kernel/debug/tracing"))
        );
        let both = format!("{debugfs_only}tracefs /sys/kernel/tracing tracefs rw 0 0\n");
        assert_eq!(
            tracefs_point(&both),
            Some(PathBuf::from("/sys/kernel/tracing"))
        );
        assert!(mount_points("garbage\n\n", "tracefs").is_empty());
    }

    #[test]
    fn kprobes_are_seen_from_the_kprobe_pmu() {
        let sys = std::env::temp_dir().join(format!("droptrace-sys-{}", std::process::id()));
        let pmu = sys.join("bus/event_source/devices/kprobe");
        fs::create_dir_all(&pmu).unwrap();
        let without = Capabilities::from_sources(&btf(), &[], HYBRID, &sys);
        fs::write(pmu.join("type"), "6\n").unwrap();
        let with = Capabilities::from_sources(&btf(), &[], HYBRID, &sys);
        fs::remove_dir_all(&sys).unwrap();
        assert!(!without.kprobes && with.kprobes);
    }

    #[test]
    fn this_kernel_is_described_from_its_btf() {
        // The 6.18 build machine: drop reasons, netfilter and cgroup links, trampolines built
        // (fentry is refused at load time there, which a probe cannot know).
        let caps = Capabilities::from_sources(
            &btf(),
            &["kfree_skb", "no_such"],
            HYBRID,
            Path::new("/sys"),
        );
        assert!(caps.drop_reasons && caps.netfilter_links && caps.cgroup_links);
        assert!(caps.prototypes["kfree_skb"].is_some());
        assert_eq!(caps.prototypes["no_such"], None);
        assert_eq!(
            caps.cgroup2_root,
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }
}
