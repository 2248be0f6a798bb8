//! CPU time and resident memory of a process, read from `/proc/<pid>/stat` and
//! `/proc/<pid>/status` (Linux).

use std::time::Duration;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// User + system CPU time.
    pub cpu: Duration,
    /// Resident set size, in bytes.
    pub rss: u64,
}

/// Clock ticks per second for `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: u64 = 100;

/// Reads a process's counters; `None` when it is gone or this is not Linux.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line: 11 and 12 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(ProcSample {
        cpu: Duration::from_millis((utime + stime) * 1000 / TICKS_PER_SEC),
        rss: rss_kb * 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id()).expect("/proc is readable");
        assert!(s.rss > 0);
    }
}
