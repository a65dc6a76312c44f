//! The one place that inspects the running kernel: BTF, drop-reason names, symbols, tracefs
//! and privileges. Everything else asks here instead of probing on its own.
pub mod btf;
pub mod inspect;
pub mod kallsyms;
pub mod tracefs;

use std::fs;

use crate::error::Error;

/// Capability bits (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Checks the effective capabilities droptrace needs. CAP_SYS_ADMIN stands in for
/// CAP_BPF/CAP_PERFMON on kernels older than 5.8 that lack them.
pub fn check_privileges() -> Result<(), Error> {
    let status = fs::read_to_string("/proc/self/status").map_err(|e| Error::Io(e.to_string()))?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::NotRoot {
            missing: missing.join(", "),
        })
    }
}

/// `uname -r` of the running kernel.
pub fn release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Capabilities neither droptrace nor the read-only tools it runs (nsenter, iptables-save,
/// nft, ip) need once the probes are attached. Kept: CAP_SYS_ADMIN (setns, nsenter),
/// CAP_NET_ADMIN / CAP_NET_RAW (reading rulesets, removing --trace-rules' table),
/// CAP_BPF / CAP_PERFMON, CAP_SYS_PTRACE (other processes' /proc entries), CAP_SYSLOG (kallsyms
/// addresses), CAP_DAC_* (reading /proc and /sys), CAP_NET_BIND_SERVICE, CAP_SETPCAP (last).
const NEVER_NEEDED: &[u32] = &[
    0,  // CAP_CHOWN
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    5,  // CAP_KILL
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    9,  // CAP_LINUX_IMMUTABLE
    11, // CAP_NET_BROADCAST
    14, // CAP_IPC_LOCK
    15, // CAP_IPC_OWNER
    16, // CAP_SYS_MODULE
    17, // CAP_SYS_RAWIO
    18, // CAP_SYS_CHROOT
    20, // CAP_SYS_PACCT
    22, // CAP_SYS_BOOT
    23, // CAP_SYS_NICE
    24, // CAP_SYS_RESOURCE
    25, // CAP_SYS_TIME
    26, // CAP_SYS_TTY_CONFIG
    27, // CAP_MKNOD
    28, // CAP_LEASE
    29, // CAP_AUDIT_WRITE
    30, // CAP_AUDIT_CONTROL
    31, // CAP_SETFCAP
    32, // CAP_MAC_OVERRIDE
    33, // CAP_MAC_ADMIN
    35, // CAP_WAKE_ALARM
    36, // CAP_BLOCK_SUSPEND
    37, // CAP_AUDIT_READ
    40, // CAP_CHECKPOINT_RESTORE
];

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Drops the capabilities droptrace no longer needs, from the bounding set (so the tools it
/// runs cannot regain them) and from its own sets. Best effort: a kernel or container that
/// refuses is not an error. Returns how many were dropped.
pub fn drop_unneeded_capabilities() -> usize {
    let mut dropped = 0;
    for &cap in NEVER_NEEDED {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } == 0 {
            dropped += 1;
        }
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData for version 3; both pointers are valid.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return dropped;
    }
    for &cap in NEVER_NEEDED {
        let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        data[word].effective &= !bit;
        data[word].permitted &= !bit;
        data[word].inheritable &= !bit;
    }
    // SAFETY: as above; capset only lowers what capget returned.
    unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    dropped
}
