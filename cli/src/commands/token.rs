//! `switchboard token`: mint an HS256 token that gateways with the same secret accept.

use std::time::Duration;

use switchboard_core::auth;

use crate::Failure;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The HS256 secret the gateways verify with.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// The subject (`sub`): who the token speaks for.
    #[arg(long)]
    sub: String,
    /// Seconds until the token expires; 0 for a token without `exp`.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    if args.secret.is_empty() {
        return Err(Failure::Usage(
            "secret (SWITCHBOARD_JWT_SECRET) is empty".into(),
        ));
    }
    let ttl = (args.ttl_secs > 0).then(|| Duration::from_secs(args.ttl_secs));
    let token = auth::mint(args.secret.as_bytes(), &args.sub, ttl)
        .map_err(|e| Failure::Usage(format!("sub: {e}")))?;
    println!("{token}");
    Ok(())
}
