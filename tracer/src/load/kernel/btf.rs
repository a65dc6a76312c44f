//! Facts read from the running kernel's BTF (/sys/kernel/btf/vmlinux): the struct field
//! offsets the eBPF programs need, and the names of `enum skb_drop_reason`, which change from
//! one kernel version to the next and so are never compiled in.
use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    path::Path,
};

use btf_rs::{Btf, BtfType, Type};
use tracer_common::{ABSENT, KernelOffsets};

use crate::error::Error;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Where nf_conntrack's types live when it is a module (distribution kernels); built-in
/// conntrack (as on the build machine) has them in vmlinux.
const CONNTRACK_MODULE_BTF: &str = "/sys/kernel/btf/nf_conntrack";

/// The running kernel's BTF, parsed once.
pub struct KernelBtf {
    btf: Btf,
    conntrack: Option<Btf>,
    /// Structs found by name, per object (vmlinux, conntrack): a lookup by name scans every
    /// type of the mapped BTF (~2 ms), and the offsets ask for the same few structs ~45 times.
    structs: [StructCache; 2],
}

type StructCache = RefCell<HashMap<String, Option<btf_rs::Struct>>>;

impl KernelBtf {
    pub fn from_sys() -> Result<Self, Error> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, Error> {
        if !path.exists() {
            return Err(Error::NoBtf(path.display().to_string()));
        }
        // Mapped, not parsed whole: parsing all of vmlinux BTF up front costs ~40 MB of heap,
        // more than the rest of droptrace. Kernels that cannot mmap sysfs BTF (< 6.16) fall
        // back to parsing.
        let btf = Btf::from_file_with_backend(path, btf_rs::Backend::Mmap)
            .or_else(|_| Btf::from_file(path))
            .map_err(|err| Error::BadBtf {
                path: path.display().to_string(),
                reason: err.to_string(),
            })?;
        let conntrack = Path::new(CONNTRACK_MODULE_BTF)
            .exists()
            .then(|| Btf::from_split_file(CONNTRACK_MODULE_BTF, &btf).ok())
            .flatten();
        Ok(Self {
            btf,
            conntrack,
            structs: Default::default(),
        })
    }

    /// Byte offset of `path` (e.g. `["__sk_common", "skc_net"]`) inside `struct name`,
    /// looking through anonymous structs and unions on the way; an array member is entered
    /// at its first element.
    pub fn field_offset(&self, name: &str, path: &[&str]) -> Result<u32, Error> {
        Lookup(&self.btf, &self.structs[0]).field_offset(name, path)
    }

    /// An offset only an optional hook needs: ABSENT when this kernel lacks it (the hook then
    /// skips the read).
    fn optional(&self, name: &str, path: &[&str]) -> u32 {
        self.field_offset(name, path).unwrap_or(ABSENT)
    }

    /// Like `field_offset`, for a type that may live in the nf_conntrack module's BTF.
    /// ABSENT when the kernel has no conntrack at all: droptrace then works without it.
    fn conntrack_offset(&self, name: &str, path: &[&str]) -> u32 {
        let module = self
            .conntrack
            .as_ref()
            .and_then(|m| Lookup(m, &self.structs[1]).field_offset(name, path).ok());
        module
            .or_else(|| self.field_offset(name, path).ok())
            .unwrap_or(ABSENT)
    }

