//! `--snaplen`: the packet bytes past the linear part of a dropped packet. The kernel side
//! copies them with `bpf_skb_output` into the PAYLOADS perf buffers, one record per captured
//! drop, just before the drop's own event; each drain reads these buffers first, so the
//! event finds its bytes waiting. Only real packet bytes are kept: what the event's linear
//! copy has, then what the kernel copied from `skb->data` on.
use std::collections::{HashMap, VecDeque};

use aya::maps::{MapData, PerfEventArray, perf::PerfEvent, perf::PerfEventArrayBuffer};
use tracer_common::{DropEvent, HDR_LEN, PayloadMeta};

/// Payload records waiting for their event; more are a sign the events were lost.
const PENDING_MAX: usize = 4096;

/// Pages of each CPU's perf buffer (a power of two): 64 KiB holds about 60 full snaplens.
const PAGES: usize = 16;

pub struct Payloads {
    /// Holds the map the buffers are installed in; dropped with them at exit.
    _array: PerfEventArray<MapData>,
    buffers: Vec<PerfEventArrayBuffer>,
    /// Keyed by the event's (ktime_ns, location).
    pending: HashMap<(u64, u64), (i32, Vec<u8>)>,
    order: VecDeque<(u64, u64)>,
    /// Records the perf buffers lost (full), as the kernel reported.
    pub lost: u64,
    snaplen: usize,
}

impl Payloads {
    /// Opens one buffer per online CPU and installs them in the PAYLOADS array.
    pub fn open(map: aya::maps::Map, snaplen: u32) -> Result<Self, String> {
        let mut array = PerfEventArray::<MapData>::try_from(map).map_err(|e| e.to_string())?;
        let cpus = aya::util::online_cpus().map_err(|(what, e)| format!("{what}: {e}"))?;
        let mut buffers = Vec::new();
        for cpu in cpus {
            let buf = PerfEventArrayBuffer::open(cpu, PAGES)
                .map_err(|e| format!("perf buffer for CPU {cpu}: {e}"))?;
            array
                .set(cpu, &buf)
                .map_err(|e| format!("PAYLOADS[{cpu}]: {e}"))?;
            buffers.push(buf);
        }
        Ok(Self {
            _array: array,
            buffers,
            pending: HashMap::new(),
            order: VecDeque::new(),
            lost: 0,
            snaplen: snaplen as usize,
        })
    }

    /// Reads every record the kernel has written so far.
    pub fn drain(&mut self) {
        let mut got = Vec::new();
        let mut lost = 0;
        for buf in &mut self.buffers {
            buf.for_each(|event| match event {
                PerfEvent::Sample { head, tail } => {
                    let mut bytes = head.to_vec();
                    bytes.extend_from_slice(tail);
                    got.push(bytes);
                }
                PerfEvent::Lost { count } => lost += count,
            });
        }
        self.lost += lost;
        for bytes in got {
            if let Some((key, from, data)) = decode(&bytes) {
                self.insert(key, from, data);
            }
        }
    }

    fn insert(&mut self, key: (u64, u64), from: i32, data: Vec<u8>) {
        if self.pending.len() >= PENDING_MAX
            && let Some(old) = self.order.pop_front()
        {
            self.pending.remove(&old);
        }
        self.order.push_back(key);
        self.pending.insert(key, (from, data));
    }

    /// The packet's captured bytes from its IP header: the event's linear copy, extended by
    /// its payload record when one came.
    pub fn packet(&mut self, ev: &DropEvent) -> Vec<u8> {
        let linear = &ev.hdr[..(ev.hdr_len as usize).min(HDR_LEN)];
        let key = (ev.ktime_ns, ev.location);
        // The kernel writes the payload before it commits the event, so holding the event
        // means its payload is in the perf buffer: if not read yet, it is now. An event the
        // kernel sent none for (the packet was all in its linear part) reads nothing.
        let sent = (ev.hdr_len as usize) < self.snaplen && ev.len > u32::from(ev.hdr_len);
        if sent && !self.pending.contains_key(&key) {
            self.drain();
        }
        match self.pending.remove(&key) {
            Some((from, data)) => compose(linear, from, &data, self.snaplen),
            None => linear.to_vec(),
        }
    }
}

/// A record: its meta header and the bytes the kernel appended (the perf sample is padded to
/// 8 bytes, so `len` says how many are real).
fn decode(bytes: &[u8]) -> Option<((u64, u64), i32, Vec<u8>)> {
    let head = bytes.get(..size_of::<PayloadMeta>())?;
    // SAFETY: PayloadMeta is plain integers; read_unaligned copies exactly its size.
    let meta: PayloadMeta = unsafe { std::ptr::read_unaligned(head.as_ptr().cast()) };
    let data = bytes.get(size_of::<PayloadMeta>()..)?;
    let data = data.get(..meta.len as usize)?;
    Some((
        (meta.ktime_ns, meta.location),
        meta.data_from_ip,
        data.to_vec(),
    ))
}

/// The packet from its IP header, at most `snaplen` bytes: `data` was copied from
/// `skb->data`, which lies `from` bytes after the IP header (the linear copy supplies the
/// bytes in between, which are headers) or before it (bytes to skip). None of the result is
/// made up: where the two cannot be joined, the linear copy alone is the answer.
pub fn compose(linear: &[u8], from: i32, data: &[u8], snaplen: usize) -> Vec<u8> {
    let mut out = if from >= 0 {
        let from = from as usize;
        if from > linear.len() {
            return linear.to_vec();
        }
        let mut out = linear[..from].to_vec();
        out.extend_from_slice(data);
        out
    } else {
        data.get(from.unsigned_abs() as usize..)
            .unwrap_or_default()
            .to_vec()
    };
    if out.len() < linear.len() {
        return linear.to_vec();
    }
    out.truncate(snaplen.max(linear.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_after_the_ip_header_is_joined_to_the_linear_headers() {
        // The stack pulled the IP header (20 bytes): skb->data is at the TCP header.
        let packet: Vec<u8> = (0..100u8).collect();
        let linear = &packet[..40];
        let data = &packet[20..];
        assert_eq!(compose(linear, 20, data, 100), packet);
        assert_eq!(compose(linear, 20, data, 60), &packet[..60]);
    }

    #[test]
    fn data_before_the_ip_header_is_skipped_and_nothing_is_invented() {
        let packet: Vec<u8> = (0..100u8).collect();
        let mut with_mac = vec![0xee; 14];
        with_mac.extend_from_slice(&packet);
        assert_eq!(compose(&packet[..40], -14, &with_mac, 1000), packet);
        // Data that starts beyond the linear copy cannot be placed: the linear copy stands.
        assert_eq!(
            compose(&packet[..40], 60, &packet[60..], 1000),
            &packet[..40]
        );
        // A short copy never shortens what the linear part already had.
        assert_eq!(
            compose(&packet[..40], 0, &packet[..10], 1000),
            &packet[..40]
        );
    }

    #[test]
    fn a_record_is_its_meta_then_exactly_len_bytes() {
        let meta = PayloadMeta {
            ktime_ns: 7,
            location: 9,
            data_from_ip: 20,
            len: 3,
        };
        // SAFETY: a plain-integer struct viewed as its bytes.
        let mut bytes =
            unsafe { std::slice::from_raw_parts((&meta as *const PayloadMeta).cast::<u8>(), 24) }
                .to_vec();
        bytes.extend_from_slice(&[1, 2, 3, 0, 0, 0, 0, 0]);
        assert_eq!(decode(&bytes), Some(((7, 9), 20, vec![1, 2, 3])));
        assert_eq!(decode(&bytes[..26]), None);
    }
}
