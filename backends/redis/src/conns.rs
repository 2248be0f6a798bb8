//! Connections per identity and per address on Redis: a sorted set per scope
//! (`<prefix>:conns:{<scope>}`, member -> lease expiry in Unix ms). Admission is
//! `lua/conn_admit.lua` (expired leases dropped, the cap checked, the lease added, in one step);
//! renewals are `ZADD` in one pipeline per round (per slot in a Redis Cluster), re-adding leases
//! Redis lost; a release is `ZREM`. The set expires
//! with its newest lease, so a scope nobody uses vanishes.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use switchboard_core::backend::{BackendError, ConnectionLedger, Lease};
use switchboard_core::clock::now_ms;

use crate::slots::slot;
use crate::{Op, RedisBackend};

static ADMIT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/conn_admit.lua")));

#[async_trait]
impl ConnectionLedger for RedisBackend {
    async fn admit(&self, lease: &Lease, max: u64, ttl: Duration) -> Result<bool, BackendError> {
        let mut inv = ADMIT.prepare_invoke();
        inv.key(self.keys.connections(&lease.scope))
            .arg(&lease.member)
            .arg(now_ms())
            .arg(ttl.as_millis() as u64)
            .arg(max);
        let mut conn = self.commands();
        let admitted: i64 = self
            .bounded(Op::Conns, async move { inv.invoke_async(&mut conn).await })
            .await?;
        Ok(admitted == 1)
    }

    async fn renew(&self, leases: &[Lease], ttl: Duration) -> Result<(), BackendError> {
        if leases.is_empty() {
            return Ok(());
        }
        let ttl_ms = ttl.as_millis() as u64;
        let expiry = now_ms() + ttl_ms;
        // One pipeline per slot: a Redis Cluster runs a pipeline on one node only (one Redis
        // takes them all in one).
        let mut pipes: HashMap<u16, redis::Pipeline> = HashMap::new();
        for lease in leases {
            let key = self.keys.connections(&lease.scope);
            let group = if self.is_cluster() {
                slot(key.as_bytes())
            } else {
                0
            };
            // Plain ZADD: a lease Redis lost (a restart, an outage longer than the lease, a
            // connection let in while Redis was away) counts again. A release racing with a
            // renewal may leave one lease behind, until it expires.
            pipes
                .entry(group)
                .or_insert_with(redis::pipe)
                .cmd("ZADD")
                .arg(&key)
                .arg(expiry)
                .arg(&lease.member)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(ttl_ms)
                .ignore();
        }
        let rounds = pipes.into_values().map(|pipe| {
            let mut conn = self.commands();
            self.bounded(Op::Conns, async move { pipe.exec_async(&mut conn).await })
        });
        join_all(rounds).await.into_iter().collect()
    }

    async fn release(&self, lease: &Lease) -> Result<(), BackendError> {
        let key = self.keys.connections(&lease.scope);
        let member = lease.member.clone();
        let mut conn = self.commands();
        self.bounded(Op::Conns, async move {
            redis::cmd("ZREM")
                .arg(key)
                .arg(member)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }
}
