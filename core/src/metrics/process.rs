//! The standard process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, `process_max_fds`, `process_start_time_seconds`), read from
//! `/proc/self` at each scrape (Linux; elsewhere there are none), and
//! `switchboard_build_info{version}`. Gateways and workers register both.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

/// Registers the process metrics and `switchboard_build_info{version}` (= 1) in `registry`.
pub fn register(registry: &mut Registry, version: &str) {
    let info: Family<Vec<(String, String)>, Gauge> = Family::default();
    info.get_or_create(&vec![("version".to_owned(), version.to_owned())])
        .set(1);
    registry.register(
        "switchboard_build_info",
        "Always 1; the version of the running binary in its label",
        info,
    );
    registry.register_collector(Box::new(ProcessCollector));
}

/// Reads `/proc/self` at each scrape.
#[derive(Debug)]
struct ProcessCollector;

/// What one read of `/proc/self` found.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<i64>,
    open_fds: Option<i64>,
    max_fds: Option<i64>,
    start_time_seconds: Option<f64>,
}

impl ProcessStats {
    fn read() -> ProcessStats {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let fields = stat.as_deref().and_then(stat_fields);
        let btime = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| boot_time(&s));
        ProcessStats {
            cpu_seconds: fields
                .as_ref()
                .map(|f| (f.utime + f.stime) as f64 / USER_HZ),
            resident_bytes: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| resident_bytes(&s)),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as i64),
            max_fds: std::fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|s| max_fds(&s)),
            start_time_seconds: match (fields, btime) {
                (Some(f), Some(b)) => Some(b as f64 + f.start_ticks as f64 / USER_HZ),
                _ => None,
            },
        }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = ProcessStats::read();
        if let Some(v) = s.cpu_seconds {
            let c = ConstCounter::new(v);
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?;
            c.encode(m)?;
        }
        let gauges: [(&str, &str, Option<f64>); 4] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_bytes.map(|v| v as f64),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                s.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                s.max_fds.map(|v| v as f64),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                s.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
                g.encode(m)?;
            }
        }
        Ok(())
    }
}

struct StatFields {
    utime: u64,
    stime: u64,
    start_ticks: u64,
}

/// utime, stime and starttime from `/proc/self/stat` (fields 14, 15 and 22; the command name,
/// field 2, is in parentheses and may hold spaces).
fn stat_fields(stat: &str) -> Option<StatFields> {
    let after = &stat[stat.rfind(')')? + 1..];
    // `after` starts at field 3.
    let f: Vec<&str> = after.split_whitespace().collect();
    let at = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(StatFields {
        utime: at(14)?,
        stime: at(15)?,
        start_ticks: at(22)?,
    })
}

fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn resident_bytes(status: &str) -> Option<i64> {
    let kb: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The soft limit of `Max open files` (`unlimited`: none to report).
fn max_fds(limits: &str) -> Option<i64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 1200 0 0 0 250 75 0 0 20 0 \
                    5 0 123456 10000000 2000 18446744073709551615";
        let f = stat_fields(stat).unwrap();
        assert_eq!((f.utime, f.stime, f.start_ticks), (250, 75, 123456));
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        assert_eq!(
            resident_bytes("Name:\tx\nVmRSS:\t  2048 kB\nVmData: 1 kB\n"),
            Some(2048 * 1024)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_fds(limits), Some(1024));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_measured() {
        let s = ProcessStats::read();
        assert!(s.cpu_seconds.is_some());
        assert!(s.resident_bytes.unwrap() > 0);
        assert!(s.open_fds.unwrap() > 0);
        assert!(s.start_time_seconds.unwrap() > 1_600_000_000.0);
        let mut r = Registry::default();
        register(&mut r, "1.2.3");
        let text = super::super::render(&r, super::super::Format::Text);
        assert!(
            text.contains("switchboard_build_info{version=\"1.2.3\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_start_time_seconds "), "{text}");
    }
}
