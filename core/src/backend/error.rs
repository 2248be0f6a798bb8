//! What a backend operation can fail with. Clients see these only as protocol errors.

/// A backend operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("backend operation timed out")]
    Timeout,
}
