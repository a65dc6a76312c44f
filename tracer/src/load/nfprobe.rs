//! Netfilter hook probes: BPF_PROG_TYPE_NETFILTER programs linked on both sides of the tables
//! of PRE_ROUTING, LOCAL_IN and FORWARD (IPv4 and IPv6) inside the watched namespace. Each
//! probe ORs its bit into the CPU's NF_TRAIL slot for the skb; the kfree_skb program reads
//! the trail, so a packet seen entering a hook and never leaving it died in that hook.
//!
//! Why this module exists: aya (0.16, and its HEAD as of 2026-11) has no netfilter program
//! type, and aya-obj rejects an object with a `netfilter` section as a whole. The probes are
//! so small that they are assembled here, instruction by instruction, and loaded with the raw
//! BPF_PROG_LOAD / BPF_LINK_CREATE syscalls (prog type 32, attach type 45,
//! `{pf, hooknum, priority, flags}`; Linux >= 6.4). Each program only touches the NF_TRAIL map
//! of the main object and always returns NF_ACCEPT: it never changes a packet's fate.
//!
//! Links attach to the network namespace of the calling thread, so they are created from a
//! thread inside the watched namespace. Closing the fds detaches them; nothing is pinned.
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::{discover::netns::Netns, observe::facts::Hook};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_NETFILTER: u32 = 32;
const BPF_NETFILTER: u32 = 45;
const NFPROTO_IPV4: u32 = 2;
const NFPROTO_IPV6: u32 = 10;
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_FORWARD: u32 = 2;
/// Outside every table's priority (raw -300 … security 150): the extremes the kernel allows
/// (INT_MIN and INT_MAX themselves are reserved).
const PRIO_BEFORE: i32 = i32::MIN + 1;
const PRIO_AFTER: i32 = i32::MAX - 1;

/// Bits of the trail; the same values are decoded by `trail_hook`.
pub mod bit {
    pub const PRE_IN: u16 = 1 << 0;
    pub const PRE_OUT: u16 = 1 << 1;
    pub const LOCAL_IN_IN: u16 = 1 << 2;
    pub const LOCAL_IN_OUT: u16 = 1 << 3;
    pub const FORWARD_IN: u16 = 1 << 4;
    pub const FORWARD_OUT: u16 = 1 << 5;
}

/// (hook number, priority, bit, first probe of the path: overwrite instead of OR)
const PROBES: &[(u32, i32, u16, bool)] = &[
    (NF_INET_PRE_ROUTING, PRIO_BEFORE, bit::PRE_IN, true),
    (NF_INET_PRE_ROUTING, PRIO_AFTER, bit::PRE_OUT, false),
    (NF_INET_LOCAL_IN, PRIO_BEFORE, bit::LOCAL_IN_IN, false),
    (NF_INET_LOCAL_IN, PRIO_AFTER, bit::LOCAL_IN_OUT, false),
    (NF_INET_FORWARD, PRIO_BEFORE, bit::FORWARD_IN, false),
    (NF_INET_FORWARD, PRIO_AFTER, bit::FORWARD_OUT, false),
];

/// The netfilter hook a trail says the packet died in: entered, never left.
pub fn trail_hook(trail: u16) -> Option<Hook> {
    [
        (bit::PRE_IN, bit::PRE_OUT, Hook::PreRouting),
        (bit::LOCAL_IN_IN, bit::LOCAL_IN_OUT, Hook::LocalIn),
        (bit::FORWARD_IN, bit::FORWARD_OUT, Hook::Forward),
    ]
    .into_iter()
    .find(|(entered, left, _)| trail & entered != 0 && trail & left == 0)
    .map(|(_, _, hook)| hook)
}

/// One eBPF instruction (struct bpf_insn).
#[derive(Clone, Copy)]
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R6: u8 = 6;
const R10: u8 = 10;
const BPF_PSEUDO_MAP_FD: u8 = 1;

