//! The drop line of a storm, written without building a record: a flow's later drops differ
//! from its first only in time, ports and length, so the first drop's line, encoded once by
//! the ordinary encoder, becomes a template with holes for those four values. Writing a
//! line is then a few copies and integer formats into the output buffer, no allocation.
use std::io::{self, Write};

use chrono::{DateTime, Utc};

use crate::observe::event::DropRecord;

/// What changes from one drop of a flow to the next.
#[derive(Clone, Copy, Debug)]
pub struct Vars {
    /// Wall-clock nanoseconds since the epoch.
    pub wall_ns: i64,
    pub sport: u16,
    pub dport: u16,
    pub len: u32,
}

/// A drop line with holes, in the printer's format.
#[derive(Clone, Debug)]
pub enum Template {
    /// The JSON line cut at the values of `time`, `sport`, `dport` and `len`.
    Json([Vec<u8>; 5]),
    Human(HumanLine),
}

/// The columns of a human drop line that do not change within a flow.
#[derive(Clone, Debug)]
pub struct HumanLine {
    /// `NETNS IFACE PROTO ` padded.
    middle: String,
    /// Addresses as printed (an IPv6 one is bracketed when a port follows).
    src: String,
    dst: String,
    /// ` FLAGS REASON LOCATION` padded.
    tail: String,
}

/// The JSON keys whose values are holes, in the order serde writes DropRecord's fields.
const HOLES: [&[u8]; 4] = [b"\"time\":\"", b",\"sport\":", b",\"dport\":", b",\"len\":"];

impl Template {
    /// The JSON template of `rec`'s line (as `serde_json::to_writer` writes it); None if
    /// the line does not have the shape expected (never, while DropRecord keeps its fields).
    pub fn json(rec: &DropRecord) -> Option<Template> {
        let text = serde_json::to_vec(rec).ok()?;
        let mut parts: [Vec<u8>; 5] = Default::default();
        let mut rest = &text[..];
        for (i, key) in HOLES.iter().enumerate() {
            let at = find(rest, key)? + key.len();
            parts[i] = rest[..at].to_vec();
            // A value ends at its closing quote (time) or the next field's comma (numbers);
            // string values elsewhere are escaped, so neither appears inside these.
            let end = at + rest[at..].iter().position(|&b| b == b'"' || b == b',')?;
            rest = &rest[end..];
        }
        parts[4] = rest.to_vec();
        parts[4].push(b'\n');
        Some(Template::Json(parts))
    }

    /// The human template of `rec`'s line (see `Printer::drop_line`).
    pub fn human(rec: &DropRecord) -> Template {
        let flags = rec
            .tcp_flags
            .as_deref()
            .or(rec.icmp.as_deref())
            .unwrap_or("-");
        let reason = match &rec.reason {
            Some(r) => r.clone(),
            None => format!("~{}", rec.reason_name()),
        };
        Template::Human(HumanLine {
            middle: format!(" {:<10} {:<10} {:<5} ", rec.netns, rec.ifname, rec.proto),
            src: rec.src.clone(),
            dst: rec.dst.clone(),
            tail: format!(" {flags:<9} {reason:<20} {}\n", rec.location),
        })
    }

