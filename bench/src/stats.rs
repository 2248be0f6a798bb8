//! Percentiles over recorded samples, a mergeable latency histogram, and the clock that
//! timestamps events across processes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Appends one `key  value` row of a report table.
pub fn row(out: &mut String, key: &str, value: String) {
    out.push_str(&format!("{key:<26} {value}\n"));
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    /// `p50 …, p99 …, p99.9 …, max …` in milliseconds, with `decimals` digits.
    pub fn describe_ms(&self, decimals: usize) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "p50 {:.d$} ms, p99 {:.d$} ms, p99.9 {:.d$} ms, max {:.d$} ms",
            ms(self.p50),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            d = decimals
        )
    }
}

/// Sorts `samples` and reads the percentiles (all zero when empty).
pub fn percentiles(samples: &mut [u64]) -> Percentiles {
    if samples.is_empty() {
        return Percentiles::default();
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: samples[samples.len() - 1],
    }
}

/// Microseconds on `CLOCK_MONOTONIC`: one clock for every process on the machine, so an event
/// stamped by the publisher can be timed by a load-generator process that received it.
pub fn now_us() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
}

/// A latency histogram, in microseconds, that processes can merge: exact below 1 024 µs, then
/// 128 buckets per power of two (within 0.8 %). Sent between processes as JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(into = "HistogramWire", from = "HistogramWire")]
pub struct Histogram {
    counts: BTreeMap<u32, u64>,
    total: u64,
    max: u64,
}

/// A histogram as JSON: `[bucket, count]` pairs (map keys would be strings, which an
/// internally tagged enum cannot read back as numbers).
#[derive(Serialize, Deserialize)]
struct HistogramWire {
    counts: Vec<(u32, u64)>,
    max: u64,
}

impl From<Histogram> for HistogramWire {
    fn from(h: Histogram) -> Self {
        HistogramWire {
            counts: h.counts.into_iter().collect(),
            max: h.max,
        }
    }
}

impl From<HistogramWire> for Histogram {
    fn from(w: HistogramWire) -> Self {
        Histogram {
            total: w.counts.iter().map(|(_, n)| n).sum(),
            counts: w.counts.into_iter().collect(),
            max: w.max,
        }
    }
}

const EXACT_BELOW: u64 = 1024;
const SUB_BUCKETS: u32 = 128;

fn bucket_of(v: u64) -> u32 {
    if v < EXACT_BELOW {
        return v as u32;
    }
    let e = 63 - v.leading_zeros(); // >= 10
    let m = ((v >> (e - 7)) & 127) as u32;
    EXACT_BELOW as u32 + (e - 10) * SUB_BUCKETS + m
}

/// The middle of a bucket.
fn value_of(b: u32) -> u64 {
    if u64::from(b) < EXACT_BELOW {
        return u64::from(b);
    }
    let e = (b - EXACT_BELOW as u32) / SUB_BUCKETS + 10;
    let m = u64::from((b - EXACT_BELOW as u32) % SUB_BUCKETS);
    let width = 1u64 << (e - 7);
    (128 + m) * width + width / 2
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        *self.counts.entry(bucket_of(us)).or_default() += 1;
        self.total += 1;
        self.max = self.max.max(us);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (b, n) in &other.counts {
            *self.counts.entry(*b).or_default() += n;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The percentiles (all zero when empty), read as [`percentiles`] reads sorted samples.
    pub fn percentiles(&self) -> Percentiles {
        if self.total == 0 {
            return Percentiles::default();
        }
        let at = |q: f64| {
            let rank = ((self.total as f64 * q) as u64).min(self.total - 1);
            let mut seen = 0;
            for (b, n) in &self.counts {
                seen += n;
                if seen > rank {
                    return value_of(*b).min(self.max);
                }
            }
            self.max
        };
        Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_exact_below_1024_and_close_above() {
        let mut h = Histogram::default();
        for v in 1..=1000 {
            h.record(v);
        }
        let p = h.percentiles();
        assert_eq!((p.p50, p.p99, p.p999, p.max), (501, 991, 1000, 1000));
        for v in [1024u64, 1500, 2047, 2048, 99_999, 1_234_567, 40_000_000_000] {
            let got = value_of(bucket_of(v));
            assert!(got.abs_diff(v) * 100 <= v, "{v} read back as {got}");
        }
        let mut a = Histogram::default();
        a.record(5_000);
        let mut b = Histogram::default();
        b.record(7);
        a.merge(&b);
        assert_eq!((a.len(), a.percentiles().max), (2, 5_000));
        let json = serde_json::to_string(&a).unwrap();
        let back: Histogram = serde_json::from_str(&json).unwrap();
        assert_eq!(back.percentiles().p50, a.percentiles().p50);
    }

    #[test]
    fn monotonic_clock_advances() {
        let a = now_us();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(now_us() >= a + 2_000);
    }

    #[test]
    fn percentiles_of_1_to_1000() {
        let mut v: Vec<u64> = (1..=1000).collect();
        v.reverse();
        let p = percentiles(&mut v);
        assert_eq!((p.p50, p.p99, p.p999, p.max), (501, 991, 1000, 1000));
        assert_eq!(percentiles(&mut []).max, 0);
    }
}
