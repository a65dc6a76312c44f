//! tracefs: where classic tracepoints live. A fresh machine may boot without it mounted
//! (measured on the build machine); droptrace mounts it only when the fallback needs it.
use std::path::PathBuf;

use crate::error::Error;

/// Where tracefs is usually mounted, the preferred place first (the inspector finds it).
pub const CANDIDATES: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Mounts tracefs at /sys/kernel/tracing in a private mount namespace of the calling thread:
/// the host's mounts are untouched and nothing is left to unmount, even if droptrace is killed
/// (the namespace goes away with it). Work that needs tracefs must run on the same thread.
pub fn mount_private() -> Result<PathBuf, Error> {
    let fail = || Error::NoTracefs(std::io::Error::last_os_error().to_string());
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL in constant");
    // SAFETY: unshare(CLONE_NEWNS) affects only this thread's mount namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(fail());
    }
    let root = c("/");
    // SAFETY: valid NUL-terminated path; MS_REC|MS_PRIVATE keeps the mount below from
    // propagating back to the host.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(fail());
    }
    let (src, dst, fstype) = (c("tracefs"), c(CANDIDATES[0]), c("tracefs"));
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(fail());
    }
    Ok(PathBuf::from(CANDIDATES[0]))
}

/// Offset of each named field in a tracepoint's `format` file.
pub fn field_offsets(format: &str, fields: &[&str]) -> Option<Vec<u32>> {
    fields
        .iter()
        .map(|want| {
            format.lines().find_map(|line| {
                let line = line.trim();
                let decl = line.strip_prefix("field:")?.split(';').next()?;
                let name = decl.split_whitespace().last()?.trim_start_matches('*');
                if name != *want {
                    return None;
                }
                let off = line.split("offset:").nth(1)?.split(';').next()?;
                off.trim().parse().ok()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured with `cat /sys/kernel/tracing/events/skb/kfree_skb/format` on Linux 6.18.44.
    const KFREE_SKB_FORMAT: &str = include_str!("testdata/kfree_skb-6.18.format");

    #[test]
    fn kfree_skb_format_offsets_are_read() {
        let offs = field_offsets(KFREE_SKB_FORMAT, &["skbaddr", "location", "reason"]).unwrap();
        assert_eq!(offs, vec![8, 16, 36]);
    }

    #[test]
    fn a_missing_field_gives_none() {
        assert!(field_offsets(KFREE_SKB_FORMAT, &["skbaddr", "nope"]).is_none());
    }
}
