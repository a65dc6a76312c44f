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
                // An array field (`__u8 dst[4]`) by its name alone.
                let name = name.split('[').next()?;
                if name != *want {
                    return None;
                }
                let off = line.split("offset:").nth(1)?.split(';').next()?;
                off.trim().parse().ok()
            })
        })
        .collect()
}

/// The layout of a classic fib tracepoint's record (`fib:fib_table_lookup`,
/// `fib6:fib6_table_lookup`); None without the fields every lookup needs.
pub fn fib_record(format: &str) -> Option<tracer_common::FibRecord> {
    let at = |name: &str| field_offsets(format, &[name]).map_or(tracer_common::ABSENT, |o| o[0]);
    let record = tracer_common::FibRecord {
        tb_id: at("tb_id"),
        err: at("err"),
        iif: at("iif"),
        src: at("src"),
        dst: at("dst"),
        sport: at("sport"),
        dport: at("dport"),
        proto: at("proto"),
        name: at("name"),
        name_data_loc: u32::from(
            format
                .lines()
                .any(|l| l.contains("__data_loc") && l.contains(" name;")),
        ),
    };
    let needed = [
        record.tb_id,
        record.err,
        record.iif,
        record.dst,
        record.name,
    ];
    (!needed.contains(&tracer_common::ABSENT)).then_some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fib_records_of_6_18_are_read_from_their_formats() {
        let v4 = fib_record(include_str!("testdata/fib_table_lookup-6.18.format")).unwrap();
        assert_eq!((v4.tb_id, v4.err, v4.iif), (8, 12, 20));
        assert_eq!((v4.src, v4.dst, v4.sport, v4.dport), (28, 32, 56, 58));
        assert_eq!((v4.proto, v4.name, v4.name_data_loc), (24, 60, 0));
        let v6 = fib_record(include_str!("testdata/fib6_table_lookup-6.18.format")).unwrap();
        assert_eq!((v6.src, v6.dst, v6.sport, v6.dport), (31, 47, 64, 66));
        assert_eq!((v6.proto, v6.name), (68, 70));
        assert_eq!(fib_record(KFREE_SKB_FORMAT), None);
    }

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
