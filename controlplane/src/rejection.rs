//! Why `decide` refused a command. Each variant maps to exactly one gRPC status code.

use crate::model::ResourceKind;

/// The gRPC status a rejection maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    ResourceExhausted,
    Aborted,
    PermissionDenied,
}

/// A refused command. Nothing was proposed; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The command is malformed whatever the state: a bad name, a size out of range.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// A resource the command names does not exist.
    #[error("{kind} {name} not found")]
    NotFound { kind: ResourceKind, name: String },
    /// The resource to create exists already.
    #[error("{kind} {name} already exists")]
    AlreadyExists { kind: ResourceKind, name: String },
    /// The command is well formed but the resource is not in a state that allows it.
    #[error("{kind} {name}: {reason}")]
    FailedPrecondition { kind: ResourceKind, name: String, reason: String },
    /// No room: no host can take the domain, a pool or network is full.
    #[error("{kind} {name}: {reason}")]
    ResourceExhausted { kind: ResourceKind, name: String, reason: String },
    /// The proposal kept losing version races with concurrent writes; retry.
    #[error("conflict on {resource}: still conflicting after {attempts} attempts")]
    Aborted { resource: String, attempts: u32 },
    /// The caller's rights do not allow the command.
    #[error("{caller} may not {command}")]
    PermissionDenied { caller: String, command: String },
}

impl Rejection {
    pub fn code(&self) -> RejectionCode {
        match self {
            Rejection::InvalidArgument { .. } => RejectionCode::InvalidArgument,
            Rejection::NotFound { .. } => RejectionCode::NotFound,
            Rejection::AlreadyExists { .. } => RejectionCode::AlreadyExists,
            Rejection::FailedPrecondition { .. } => RejectionCode::FailedPrecondition,
            Rejection::ResourceExhausted { .. } => RejectionCode::ResourceExhausted,
            Rejection::Aborted { .. } => RejectionCode::Aborted,
            Rejection::PermissionDenied { .. } => RejectionCode::PermissionDenied,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Rejection {
        Rejection::InvalidArgument { field: field.into(), reason: reason.into() }
    }

    pub(crate) fn not_found(kind: ResourceKind, name: impl ToString) -> Rejection {
        Rejection::NotFound { kind, name: name.to_string() }
    }

    pub(crate) fn exists(kind: ResourceKind, name: impl ToString) -> Rejection {
        Rejection::AlreadyExists { kind, name: name.to_string() }
    }

    pub(crate) fn precondition(
        kind: ResourceKind,
        name: impl ToString,
        reason: impl Into<String>,
    ) -> Rejection {
        Rejection::FailedPrecondition { kind, name: name.to_string(), reason: reason.into() }
    }

    pub(crate) fn exhausted(kind: ResourceKind, name: impl ToString, reason: impl Into<String>) -> Rejection {
        Rejection::ResourceExhausted { kind, name: name.to_string(), reason: reason.into() }
    }
}
