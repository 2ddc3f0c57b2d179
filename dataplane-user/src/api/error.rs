//! The errors every front door reports: one line a user understands, and
//! the kind that picks the HTTP status (or the plugin protocols' `Err`).

use anyhow::anyhow;

use crate::{ipam, ports::PortError, store::StoreError};

/// An API-visible failure: the message is the one line the CLI prints.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<ipam::IpamError> for ApiError {
    fn from(e: ipam::IpamError) -> Self {
        match e {
            ipam::IpamError::InUse(..) | ipam::IpamError::Overlap { .. } => {
                ApiError::Conflict(e.to_string())
            }
            ipam::IpamError::Exhausted(_) | ipam::IpamError::PoolExhausted => {
                ApiError::Conflict(e.to_string())
            }
            _ => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl From<PortError> for ApiError {
    fn from(e: PortError) -> Self {
        match e {
            PortError::Invalid(m) => ApiError::BadRequest(m),
            PortError::Conflict(m) => ApiError::Conflict(m),
            PortError::Internal(m) => ApiError::Internal(anyhow!(m)),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { key } => ApiError::Conflict(format!(
                "{key} was changed by another request at the same moment; try again"
            )),
            e => ApiError::Internal(e.into()),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

pub fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}