/// `dst = map` (a two-slot ld_imm64 with the map's fd).
fn ld_map(dst: u8, map_fd: RawFd) -> [Insn; 2] {
    [
        insn(0x18, dst, BPF_PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
    ]
}

/// The probe program (the map is NF_TRAIL, one `Trail { skb, bits }` slot per CPU):
/// ```text
///   r6 = ctx->skb                       ; struct bpf_nf_ctx { state; skb; }
///   slot = lookup(key 0); if !slot: return
///   [first probe] reset                 ; a new packet: its trail starts here
///   [others]      if slot.skb == r6: slot.bits |= BIT else reset
///   reset: slot.skb = r6, slot.bits = BIT
///   return NF_ACCEPT
/// ```
fn program(map_fd: RawFd, bit: u16, first: bool) -> Vec<Insn> {
    let bit = bit as i32;
    let reset = [
        insn(0x7b, R0, R6, 0, 0),  // *(u64 *)(r0 + 0) = r6
        insn(0x62, R0, 0, 8, bit), // *(u32 *)(r0 + 8) = bit
    ];
    let mut body = Vec::new();
    if !first {
        body.extend([
            insn(0x79, R1, R0, 0, 0),  // r1 = *(u64 *)(r0 + 0)
            insn(0x5d, R1, R6, 4, 0),  // if r1 != r6 goto +4 (reset)
            insn(0x61, R1, R0, 8, 0),  // r1 = *(u32 *)(r0 + 8)
            insn(0x44, R1, 0, 0, bit), // w1 |= bit
            insn(0x63, R0, R1, 8, 0),  // *(u32 *)(r0 + 8) = r1
            insn(0x05, 0, 0, 2, 0),    // goto +2 (the return)
        ]);
    }
    body.extend(reset);
    let mut p = vec![
        insn(0x79, R6, R1, 8, 0),  // r6 = *(u64 *)(r1 + 8)
        insn(0x62, R10, 0, -4, 0), // *(u32 *)(r10 - 4) = 0
    ];
    p.extend(ld_map(R1, map_fd));
    p.extend([
        insn(0xbf, R2, R10, 0, 0),               // r2 = r10
        insn(0x07, R2, 0, 0, -4),                // r2 += -4
        insn(0x85, 0, 0, 0, 1),                  // call bpf_map_lookup_elem
        insn(0x15, R0, 0, body.len() as i16, 0), // if r0 == 0 goto the return
    ]);
    p.extend(body);
    p.extend([
        insn(0xb7, R0, 0, 0, 1), // r0 = NF_ACCEPT
        insn(0x95, 0, 0, 0, 0),  // exit
    ]);
    p
}

fn sys_bpf(cmd: libc::c_long, attr: &mut [u64; 20]) -> std::io::Result<OwnedFd> {
    // SAFETY: attr is a zero-initialised buffer larger than every bpf_attr layout this code
    // fills; the kernel reads at most `size` bytes and requires the tail to be zero.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn put_u32(attr: &mut [u64; 20], byte_off: usize, v: u32) {
    let word = &mut attr[byte_off / 8];
    let shift = (byte_off % 8) * 8;
    *word = (*word & !(0xffff_ffffu64 << shift)) | ((v as u64) << shift);
}

fn load(insns: &[Insn], name: &str) -> Result<OwnedFd, String> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u64; 20];
    put_u32(&mut attr, 0, BPF_PROG_TYPE_NETFILTER);
    put_u32(&mut attr, 4, insns.len() as u32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    put_u32(&mut attr, 24, 1); // log_level
    put_u32(&mut attr, 28, log.len() as u32);
    attr[4] = log.as_mut_ptr() as u64;
    let mut name_bytes = [0u8; 16];
    for (d, s) in name_bytes.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    attr[6] = u64::from_le_bytes(name_bytes[..8].try_into().expect("8 bytes"));
    attr[7] = u64::from_le_bytes(name_bytes[8..].try_into().expect("8 bytes"));
    put_u32(&mut attr, 68, BPF_NETFILTER);
    sys_bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let text = String::from_utf8_lossy(&log);
        let tail: String = text
            .trim_end_matches('\0')
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .join(" / ");
        if tail.is_empty() {
            e.to_string()
        } else {
            format!("{e}: {tail}")
        }
    })
}

fn link(prog: &OwnedFd, pf: u32, hooknum: u32, priority: i32) -> std::io::Result<OwnedFd> {
    let mut attr = [0u64; 20];
    put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 8, BPF_NETFILTER);
    put_u32(&mut attr, 16, pf);
    put_u32(&mut attr, 20, hooknum);
    put_u32(&mut attr, 24, priority as u32);
    sys_bpf(BPF_LINK_CREATE, &mut attr)
}

/// How many neighbouring priorities a probe tries when its own is taken.
const PRIORITY_TRIES: i32 = 16;