    /// Every field offset the programs use.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, Error> {
        let orig_dst = ["tuplehash", "tuple", "dst"];
        Ok(KernelOffsets {
            skb_head: self.field_offset("sk_buff", &["head"])?,
            skb_network_header: self.field_offset("sk_buff", &["network_header"])?,
            skb_protocol: self.field_offset("sk_buff", &["protocol"])?,
            skb_dev: self.field_offset("sk_buff", &["dev"])?,
            skb_iif: self.field_offset("sk_buff", &["skb_iif"])?,
            skb_len: self.field_offset("sk_buff", &["len"])?,
            skb_tail: self.field_offset("sk_buff", &["tail"])?,
            skb_data: self.field_offset("sk_buff", &["data"])?,
            skb_sk: self.field_offset("sk_buff", &["sk"])?,
            dev_ifindex: self.field_offset("net_device", &["ifindex"])?,
            dev_nd_net: self.field_offset("net_device", &["nd_net"])?,
            sk_net: self.field_offset("sock", &["__sk_common", "skc_net"])?,
            net_ns_inum: self.field_offset("net", &["ns", "inum"])?,
            tp_skbaddr: 0,
            tp_location: 0,
            tp_reason: 0,
            skb_nfct: self.field_offset("sk_buff", &["_nfct"]).unwrap_or(ABSENT),
            ct_status: self.conntrack_offset("nf_conn", &["status"]),
            ct_orig_daddr: self.conntrack_offset("nf_conn", &[&orig_dst[..], &["u3"]].concat()),
            ct_orig_dport: self
                .conntrack_offset("nf_conn", &[&orig_dst[..], &["u", "all"]].concat()),
            task_real_parent: self.field_offset("task_struct", &["real_parent"])?,
            task_tgid: self.field_offset("task_struct", &["tgid"])?,
            task_comm: self.field_offset("task_struct", &["comm"])?,
            task_nsproxy: self.field_offset("task_struct", &["nsproxy"])?,
            task_mm: self.field_offset("task_struct", &["mm"])?,
            nsproxy_net_ns: self.field_offset("nsproxy", &["net_ns"])?,
            mm_arg_start: self.field_offset("mm_struct", &["arg_start"])?,
            mm_arg_end: self.field_offset("mm_struct", &["arg_end"])?,
            nf_state_hook: self
                .field_offset("nf_hook_state", &["hook"])
                .unwrap_or(ABSENT),
            fl4_iif: self.optional("flowi4", &["__fl_common", "flowic_iif"]),
            fl4_proto: self.optional("flowi4", &["__fl_common", "flowic_proto"]),
            fl4_saddr: self.optional("flowi4", &["saddr"]),
            fl4_daddr: self.optional("flowi4", &["daddr"]),
            fl4_sport: self.optional("flowi4", &["uli", "ports", "sport"]),
            fl4_dport: self.optional("flowi4", &["uli", "ports", "dport"]),
            fib_tb_id: self.optional("fib_table", &["tb_id"]),
            nhc_dev: self.optional("fib_nh_common", &["nhc_dev"]),
            dev_name: self.optional("net_device", &["name"]),
            fl6_iif: self.optional("flowi6", &["__fl_common", "flowic_iif"]),
            fl6_proto: self.optional("flowi6", &["__fl_common", "flowic_proto"]),
            fl6_saddr: self.optional("flowi6", &["saddr"]),
            fl6_daddr: self.optional("flowi6", &["daddr"]),
            fl6_sport: self.optional("flowi6", &["uli", "ports", "sport"]),
            fl6_dport: self.optional("flowi6", &["uli", "ports", "dport"]),
            fib6_res_nh: self.optional("fib6_result", &["nh"]),
            fib6_res_type: self.optional("fib6_result", &["fib6_type"]),
            fib6_tb_id: self.optional("fib6_table", &["tb6_id"]),
            fib6_nh_common: self.optional("fib6_nh", &["nh_common"]),
            dev_priv_flags: self.optional("net_device", &["priv_flags"]),
            iff_bridge_port: self
                .enum_value("netdev_priv_flags", "IFF_BRIDGE_PORT")
                .unwrap_or(0),
        })
    }

    /// The value of `member` in `enum name`, when this kernel has both.
    pub fn enum_value(&self, name: &str, member: &str) -> Option<u32> {
        let types = self.btf.resolve_types_by_name(name).ok()?;
        let named = |m: &dyn BtfType| self.btf.resolve_name(m).is_ok_and(|n| n == member);
        // An enum with a member past 32 bits is an ENUM64 (6.1's netdev_priv_flags).
        types.into_iter().find_map(|t| match t {
            Type::Enum(e) => e.members.iter().find(|m| named(*m)).map(|m| m.val()),
            Type::Enum64(e) => e
                .members
                .iter()
                .find(|m| named(*m))
                .and_then(|m| u32::try_from(m.val()).ok()),
            _ => None,
        })
    }

    /// `enum skb_drop_reason` of this kernel: value → name as the kernel spells it.
    pub fn drop_reasons(&self) -> DropReasons {
        let members = self
            .btf
            .resolve_types_by_name("skb_drop_reason")
            .ok()
            .and_then(|types| {
                types.into_iter().find_map(|t| match t {
                    Type::Enum(e) => Some(e.members),
                    _ => None,
                })
            });
        let mut names = BTreeMap::new();
        // Before Linux 5.17 there is no such enum: no reason is reported (see `reported`).
        for member in members.into_iter().flatten() {
            if let Ok(name) = self.btf.resolve_name(&member) {
                names.insert(member.val(), name);
            }
        }
        DropReasons { names }
    }

    /// Whether the kernel defines a type called `name` (a struct, enum, typedef…).
    pub fn has_type(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .is_ok_and(|types| !types.is_empty())
    }

    /// The arguments of tracepoint `name` as this kernel declares them, as C type names
    /// without qualifiers (`struct sk_buff *`, `enum skb_drop_reason`). The kernel describes
    /// each BTF-typed tracepoint as `typedef void (*btf_trace_<name>)(void *, ARGS…)`; None when
    /// it has no such tracepoint. Prototypes change between releases (tcp_send_reset gained
    /// its reason in 6.10, kfree_skb its reason in 5.17): programs are chosen from this.
    pub fn tracepoint_args(&self, name: &str) -> Option<Vec<String>> {
        let typedef = self
            .btf
            .resolve_types_by_name(&format!("btf_trace_{name}"))
            .ok()?
            .into_iter()
            .find(|t| matches!(t, Type::Typedef(_)))?;
        let Type::Typedef(typedef) = typedef else {
            return None;
        };
        let Type::Ptr(ptr) = self.btf.resolve_chained_type(&typedef).ok()? else {
            return None;
        };
        let Type::FuncProto(proto) = self.btf.resolve_chained_type(&ptr).ok()? else {
            return None;
        };
        // The first parameter is the tracepoint's private `void *__data`, not an argument.
        let args = proto.parameters.iter().skip(1);
        args.map(|p| self.c_type(p.get_type_id()?)).collect()
    }

    /// A type as C spells it, qualifiers dropped: enough to tell one prototype from another.
    fn c_type(&self, id: u32) -> Option<String> {
        let ty = self.btf.resolve_type_by_id(id).ok()?;
        let name = |t: &dyn btf_rs::BtfType| self.btf.resolve_name(t).unwrap_or_default();
        Some(match &ty {
            Type::Void => "void".to_string(),
            Type::Ptr(p) => format!("{} *", self.c_type(p.get_type_id().unwrap_or(0))?),
            Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => {
                self.c_type(t.get_type_id().unwrap_or(0))?
            }
            Type::TypeTag(t) => self.c_type(t.get_type_id()?)?,
            Type::Struct(s) => format!("struct {}", name(s)),
            Type::Union(u) => format!("union {}", name(u)),
            Type::Enum(e) => format!("enum {}", name(e)),
            Type::Enum64(e) => format!("enum {}", name(e)),
            Type::Fwd(f) => format!("struct {}", name(f)),
            Type::Typedef(t) => name(t),
            Type::Int(i) => name(i),
            Type::Float(f) => name(f),
            Type::FuncProto(_) => "function".to_string(),
            _ => "?".to_string(),
        })
    }
}

