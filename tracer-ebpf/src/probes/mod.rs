//! One file per kernel hook.
mod kfree_skb;