/// Links `prog` as close to `priority` as the kernel allows: a netfilter BPF link is refused
/// (EBUSY) at a priority another hook of the same family and hook already holds (IPv6's
/// conntrack confirmation sits at INT_MAX - 1 once a firewall uses conntrack), so the next
/// priorities toward the middle are tried. Returns the link and the priority it got.
fn link_near(
    prog: &OwnedFd,
    pf: u32,
    hooknum: u32,
    priority: i32,
) -> std::io::Result<(OwnedFd, i32)> {
    let step = if priority < 0 { 1 } else { -1 };
    let mut last = None;
    for i in 0..PRIORITY_TRIES {
        let prio = priority + i * step;
        match link(prog, pf, hooknum, prio) {
            Ok(l) => return Ok((l, prio)),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EBUSY)))
}

/// The attached probes. Dropping it detaches them.
pub struct HookProbes {
    _programs: Vec<OwnedFd>,
    _links: Vec<OwnedFd>,
}

impl HookProbes {
    /// Loads the six probes and links them for IPv4 and IPv6 inside `ns`. The error is one
    /// sentence for the run's notes.
    pub fn attach(ns: &Netns, trail_map_fd: RawFd) -> Result<Self, String> {
        let mut programs = Vec::new();
        for (i, (_, _, bit, first)) in PROBES.iter().enumerate() {
            let fd = load(&program(trail_map_fd, *bit, *first), &format!("droptrace_nf{i}"))
                .map_err(|e| format!("the kernel refused a BPF_PROG_TYPE_NETFILTER program ({e}); netfilter links need Linux >= 6.4"))?;
            programs.push(fd);
        }
        let dup: Vec<OwnedFd> = programs
            .iter()
            .map(|p| p.try_clone())
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let links = ns
            .run_in(move || -> Result<Vec<OwnedFd>, String> {
                let mut links = Vec::new();
                for pf in [NFPROTO_IPV4, NFPROTO_IPV6] {
                    for ((hooknum, prio, _, _), prog) in PROBES.iter().zip(&dup) {
                        let (l, _) = link_near(prog, pf, *hooknum, *prio).map_err(|e| {
                            format!("BPF_LINK_CREATE netfilter (pf {pf}, hook {hooknum}, priority {prio} and the {} next toward the middle): {e}", PRIORITY_TRIES - 1)
                        })?;
                        links.push(l);
                    }
                }
                Ok(links)
            })
            .map_err(|e| e.to_string())??;
        Ok(Self {
            _programs: programs,
            _links: links,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trails_name_the_hook_entered_and_not_left() {
        use bit::*;
        assert_eq!(trail_hook(PRE_IN), Some(Hook::PreRouting));
        assert_eq!(
            trail_hook(PRE_IN | PRE_OUT | FORWARD_IN),
            Some(Hook::Forward)
        );
        assert_eq!(
            trail_hook(PRE_IN | PRE_OUT | LOCAL_IN_IN),
            Some(Hook::LocalIn)
        );
        assert_eq!(trail_hook(PRE_IN | PRE_OUT), None, "between hooks: routing");
        assert_eq!(
            trail_hook(PRE_IN | PRE_OUT | LOCAL_IN_IN | LOCAL_IN_OUT),
            None
        );
        assert_eq!(trail_hook(0), None);
    }

    #[test]
    fn jumps_land_on_the_reset_path_and_the_return() {
        let target = |p: &[Insn], at: usize| at + 1 + p[at].off as usize;
        for first in [false, true] {
            let p = program(3, bit::FORWARD_IN, first);
            // A missing slot goes straight to the return.
            let jeq = p.iter().position(|i| i.code == 0x15).unwrap();
            assert_eq!(p[target(&p, jeq)].code, 0xb7, "return sets r0");
            assert_eq!(p[target(&p, jeq)].imm, 1, "NF_ACCEPT");
            assert_eq!(p.last().unwrap().code, 0x95);
            // The reset path: the skb, then the bit, into the slot.
            let reset = p.len() - 4;
            assert_eq!((p[reset].code, p[reset + 1].code), (0x7b, 0x62));
            assert_eq!(p[reset + 1].imm, bit::FORWARD_IN as i32);
            if first {
                assert!(
                    p.iter().all(|i| i.code != 0x5d),
                    "the first probe always resets"
                );
                continue;
            }
            // Another packet in the slot: reset; the same packet: OR the bit, then return.
            let jne = p.iter().position(|i| i.code == 0x5d).unwrap();
            assert_eq!(target(&p, jne), reset);
            let ja = p.iter().position(|i| i.code == 0x05).unwrap();
            assert_eq!(target(&p, ja), p.len() - 2);
        }
    }
}