    /// Writes one line. `scratch` is the caller's reusable buffer; `clock` caches the
    /// formatted second.
    pub fn write(
        &self,
        out: &mut impl Write,
        v: &Vars,
        clock: &mut TimeText,
        scratch: &mut Vec<u8>,
    ) -> io::Result<()> {
        scratch.clear();
        match self {
            Template::Json(parts) => {
                scratch.extend_from_slice(&parts[0]);
                clock.rfc3339(v.wall_ns, scratch);
                scratch.extend_from_slice(&parts[1]);
                push_int(scratch, u64::from(v.sport));
                scratch.extend_from_slice(&parts[2]);
                push_int(scratch, u64::from(v.dport));
                scratch.extend_from_slice(&parts[3]);
                push_int(scratch, u64::from(v.len));
                scratch.extend_from_slice(&parts[4]);
            }
            Template::Human(h) => {
                clock.micros(v.wall_ns, scratch);
                scratch.extend_from_slice(h.middle.as_bytes());
                let flow_at = scratch.len();
                push_endpoint(scratch, &h.src, v.sport);
                scratch.extend_from_slice(b" -> ");
                push_endpoint(scratch, &h.dst, v.dport);
                // The flow column is 45 characters wide (ASCII: addresses and digits).
                let width = scratch.len() - flow_at;
                scratch.resize(scratch.len() + 45usize.saturating_sub(width), b' ');
                scratch.extend_from_slice(h.tail.as_bytes());
            }
        }
        out.write_all(scratch)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `addr`, `addr:port` or `[addr]:port`, as `output::endpoint` writes it.
fn push_endpoint(out: &mut Vec<u8>, addr: &str, port: u16) {
    if port == 0 {
        out.extend_from_slice(addr.as_bytes());
        return;
    }
    if addr.contains(':') {
        out.push(b'[');
        out.extend_from_slice(addr.as_bytes());
        out.push(b']');
    } else {
        out.extend_from_slice(addr.as_bytes());
    }
    out.push(b':');
    push_int(out, u64::from(port));
}

/// Decimal digits of `n`, as `{}` writes them.
fn push_int(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Zero-padded digits of `n` (width `w`).
fn push_padded(out: &mut Vec<u8>, n: u64, w: usize) {
    let mut digits = [b'0'; 20];
    let mut n = n;
    for d in digits[20 - w..].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[20 - w..]);
}

/// Wall-clock text, the date and time of day formatted once per second.
#[derive(Default)]
pub struct TimeText {
    second: Option<i64>,
    /// `2026-11-25T09:41:02.`
    prefix: String,
}

impl TimeText {
    fn split(&mut self, wall_ns: i64) -> u64 {
        let (sec, nanos) = (
            wall_ns.div_euclid(1_000_000_000),
            wall_ns.rem_euclid(1_000_000_000),
        );
        if self.second != Some(sec) {
            let t = DateTime::<Utc>::from_timestamp(sec, 0).unwrap_or_default();
            self.prefix = t.format("%Y-%m-%dT%H:%M:%S.").to_string();
            self.second = Some(sec);
        }
        nanos as u64
    }

    /// `2026-11-25T09:41:02.123456789Z`, as `event::rfc3339` writes it.
    pub fn rfc3339(&mut self, wall_ns: i64, out: &mut Vec<u8>) {
        let nanos = self.split(wall_ns);
        out.extend_from_slice(self.prefix.as_bytes());
        push_padded(out, nanos, 9);
        out.push(b'Z');
    }

    /// `09:41:02.123456`, the human line's time column.
    pub fn micros(&mut self, wall_ns: i64, out: &mut Vec<u8>) {
        let nanos = self.split(wall_ns);
        out.extend_from_slice(&self.prefix.as_bytes()[11..]);
        push_padded(out, nanos / 1000, 6);
    }
}

/// A drop line of a storm: a DNATed TCP SYN that a FORWARD rule rejected. For the encoders'
/// bench (tracer/examples/encoders.rs) and the tests; time, ports and length are left for the
/// caller.
#[doc(hidden)]
pub fn sample_record() -> DropRecord {
    DropRecord {
        kind: "drop",
        time: String::new(),
        netns: 4026532285,
        ifindex: 2,
        ifname: "eth-ext".into(),
        family: "ipv4",
        proto: "tcp".into(),
        src: "198.51.100.2".into(),
        sport: 0,
        dst: "172.17.0.2".into(),
        dport: 0,
        reason: Some("NETFILTER_DROP".into()),
        inferred_reason: None,
        location: "nf_hook_slow+0x9c".into(),
        reason_code: 6,
        tcp_flags: Some("SYN".into()),
        icmp: None,
        len: 0,
        function: Some("nf_hook_slow".into()),
        hook: Some("forward".into()),
        dnat: Some(true),
        orig_dst: Some("198.51.100.1".into()),
        orig_dport: Some(5000),
        answered: Some("icmp 3/13 (admin-prohibited)".into()),
        cause: Some("firewall_drop".into()),
        container: Some("registry".into()),
        nf_hook: Some("forward"),
        nf_trail: 3,
        ktime_ns: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        observe::event,
        report::output::{Format, Printer},
    };

    fn record(src: &str, dst: &str) -> DropRecord {
        DropRecord {
            family: if src.contains(':') { "ipv6" } else { "ipv4" },
            src: src.into(),
            dst: dst.into(),
            // A name JSON must escape.
            container: Some("registry \"v2\", the, one".into()),
            ..sample_record()
        }
    }

    /// The line the ordinary printer writes for `rec` with `v`'s values.
    fn printed(rec: &DropRecord, v: &Vars, format: Format) -> String {
        let mut r = rec.clone();
        r.time = event::rfc3339(DateTime::from_timestamp_nanos(v.wall_ns));
        (r.sport, r.dport, r.len) = (v.sport, v.dport, v.len);
        let mut buf = Vec::new();
        let mut p = Printer::new(&mut buf, format);
        p.drop_line(&r).unwrap();
        let text = String::from_utf8(buf).unwrap();
        // The human printer's first line is its header.
        text.lines().last().unwrap().to_string() + "\n"
    }

    fn templated(t: &Template, v: &Vars, clock: &mut TimeText) -> String {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        t.write(&mut out, v, clock, &mut scratch).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_templated_line_is_the_line_the_printer_writes() {
        let mut clock = TimeText::default();
        let vars = [
            (1_764_150_062_123_456_789, 40000, 5000, 60),
            (1_764_150_062_000_000_001, 1, 65535, 0),
            (1_764_150_063_999_999_999, 0, 0, 1500),
            (1_764_236_400_000_000_000, 65535, 1, 4_294_967_295),
        ];
        for (src, dst) in [
            ("198.51.100.2", "172.17.0.2"),
            ("2001:db8:1::2", "fd00:17::2"),
        ] {
            let rec = record(src, dst);
            let json = Template::json(&rec).expect("template");
            let human = Template::human(&rec);
            for &(wall_ns, sport, dport, len) in &vars {
                let v = Vars {
                    wall_ns,
                    sport,
                    dport,
                    len,
                };
                assert_eq!(
                    templated(&json, &v, &mut clock),
                    printed(&rec, &v, Format::Json)
                );
                assert_eq!(
                    templated(&human, &v, &mut clock),
                    printed(&rec, &v, Format::Human)
                );
            }
        }
    }

    #[test]
    fn integers_are_written_as_display_writes_them() {
        for n in [0u64, 7, 10, 99, 100, 65535, u64::MAX] {
            let mut out = Vec::new();
            push_int(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }
}
