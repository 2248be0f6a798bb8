//! Reachability: memory always answers.

use async_trait::async_trait;
use switchboard_core::backend::{BackendError, Health};

use crate::MemoryBackend;

#[async_trait]
impl Health for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }
}
