//! Kernel text addresses → `symbol+0xoff`, from /proc/kallsyms.
use std::fs;

/// Sorted kernel text symbols. Names live in one buffer (about 150 000 symbols: a String
/// each would cost several megabytes of small allocations).
#[derive(Debug, Default)]
pub struct Symbols {
    /// (address, start, len into `names`), sorted by address.
    text: Vec<(u64, u32, u32)>,
    names: String,
}

/// Symbols of the running kernel, looked up on demand: drops come from a few dozen
/// locations, so scanning /proc/kallsyms once per new location costs far less memory than
/// holding the whole table (≈10 MB) for the whole run.
#[derive(Debug, Default)]
pub struct LiveSymbols {
    cache: std::collections::HashMap<u64, Option<(u64, String)>>,
    /// [start, end) of the functions drops usually come from, found while the programs
    /// loaded: the first verdict need not wait for a scan (≈30 ms).
    known: Vec<(u64, u64, String)>,
}

impl LiveSymbols {
    /// Functions whose place in kernel text is already known: (name, [start, end)).
    pub fn with_known(known: impl IntoIterator<Item = (String, (u64, u64))>) -> Self {
        Self {
            cache: Default::default(),
            known: known.into_iter().map(|(n, (s, e))| (s, e, n)).collect(),
        }
    }

    fn lookup(&mut self, addr: u64) -> Option<(u64, String)> {
        if let Some(hit) = self.cache.get(&addr) {
            return hit.clone();
        }
        if let Some((start, _, name)) = self.known.iter().find(|(s, e, _)| *s <= addr && addr < *e)
        {
            return Some((*start, name.clone()));
        }
        let found = scan_kallsyms(addr);
        if self.cache.len() < 4096 {
            self.cache.insert(addr, found.clone());
        }
        found
    }

    /// `name+0xoff`, or the raw address.
    pub fn resolve(&mut self, addr: u64) -> String {
        match self.lookup(addr) {
            Some((start, name)) if addr != 0 => format!("{name}+{:#x}", addr - start),
            _ => format!("{addr:#x}"),
        }
    }

    pub fn function(&mut self, addr: u64) -> Option<String> {
        self.lookup(addr).map(|(_, name)| name)
    }
}

/// The text symbol containing `addr`: the highest start address at or below it.
fn scan_kallsyms(addr: u64) -> Option<(u64, String)> {
    use std::io::BufRead;
    if addr == 0 {
        return None;
    }
    let file = fs::File::open("/proc/kallsyms").ok()?;
    let mut best: Option<(u64, String)> = None;
    for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
        let mut parts = line.split_ascii_whitespace();
        let (Some(a), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if !matches!(kind, "t" | "T" | "w" | "W") {
            continue;
        }
        let Ok(start) = u64::from_str_radix(a, 16) else {
            continue;
        };
        if start != 0 && start <= addr && best.as_ref().is_none_or(|(b, _)| start > *b) {
            best = Some((start, name.to_string()));
        }
    }
    best
}

/// Where each named function lies in kernel text: its name there (a compiler's clone,
/// `ip_rcv_finish_core.constprop.0`, stands for the function) and [start, end), from its
/// symbol to the next text symbol; None when absent or addresses are hidden. One streaming
/// pass over /proc/kallsyms (≈10 MB: holding it would double droptrace's peak memory), ended
/// once every function is placed.
pub fn function_places(names: &[&str]) -> Vec<Option<(String, (u64, u64))>> {
    use std::io::BufRead;
    let Ok(file) = fs::File::open("/proc/kallsyms") else {
        return vec![None; names.len()];
    };
    let lines = std::io::BufReader::new(file).lines().map_while(Result::ok);
    places_of(lines, names)
}

