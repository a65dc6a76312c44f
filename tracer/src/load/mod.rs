//! Stage 2: what the running kernel offers, and the kernel side loaded and attached to it.
pub mod ebpf;
pub mod filter;
pub mod kernel;
pub mod nfprobe;
