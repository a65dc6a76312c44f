//! One file per kernel hook.
mod icmp_send;
mod kfree_skb;
mod tcp_send_reset;
