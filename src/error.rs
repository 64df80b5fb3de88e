//! Exit codes, shared by every command, and the error kinds they map from.
//! The codes follow the seeds' deploy scripts: 0 success, 1 tests failed,
//! 2 build failed, 3 start (deploy) failed, 4 health check failed after
//! rollback. deployer adds codes for its own failure kinds.

/// What went wrong, at the granularity a caller (script or CI) acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// `[tests] local` or `server` failed (seed exit code 1); nothing
    /// started.
    Tests,
    /// The Build phase failed; the previous release still runs.
    Build,
    /// The Start Service phase failed; the previous release was restored.
    Start,
    /// Verify Health failed; the previous release was restored.
    Health,
    /// Copying the service into a new release failed.
    Transfer,
    /// The service runs but registering it failed.
    Register,
    /// Rolling back failed too: the service may be down.
    RollbackFailed,
    /// The deployer running the job stopped before it finished (killed,
    /// crashed, the server restarted).
    Interrupted,
    /// The migration failed; the old release kept running.
    Migrate,
    /// A git step failed (uncommitted changes, an unknown ref, a push).
    Git,
    /// The backup before the deploy failed or did not verify; nothing
    /// stopped.
    Backup,
    /// A stage of `deployer pipeline run` (a verifier, an auto-fixer, a
    /// command) failed; nothing was transferred.
    Pipeline,
    /// Bad input: config, manifest, flags, path, name, port.
    Invalid,
    /// The target host cannot be reached: connection, authentication, or a
    /// host key that is unknown or changed.
    Unreachable,
    /// Another deploy of the same service holds the lock.
    Locked,
    /// Something the user asked about does not exist (job, service, release).
    NotFound,
    /// The request cannot apply to the current state (no previous release
    /// to roll back to; the release is already current).
    Conflict,
    /// An unexpected internal or environment error.
    Internal,
}

impl FailureKind {
    /// Every kind, for documentation checks.
    pub const ALL: [FailureKind; 18] = [
        FailureKind::Tests,
        FailureKind::Build,
        FailureKind::Start,
        FailureKind::Health,
        FailureKind::Transfer,
        FailureKind::Register,
        FailureKind::RollbackFailed,
        FailureKind::Interrupted,
        FailureKind::Migrate,
        FailureKind::Git,
        FailureKind::Backup,
        FailureKind::Pipeline,
        FailureKind::Unreachable,
        FailureKind::Invalid,
        FailureKind::Locked,
        FailureKind::NotFound,
        FailureKind::Conflict,
        FailureKind::Internal,
    ];

    /// The process exit code for this failure. Documented in the README.
    pub fn exit_code(self) -> i32 {
        match self {
            FailureKind::Tests => 1,
            FailureKind::Build => 2,
            FailureKind::Start => 3,
            FailureKind::Health => 4,
            FailureKind::Transfer => 5,
            FailureKind::Register => 6,
            FailureKind::RollbackFailed => 7,
            FailureKind::Interrupted => 9,
            FailureKind::Migrate => 15,
            FailureKind::Git => 14,
            FailureKind::Backup => 16,
            FailureKind::Pipeline => 17,
            FailureKind::Unreachable => 8,
            FailureKind::Invalid => 10,
            FailureKind::Locked => 11,
            FailureKind::NotFound => 12,
            FailureKind::Conflict => 13,
            FailureKind::Internal => 70,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Tests => "tests",
            FailureKind::Build => "build",
            FailureKind::Start => "start",
            FailureKind::Health => "health",
            FailureKind::Transfer => "transfer",
            FailureKind::Register => "register",
            FailureKind::RollbackFailed => "rollback_failed",
            FailureKind::Interrupted => "interrupted",
            FailureKind::Migrate => "migrate",
            FailureKind::Git => "git",
            FailureKind::Backup => "backup",
            FailureKind::Pipeline => "pipeline",
            FailureKind::Unreachable => "unreachable",
            FailureKind::Invalid => "invalid",
            FailureKind::Locked => "locked",
            FailureKind::NotFound => "not_found",
            FailureKind::Conflict => "conflict",
            FailureKind::Internal => "internal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "tests" => FailureKind::Tests,
            "build" => FailureKind::Build,
            "start" => FailureKind::Start,
            "health" => FailureKind::Health,
            "transfer" => FailureKind::Transfer,
            "register" => FailureKind::Register,
            "rollback_failed" => FailureKind::RollbackFailed,
            "interrupted" => FailureKind::Interrupted,
            "migrate" => FailureKind::Migrate,
            "git" => FailureKind::Git,
            "backup" => FailureKind::Backup,
            "pipeline" => FailureKind::Pipeline,
            "unreachable" => FailureKind::Unreachable,
            "invalid" => FailureKind::Invalid,
            "locked" => FailureKind::Locked,
            "not_found" => FailureKind::NotFound,
            "conflict" => FailureKind::Conflict,
            "internal" => FailureKind::Internal,
            _ => return None,
        })
    }
}

/// An error that ends a command: a message for the user and its kind.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    /// The request field the failure is about (for the HTTP API's 400s).
    pub field: Option<&'static str>,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl std::fmt::Display) -> Self {
        Failure {
            kind,
            message: message.to_string(),
            field: None,
        }
    }

    pub fn invalid(message: impl std::fmt::Display) -> Self {
        Self::new(FailureKind::Invalid, message)
    }

    /// Invalid input in a named request field.
    pub fn invalid_field(field: &'static str, message: impl std::fmt::Display) -> Self {
        Failure {
            field: Some(field),
            ..Self::new(FailureKind::Invalid, message)
        }
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(FailureKind::Internal, message)
    }

    pub fn not_found(message: impl std::fmt::Display) -> Self {
        Self::new(FailureKind::NotFound, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind has its own exit code, and the stable word parses back.
    #[test]
    fn codes_are_distinct_and_words_round_trip() {
        let mut codes: Vec<i32> = FailureKind::ALL.iter().map(|k| k.exit_code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), FailureKind::ALL.len());
        for k in FailureKind::ALL {
            assert_eq!(FailureKind::parse(k.as_str()), Some(k));
        }
    }
}
