//! Exit codes, shared by every command, and the error kinds they map from.
//! The codes follow the seeds' deploy scripts: 0 success, 1 tests failed,
//! 2 build failed, 3 start (deploy) failed, 4 health check failed after
//! rollback. deployer adds codes for its own failure kinds.

/// Declares [`FailureKind`] once: each kind with its doc, its exit code
/// and its name in JSON, the store and the API; the enum, `ALL`,
/// `exit_code`, `as_str` and `parse` all come from this one list.
macro_rules! failure_kinds {
    ($($(#[doc = $doc:literal])* $kind:ident = $code:literal, $name:literal;)+) => {
        /// What went wrong, at the granularity a caller (script or CI) acts on.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum FailureKind {
            $($(#[doc = $doc])* $kind,)+
        }

        impl FailureKind {
            /// Every kind, for documentation checks.
            pub const ALL: &'static [FailureKind] = &[$(FailureKind::$kind,)+];

            /// The process exit code for this failure. Documented in the README.
            pub fn exit_code(self) -> i32 {
                match self {
                    $(FailureKind::$kind => $code,)+
                }
            }

            pub fn as_str(self) -> &'static str {
                match self {
                    $(FailureKind::$kind => $name,)+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($name => Some(FailureKind::$kind),)+
                    _ => None,
                }
            }
        }
    };
}

failure_kinds! {
    /// `[tests] local` or `server` failed (seed exit code 1); nothing
    /// started.
    Tests = 1, "tests";
    /// The Build phase failed; the previous release still runs.
    Build = 2, "build";
    /// The Start Service phase failed; the previous release was restored.
    Start = 3, "start";
    /// Verify Health failed; the previous release was restored.
    Health = 4, "health";
    /// Copying the service into a new release failed.
    Transfer = 5, "transfer";
    /// The service runs but registering it failed.
    Register = 6, "register";
    /// Rolling back failed too: the service may be down.
    RollbackFailed = 7, "rollback_failed";
    /// The deployer running the job stopped before it finished (killed,
    /// crashed, the server restarted).
    Interrupted = 9, "interrupted";
    /// The migration failed; the old release kept running.
    Migrate = 15, "migrate";
    /// A git step failed (uncommitted changes, an unknown ref, a push).
    Git = 14, "git";
    /// The backup before the deploy failed or did not verify; nothing
    /// stopped.
    Backup = 16, "backup";
    /// A stage of `deployer pipeline run` (a verifier, an auto-fixer, a
    /// command) failed; nothing was transferred.
    Pipeline = 17, "pipeline";
    /// The target host cannot be reached: connection, authentication, or a
    /// host key that is unknown or changed.
    Unreachable = 8, "unreachable";
    /// Bad input: config, manifest, flags, path, name, port.
    Invalid = 10, "invalid";
    /// Another deploy of the same service holds the lock.
    Locked = 11, "locked";
    /// Something the user asked about does not exist (job, service, release).
    NotFound = 12, "not_found";
    /// The request cannot apply to the current state (no previous release
    /// to roll back to; the release is already current).
    Conflict = 13, "conflict";
    /// An unexpected internal or environment error.
    Internal = 70, "internal";
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
        for &k in FailureKind::ALL {
            assert_eq!(FailureKind::parse(k.as_str()), Some(k));
        }
    }
}
