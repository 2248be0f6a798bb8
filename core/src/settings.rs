//! How settings are read, shared by every node's configuration: durations written as `5s`,
//! `250ms` or `1h 30m` (a bare number other than `0` is refused: it would hide its unit), a
//! way to get a configuration's defaults without reading the environment (tests, embedding),
//! and the host's name, which default node names start from.
//!
//! Each node's settings are one `clap::Args` struct (flag, `SWITCHBOARD_*` variable, default
//! and help declared once, on the field), checked by its own `validate`.

use std::time::Duration;

/// A duration: `5s`, `250ms`, `2m`, `1h 30m`, `0s`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (write a duration with its unit, e.g. 5s or 250ms)"))
}

/// `$HOSTNAME` (the pod name on Kubernetes), if it is set and not empty.
pub fn host_name() -> Option<String> {
    std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty())
}

/// [`host_name`], or else the kernel's host name (shells do not export `HOSTNAME`).
pub fn machine_name() -> Option<String> {
    host_name().or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
    })
}

/// A settings struct from `args` (flags only, no binary name), every other setting at its
/// default, and no `SWITCHBOARD_*` variable read.
pub fn from_args_without_env<T: clap::Args + clap::FromArgMatches>(
    args: &[&str],
) -> Result<T, clap::Error> {
    let cmd = T::augment_args(clap::Command::new("settings").no_binary_name(true))
        .mut_args(|a| a.env(None));
    let matches = cmd.try_get_matches_from(args)?;
    T::from_arg_matches(&matches)
}

/// [`from_args_without_env`] with no flags: every setting at its default.
pub fn defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    from_args_without_env(&[]).expect("every setting has a valid default")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_their_unit() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        assert!(duration("5000").unwrap_err().contains("250ms"));
    }
}
