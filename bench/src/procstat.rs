//! CPU time and resident memory of processes, read from `/proc/<pid>/stat` and
//! `/proc/<pid>/status` (Linux): the one sampler every scenario uses.
//!
//! A scenario samples the processes it measures (gateways, workers, Redis, the floor, agents,
//! itself) with [`sample_all`] before and after a window, then reads from the two samples the
//! CPU seconds used ([`cpu_seconds`]) or the cores, per process ([`cores_each`]) or together
//! ([`cores`]). CPU time comes in clock ticks (10 ms), so it is coarse over short windows.

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

/// Reads a set of processes together: one sample per pid, in the same order, a process that is
/// gone reading as zero (so samples taken before and after a window always pair up).
pub fn sample_all(pids: &[u32]) -> Vec<ProcSample> {
    pids.iter()
        .map(|p| sample(*p).unwrap_or_default())
        .collect()
}

/// CPU seconds each process used between two samples of the same pids (a process whose counter
/// went back, being gone by the second sample, used none).
fn cpu_each(before: &[ProcSample], after: &[ProcSample]) -> impl Iterator<Item = f64> {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| a.cpu.saturating_sub(b.cpu).as_secs_f64())
}

/// CPU seconds used by a set of processes, all together, between two samples.
pub fn cpu_seconds(before: &[ProcSample], after: &[ProcSample]) -> f64 {
    cpu_each(before, after).sum()
}

/// Cores each process used between two samples taken `wall` apart.
pub fn cores_each(before: &[ProcSample], after: &[ProcSample], wall: Duration) -> Vec<f64> {
    let wall = wall.as_secs_f64().max(1e-9);
    cpu_each(before, after).map(|s| s / wall).collect()
}

/// Cores a set of processes used, all together, between two samples taken `wall` apart.
pub fn cores(before: &[ProcSample], after: &[ProcSample], wall: Duration) -> f64 {
    cpu_seconds(before, after) / wall.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id()).expect("/proc is readable");
        assert!(s.rss > 0);
    }

    #[test]
    fn cpu_and_cores_between_samples() {
        let at = |ms: u64| ProcSample {
            cpu: Duration::from_millis(ms),
            rss: 0,
        };
        let before = [at(100), at(500), at(300)];
        // The third process is gone by the second sample: it reads as zero, and used nothing.
        let after = [at(600), at(1500), ProcSample::default()];
        assert!((cpu_seconds(&before, &after) - 1.5).abs() < 1e-9);
        let each = cores_each(&before, &after, Duration::from_secs(2));
        assert_eq!(each, vec![0.25, 0.5, 0.0]);
        assert!((cores(&before, &after, Duration::from_secs(2)) - 0.75).abs() < 1e-9);
        let gone = sample_all(&[std::process::id(), u32::MAX]);
        assert_eq!(gone.len(), 2);
        assert_eq!(gone[1].rss, 0);
    }
}
