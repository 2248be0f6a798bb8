//! How settings are read, shared by every node's configuration: durations written as `5s`,
//! `250ms` or `1h 30m` (a bare number is refused: it would hide its unit), and a way to get a
//! configuration's defaults without reading the environment (tests, `switchboard dev`).
//!
//! Each node's settings are one `clap::Args` struct (name, default, `SWITCHBOARD_*` variable,
//! help and validation declared once, on the field); these are the value parsers they share.

use std::time::Duration;

/// A duration: `5s`, `250ms`, `2m`, `1h 30m`, `0s`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (write a duration with its unit, e.g. 5s or 250ms)"))
}

/// A duration greater than zero.
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        d if d.is_zero() => Err("must be greater than zero".into()),
        d => Ok(d),
    }
}

/// A whole number of at least 1.
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
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
        assert!(positive_duration("0s").is_err());
        assert_eq!(at_least_one("3"), Ok(3));
        assert!(at_least_one("0").is_err());
    }
}
