//! One file per kernel hook.
mod exec;
mod floor;
mod forwarding;
mod icmp_send;
mod kfree_skb;
mod nf_hook;
mod setsockopt;
mod sysctl;
mod tcp_send_reset;
