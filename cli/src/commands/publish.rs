//! `switchboard publish`: what any backend does to reach clients, from the command line:
//! `PUBLISH <prefix>:t:{<topic>} <json>` on Redis, or `SPUBLISH` (sharded pub/sub, on the shard
//! that owns the topic) in a Redis Cluster.

use anyhow::Context;
use switchboard_protocol::topic;
use switchboard_redis::{Keys, RedisOptions, Target};

use crate::Failure;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    redis: RedisOptions,
    /// The topic.
    topic: String,
    /// The event's data: any JSON value.
    json: String,
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    topic::validate(&args.topic).map_err(|e| Failure::Usage(format!("topic: {e}")))?;
    serde_json::from_str::<serde::de::IgnoredAny>(&args.json)
        .map_err(|e| Failure::Usage(format!("json: not valid JSON: {e}")))?;
    let opts = &args.redis;
    // The same URL, ACL, TLS and Sentinel handling as gateways and workers.
    let target = opts.target().map_err(Failure::Usage)?;
    let channel = Keys::new(&opts.prefix).topic_channel(&args.topic);
    let rt = super::runtime()?;
    // Connecting and the one command, bounded as in a gateway.
    let bound = opts.connect_timeout + opts.op_timeout;
    if let Target::Cluster(cluster) = &target {
        let receivers: i64 = rt.block_on(bounded(bound, async {
            let client = cluster.client().map_err(anyhow::Error::msg)?;
            let mut conn = client
                .get_async_connection()
                .await
                .context("cannot reach the Redis Cluster")?;
            redis::cmd("SPUBLISH")
                .arg(&channel)
                .arg(&args.json)
                .query_async(&mut conn)
                .await
                .context("SPUBLISH failed")
        }))?;
        println!("published to {channel}: {receivers} gateway node(s) subscribed");
        return Ok(());
    }
    let receivers: i64 = rt.block_on(bounded(bound, async {
        let client = target
            .client()
            .await
            .map_err(|e| anyhow::anyhow!("cannot find the Redis primary: {e}"))?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .context("cannot reach Redis")?;
        redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(&args.json)
            .query_async(&mut conn)
            .await
            .context("PUBLISH failed")
    }))?;
    println!("published to {channel}: {receivers} gateway node(s) subscribed");
    Ok(())
}

/// `work`, or an error once `bound` has passed.
async fn bounded<T>(
    bound: std::time::Duration,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(bound, work)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("Redis did not answer within {bound:?}")))
}
