//! The one place that inspects the running kernel: BTF, drop-reason names, symbols, tracefs
//! and privileges. Everything else asks here instead of probing on its own.
pub mod btf;
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
