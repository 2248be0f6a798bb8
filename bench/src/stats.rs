//! Percentiles over recorded samples, a latency histogram that processes merge (hdrhistogram),
//! and the clock that timestamps events across processes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
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

/// Significant figures the latency histograms keep: every value is read back exact below
/// 2 048 µs and within 0.1 % above.
const SIGNIFICANT_FIGURES: u8 = 3;

/// A latency histogram, in microseconds, that processes can merge (hdrhistogram with
/// [`SIGNIFICANT_FIGURES`], resized as larger values come): exact below 2 048 µs, within 0.1 %
/// above. Sent between processes as hdrhistogram's V2 serialization, in base64, as a JSON
/// string.
#[derive(Debug, Clone)]
pub struct Histogram(hdrhistogram::Histogram<u64>);

impl Default for Histogram {
    fn default() -> Self {
        Histogram(
            hdrhistogram::Histogram::new(SIGNIFICANT_FIGURES)
                .expect("3 significant figures is in hdrhistogram's range (0 to 5)"),
        )
    }
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        // Only a value past what a resize can reach (near u64::MAX) fails: it is clamped.
        if self.0.record(us).is_err() {
            self.0.saturating_record(us);
        }
    }

    pub fn merge(&mut self, other: &Histogram) -> Result<(), hdrhistogram::AdditionError> {
        self.0.add(&other.0)
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The percentiles (all zero when empty), with the rank [`percentiles`] reads sorted samples
    /// at, so a histogram and the samples it was recorded from give the same figures (to its
    /// precision); each figure is the highest value of its bucket.
    pub fn percentiles(&self) -> Percentiles {
        let total = self.0.len();
        if total == 0 {
            return Percentiles::default();
        }
        let max = self.0.max();
        let at = |q: f64| {
            let rank = ((total as f64 * q) as u64).min(total - 1);
            let mut seen = 0;
            for v in self.0.iter_recorded() {
                seen += v.count_since_last_iteration();
                if seen > rank {
                    return v.value_iterated_to();
                }
            }
            max
        };
        Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max,
        }
    }
}

impl Serialize for Histogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use hdrhistogram::serialization::{Serializer as _, V2Serializer};
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(&self.0, &mut bytes)
            .map_err(serde::ser::Error::custom)?;
        s.serialize_str(&BASE64.encode(bytes))
    }
}

impl<'de> Deserialize<'de> for Histogram {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let text = String::deserialize(d)?;
        let bytes = BASE64.decode(text).map_err(D::Error::custom)?;
        let mut h: hdrhistogram::Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(D::Error::custom)?;
        // Read back with the bounds it was sent with; it must still take larger values.
        h.auto(true);
        Ok(Histogram(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_exact_below_2048_and_within_a_thousandth_above() {
        let mut h = Histogram::default();
        for v in 1..=1000 {
            h.record(v);
        }
        let p = h.percentiles();
        // The same figures as the samples themselves give.
        let mut samples: Vec<u64> = (1..=1000).collect();
        let exact = percentiles(&mut samples);
        assert_eq!((p.p50, p.p99, p.p999, p.max), (501, 991, 1000, 1000));
        assert_eq!(
            (p.p50, p.p99, p.p999, p.max),
            (exact.p50, exact.p99, exact.p999, exact.max)
        );
        for v in [0u64, 1, 2047, 2048, 2049, 99_999, 1_234_567, 40_000_000_000] {
            let mut h = Histogram::default();
            h.record(v);
            let got = h.percentiles();
            assert!(
                got.p50.abs_diff(v) * 1000 <= v,
                "{v} read back as {}",
                got.p50
            );
            assert_eq!(got.max, got.p50);
            if v < 2048 {
                assert_eq!(got.p50, v);
            }
        }
        assert_eq!(Histogram::default().percentiles().max, 0);
    }

    #[test]
    fn histograms_merge_across_json() {
        let mut a = Histogram::default();
        a.record(5_000);
        let mut b = Histogram::default();
        for v in 0..100 {
            b.record(7 + v % 3);
        }
        // As an agent sends it: a JSON string, base64 of the V2 serialization.
        let json = serde_json::to_string(&b).unwrap();
        assert!(json.starts_with('"'), "{json}");
        let back: Histogram = serde_json::from_str(&json).unwrap();
        assert_eq!(back.percentiles().p50, b.percentiles().p50);
        a.merge(&back).unwrap();
        assert_eq!(a.len(), 101);
        assert_eq!(a.percentiles().p50, 8);
        assert!(a.percentiles().max.abs_diff(5_000) * 1000 <= 5_000);
        // One read back from JSON still takes values past the bounds it was sent with.
        let mut back = back;
        back.record(10_000_000);
        back.merge(&a).unwrap();
        assert_eq!(back.len(), 202);
        assert!(serde_json::from_str::<Histogram>(r#""not base64!""#).is_err());
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