/// Type lookups over one BTF object (vmlinux, or a module's split BTF), with its structs
/// found so far.
struct Lookup<'a>(&'a Btf, &'a StructCache);

impl Lookup<'_> {
    fn field_offset(&self, name: &str, path: &[&str]) -> Result<u32, Error> {
        let missing = || Error::MissingField {
            field: format!("{name}.{}", path.join(".")),
        };
        let mut current = self.named_struct(name).ok_or_else(missing)?;
        let mut bits = 0u32;
        for (i, field) in path.iter().enumerate() {
            let (offset, type_id) = self.find_member(&current, field).ok_or_else(missing)?;
            bits += offset;
            if i + 1 < path.len() {
                current = self.struct_behind(type_id).ok_or_else(missing)?;
            }
        }
        if !bits.is_multiple_of(8) {
            // A bitfield: the programs read whole bytes only.
            return Err(missing());
        }
        Ok(bits / 8)
    }

    fn named_struct(&self, name: &str) -> Option<btf_rs::Struct> {
        if let Some(found) = self.1.borrow().get(name) {
            return found.clone();
        }
        let found = self.find_struct(name);
        self.1.borrow_mut().insert(name.to_string(), found.clone());
        found
    }

    fn find_struct(&self, name: &str) -> Option<btf_rs::Struct> {
        self.0
            .resolve_types_by_name(name)
            .ok()?
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
    }

    /// The struct or union a member's type id designates, through typedefs, qualifiers and
    /// arrays (element 0).
    fn struct_behind(&self, mut id: u32) -> Option<btf_rs::Struct> {
        for _ in 0..16 {
            match self.0.resolve_type_by_id(id).ok()? {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(t) => id = t.get_type_id()?,
                Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => id = t.get_type_id()?,
                Type::TypeTag(t) => id = t.get_type_id()?,
                Type::Array(a) => id = a.get_type_id()?,
                _ => return None,
            }
        }
        None
    }

    /// (bit offset, type id) of a member, descending into anonymous members.
    fn find_member(&self, st: &btf_rs::Struct, field: &str) -> Option<(u32, u32)> {
        for member in &st.members {
            let name = self.0.resolve_name(member).unwrap_or_default();
            let type_id = member.get_type_id()?;
            if name == field {
                return Some((member.bit_offset(), type_id));
            }
            if name.is_empty()
                && let Some(inner) = self.struct_behind(type_id)
                && let Some((offset, id)) = self.find_member(&inner, field)
            {
                return Some((member.bit_offset() + offset, id));
            }
        }
        None
    }
}

