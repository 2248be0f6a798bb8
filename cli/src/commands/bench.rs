//! `switchboard bench`: benchmark scenarios (the benchmark issue fills these in).

use crate::Failure;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> Result<(), Failure> {
    Err(Failure::Usage("no benchmark scenario yet".into()))
}
