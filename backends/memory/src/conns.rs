//! Connections per identity and per address inside one process, with the Redis semantics:
//! leases per scope that expire unless renewed.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use switchboard_core::backend::{BackendError, ConnectionLedger, Lease};
use switchboard_core::clock::now_ms;

use crate::MemoryBackend;

/// Scope -> member -> lease expiry (Unix ms).
#[derive(Default)]
pub(crate) struct Ledger {
    scopes: HashMap<String, HashMap<String, u64>>,
}

#[async_trait]
impl ConnectionLedger for MemoryBackend {
    async fn admit(&self, lease: &Lease, max: u64, ttl: Duration) -> Result<bool, BackendError> {
        let now = now_ms();
        let mut ledger = self.conns.lock().expect("lock poisoned");
        let scope = ledger.scopes.entry(lease.scope.clone()).or_default();
        scope.retain(|_, exp| *exp > now);
        if !scope.contains_key(&lease.member) && scope.len() as u64 >= max {
            return Ok(false);
        }
        scope.insert(lease.member.clone(), now + ttl.as_millis() as u64);
        Ok(true)
    }

    async fn renew(&self, leases: &[Lease], ttl: Duration) -> Result<(), BackendError> {
        let expiry = now_ms() + ttl.as_millis() as u64;
        let mut ledger = self.conns.lock().expect("lock poisoned");
        for lease in leases {
            ledger
                .scopes
                .entry(lease.scope.clone())
                .or_default()
                .insert(lease.member.clone(), expiry);
        }
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> Result<(), BackendError> {
        let mut ledger = self.conns.lock().expect("lock poisoned");
        if let Some(scope) = ledger.scopes.get_mut(&lease.scope) {
            scope.remove(&lease.member);
            if scope.is_empty() {
                ledger.scopes.remove(&lease.scope);
            }
        }
        Ok(())
    }
}