/// Names of the kernel's drop reasons, keyed by value.
#[derive(Clone, Debug, Default)]
pub struct DropReasons {
    names: BTreeMap<u32, String>,
}

/// Frees that are not drops: a packet delivered, or a socket's queue purged on close.
/// `--include-teardown` keeps the purge reasons.
const NOT_DROPS: &[&str] = &["SKB_NOT_DROPPED_YET", "SKB_CONSUMED"];
const TEARDOWN: &[&str] = &["QUEUE_PURGE", "SOCKET_CLOSE"];
/// The name counters and summaries give drops on a kernel that reports no reason.
pub const UNREPORTED: &str = "UNREPORTED";

impl DropReasons {
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (u32, &'a str)>) -> Self {
        Self {
            names: pairs.into_iter().map(|(v, n)| (v, n.to_string())).collect(),
        }
    }

    /// Whether this kernel reports drop reasons at all (`enum skb_drop_reason`, Linux 5.17).
    pub fn reported(&self) -> bool {
        !self.names.is_empty()
    }

    /// The reason's short name: `NO_SOCKET` for SKB_DROP_REASON_NO_SOCKET; values the kernel
    /// does not name (subsystem reasons) as `UNKNOWN_0x…`; `UNREPORTED` on a kernel without
    /// reasons.
    pub fn name(&self, value: u32) -> String {
        if value == tracer_common::REASON_UNREPORTED {
            return UNREPORTED.to_string();
        }
        match self.names.get(&value) {
            Some(full) => full
                .strip_prefix("SKB_DROP_REASON_")
                .unwrap_or(full)
                .to_string(),
            None => format!("UNKNOWN_{value:#x}"),
        }
    }

    pub fn value(&self, short: &str) -> Option<u32> {
        self.names
            .iter()
            .find(|(_, full)| {
                full.as_str() == short || full.strip_prefix("SKB_DROP_REASON_") == Some(short)
            })
            .map(|(v, _)| *v)
    }

