//! Connections counted cluster-wide, for the caps on connections per identity and per source
//! address: each scope (`id:<subject>`, `ip:<address>`) holds its live connections as leases
//! (a member per connection, `<node>/<n>`, with an expiry). A node renews the leases of its
//! connections while they live and releases each when it closes, so a node that dies stops
//! counting once its leases run out.

use std::time::Duration;

use async_trait::async_trait;

use super::error::BackendError;

/// A connection's place in a scope: the scope and the connection's member name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    pub scope: String,
    pub member: String,
}

/// See the module docs.
#[async_trait]
pub trait ConnectionLedger: Send + Sync + 'static {
    /// Counts the connection in its scope for `lease`, unless the scope already holds `max`
    /// live connections: whether it was admitted. Leases past their expiry are dropped first.
    async fn admit(&self, lease: &Lease, max: u64, ttl: Duration) -> Result<bool, BackendError>;

    /// Extends the leases of live connections by `ttl` from now.
    async fn renew(&self, leases: &[Lease], ttl: Duration) -> Result<(), BackendError>;

    /// Forgets a connection that closed.
    async fn release(&self, lease: &Lease) -> Result<(), BackendError>;
}