/// A kallsyms line's text symbol: (address, name); None for data, hidden addresses, junk.
fn text_symbol(line: &str) -> Option<(u64, &str)> {
    let mut parts = line.split_ascii_whitespace();
    let (addr, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
    let addr = u64::from_str_radix(addr, 16).ok()?;
    (addr != 0 && matches!(kind, "t" | "T" | "w" | "W")).then_some((addr, name))
}

/// kallsyms lists the kernel's text in address order: a function ends at the first text
/// symbol after it with a higher address.
fn places_of(
    lines: impl Iterator<Item = String>,
    names: &[&str],
) -> Vec<Option<(String, (u64, u64))>> {
    // Per name: (its symbol's name and start, once seen; its end, once the next is seen).
    type Seen = (Option<(String, u64)>, Option<u64>);
    let mut places: Vec<Seen> = vec![(None, None); names.len()];
    for line in lines {
        let Some((addr, name)) = text_symbol(&line) else {
            continue;
        };
        for (start, end) in places.iter_mut() {
            if end.is_none() && start.as_ref().is_some_and(|(_, s)| addr > *s) {
                *end = Some(addr);
            }
        }
        // The compiler's clones (`.constprop.0`, `.isra.0`) count as the function; its split
        // cold part (`.cold`, elsewhere in the text) does not.
        let base = match name.split_once('.') {
            Some((base, rest)) if !rest.starts_with("cold") => base,
            _ => name,
        };
        if let Some(i) = names.iter().position(|n| *n == name || *n == base) {
            places[i].0.get_or_insert((name.to_string(), addr));
        }
        if places.iter().all(|(s, e)| s.is_some() && e.is_some()) {
            break;
        }
    }
    places
        .into_iter()
        .map(|(s, e)| {
            let (name, start) = s?;
            Some((name, (start, e?)))
        })
        .collect()
}

impl Symbols {
    /// Reads /proc/kallsyms. Without root (kptr_restrict) every address reads as zero; the
    /// result is then empty and locations are printed as raw addresses.
    pub fn from_proc() -> Self {
        fs::read_to_string("/proc/kallsyms")
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    /// Parses kallsyms text; lines that do not have the `ADDR TYPE NAME [module]` shape are
    /// skipped, never fatal.
    pub fn parse(text: &str) -> Self {
        let mut names = String::new();
        let mut syms: Vec<(u64, u32, u32)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_ascii_whitespace();
                let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
                let kind = parts.next()?;
                let name = parts.next()?;
                let is_text = matches!(kind, "t" | "T" | "w" | "W");
                if addr == 0 || !is_text {
                    return None;
                }
                let start = names.len() as u32;
                names.push_str(name);
                Some((addr, start, name.len() as u32))
            })
            .collect();
        syms.sort_by_key(|(addr, _, _)| *addr);
        names.shrink_to_fit();
        syms.shrink_to_fit();
        Self { text: syms, names }
    }

    fn name_at(&self, i: usize) -> Option<(u64, &str)> {
        let (addr, start, len) = *self.text.get(i)?;
        let name = self.names.get(start as usize..(start + len) as usize)?;
        Some((addr, name))
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// `name+0xoff` of the symbol containing `addr`, or the raw address.
    pub fn resolve(&self, addr: u64) -> String {
        let idx = self.text.partition_point(|(a, _, _)| *a <= addr);
        match idx.checked_sub(1).and_then(|i| self.name_at(i)) {
            Some((start, name)) if addr != 0 => format!("{name}+{:#x}", addr - start),
            _ => format!("{addr:#x}"),
        }
    }

    /// The function name alone (no offset), for matching locations such as `ip_error`.
    pub fn function(&self, addr: u64) -> Option<&str> {
        let idx = self.text.partition_point(|(a, _, _)| *a <= addr);
        idx.checked_sub(1)
            .and_then(|i| self.name_at(i))
            .map(|(_, name)| name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff81a00000 t ip_error
ffffffff81a00100 T ip_forward
0000000000000000 A fixed_percpu_data
ffffffff81b00000 D some_data
garbage line
ffffffffc0000000 t nft_do_chain\t[nf_tables]
";

    #[test]
    fn addresses_resolve_to_symbol_and_offset() {
        let syms = Symbols::parse(SAMPLE);
        assert_eq!(syms.resolve(0xffffffff81a0001b), "ip_error+0x1b");
        assert_eq!(syms.resolve(0xffffffff81a00100), "ip_forward+0x0");
        assert_eq!(syms.resolve(0xffffffffc0000042), "nft_do_chain+0x42");
        assert_eq!(syms.function(0xffffffff81a0001b), Some("ip_error"));
    }

    #[test]
    fn a_function_spans_up_to_the_next_text_symbol() {
        assert_eq!(
            places_of(
                SAMPLE.lines().map(String::from),
                &["ip_error", "nft_do_chain", "absent", "some_data"]
            ),
            vec![
                Some((
                    "ip_error".to_string(),
                    (0xffffffff81a00000, 0xffffffff81a00100)
                )),
                None,
                None,
                None
            ]
        );
    }

    #[test]
    fn a_functions_clone_is_the_function_and_its_cold_part_is_not() {
        let sample = "\
ffffffff81000100 t ip_rcv_finish_core.cold
ffffffff81a00000 t ip_rcv_finish_core.constprop.0
ffffffff81a00200 T ip_forward
";
        assert_eq!(
            places_of(sample.lines().map(String::from), &["ip_rcv_finish_core"]),
            vec![Some((
                "ip_rcv_finish_core.constprop.0".to_string(),
                (0xffffffff81a00000, 0xffffffff81a00200)
            ))]
        );
        let mut live = LiveSymbols::with_known([(
            "ip_rcv_finish_core.constprop.0".to_string(),
            (0xffffffff81a00000, 0xffffffff81a00200),
        )]);
        assert_eq!(
            live.resolve(0xffffffff81a00010),
            "ip_rcv_finish_core.constprop.0+0x10"
        );
    }

    #[test]
    fn addresses_below_every_symbol_stay_raw() {
        let syms = Symbols::parse(SAMPLE);
        assert_eq!(syms.resolve(0x1000), "0x1000");
        assert_eq!(
            Symbols::default().resolve(0xffffffff81a0001b),
            "0xffffffff81a0001b"
        );
    }

    #[test]
    fn the_real_kallsyms_names_kfree_skb_reason() {
        let syms = Symbols::from_proc();
        if syms.is_empty() {
            eprintln!("kallsyms addresses hidden (not root?): skipped");
            return;
        }
        assert!((0..syms.text.len()).any(|i| {
            matches!(
                syms.name_at(i),
                Some((_, "kfree_skb_reason" | "sk_skb_reason_drop"))
            )
        }));
    }
}