    /// Values the kernel filter skips.
    pub fn ignored(&self, include_teardown: bool) -> Vec<u32> {
        let mut names: Vec<&str> = NOT_DROPS.to_vec();
        if !include_teardown {
            names.extend_from_slice(TEARDOWN);
        }
        names.iter().filter_map(|n| self.value(n)).collect()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> Option<KernelBtf> {
        KernelBtf::from_sys().ok()
    }

    #[test]
    fn a_bridge_port_is_told_by_its_priv_flags() {
        let btf = kernel().expect("the tests need this kernel's BTF at /sys/kernel/btf/vmlinux");
        // IFF_BRIDGE_PORT has been 1 << 9 since 2.6 (an ENUM64 member on 6.1).
        assert_eq!(
            btf.enum_value("netdev_priv_flags", "IFF_BRIDGE_PORT"),
            Some(512)
        );
        assert_eq!(btf.enum_value("netdev_priv_flags", "NO_SUCH_FLAG"), None);
        let offsets = btf.kernel_offsets().expect("offsets");
        assert_ne!(offsets.dev_priv_flags, ABSENT);
        assert_eq!(offsets.iff_bridge_port, 512);
    }

    #[test]
    fn tracepoint_prototypes_are_read_as_c_types() {
        let btf = kernel().expect("the tests need this kernel's BTF at /sys/kernel/btf/vmlinux");
        let kfree = btf.tracepoint_args("kfree_skb").expect("kfree_skb");
        assert_eq!(
            kfree[..3],
            ["struct sk_buff *", "void *", "enum skb_drop_reason"],
            "kfree_skb's first arguments on every kernel with drop reasons"
        );
        let exec = btf.tracepoint_args("sched_process_exec").expect("exec");
        assert_eq!(
            exec,
            ["struct task_struct *", "pid_t", "struct linux_binprm *"]
        );
        assert_eq!(btf.tracepoint_args("no_such_tracepoint_here"), None);
    }

    #[test]
    fn offsets_of_this_kernel_are_found_and_plausible() {
        let Some(btf) = kernel() else {
            eprintln!("no {VMLINUX_BTF}: skipped");
            return;
        };
        let off = btf.kernel_offsets().expect("offsets");
        // sk_buff.head comes after the list/dev/cb[48] members on every kernel since 4.x.
        assert!(off.skb_head > 48, "sk_buff.head at {}", off.skb_head);
        assert!(off.skb_network_header > 0 && off.skb_network_header < 512);
        assert_ne!(off.skb_dev, off.skb_sk);
        assert!(off.net_ns_inum > 0);
        // Conntrack is built in on the build machine; on module kernels it comes from the
        // module's split BTF. Either way the DNAT bit and original tuple must be readable.
        assert_ne!(off.skb_nfct, ABSENT);
        assert_ne!(off.ct_status, ABSENT);
        assert_ne!(off.ct_orig_daddr, ABSENT);
        assert_eq!(
            off.ct_orig_dport,
            off.ct_orig_daddr + 16,
            "u.all follows u3 (16 bytes)"
        );
    }

    #[test]
    fn drop_reason_names_come_from_btf() {
        let Some(btf) = kernel() else {
            return;
        };
        let reasons = btf.drop_reasons();
        assert!(reasons.reported(), "this kernel has enum skb_drop_reason");
        let no_socket = reasons.value("NO_SOCKET").expect("NO_SOCKET");
        assert_eq!(reasons.name(no_socket), "NO_SOCKET");
        assert!(reasons.value("NETFILTER_DROP").is_some());
        assert!(reasons.value("IP_INADDRERRORS").is_some());
        let ignored = reasons.ignored(false);
        assert!(ignored.contains(&reasons.value("SKB_CONSUMED").unwrap()));
        assert!(ignored.contains(&reasons.value("QUEUE_PURGE").unwrap()));
        assert!(
            !reasons
                .ignored(true)
                .contains(&reasons.value("QUEUE_PURGE").unwrap())
        );
    }

    #[test]
    fn unknown_reason_values_are_named_not_dropped() {
        let reasons = DropReasons::from_pairs([(2, "SKB_DROP_REASON_NOT_SPECIFIED")]);
        assert_eq!(reasons.name(2), "NOT_SPECIFIED");
        assert_eq!(reasons.name(0x10001), "UNKNOWN_0x10001");
    }

    #[test]
    fn missing_field_is_a_clear_error() {
        let Some(btf) = kernel() else {
            return;
        };
        let err = btf.field_offset("sk_buff", &["no_such_field"]).unwrap_err();
        assert!(err.to_string().contains("sk_buff.no_such_field"), "{err}");
    }
}
