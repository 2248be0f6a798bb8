//! Percentiles over recorded samples.

/// Appends one `key  value` row of a report table.
pub fn row(out: &mut String, key: &str, value: String) {
    out.push_str(&format!("{key:<26} {value}\n"));
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_1_to_1000() {
        let mut v: Vec<u64> = (1..=1000).collect();
        v.reverse();
        let p = percentiles(&mut v);
        assert_eq!((p.p50, p.p99, p.p999, p.max), (501, 991, 1000, 1000));
        assert_eq!(percentiles(&mut []).max, 0);
    }
}
