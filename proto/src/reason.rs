//! The failure reasons of SPEC section 5: one enum shared by the socket, the
//! CLI and HTTP, so a reason word can never drift between them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why a job ended without a response. The wire carries the variant index
/// (u32, see `docs/protocol.md`); JSON and humans see the word
/// ([`Reason::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Pool at `pool-max`, all busy, and the queue holds `job-max` jobs.
    Overload,
    /// Communication with the child broke, or no child can be started.
    Error,
    /// No child runs a module of that name.
    UnknownModule,
    /// The module itself reported failure (or panicked).
    Failed,
    /// The job ran past its time limit.
    Timeout,
    /// The job was cancelled.
    Cancelled,
    /// The master is stopping and takes no new jobs.
    ShuttingDown,
}

impl Reason {
    /// Every reason, in wire order.
    pub const ALL: [Reason; 7] = [
        Reason::Overload,
        Reason::Error,
        Reason::UnknownModule,
        Reason::Failed,
        Reason::Timeout,
        Reason::Cancelled,
        Reason::ShuttingDown,
    ];

    /// The reason word of SPEC section 5.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Overload => "overload",
            Reason::Error => "error",
            Reason::UnknownModule => "unknown-module",
            Reason::Failed => "failed",
            Reason::Timeout => "timeout",
            Reason::Cancelled => "cancelled",
            Reason::ShuttingDown => "shutting-down",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A word that is not one of the reasons of SPEC section 5.
#[derive(Debug, thiserror::Error)]
#[error("unknown failure reason {0:?}")]
pub struct UnknownReason(pub String);

impl FromStr for Reason {
    type Err = UnknownReason;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_roundtrip() {
        for r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>().unwrap(), r);
        }
        assert!("nope".parse::<Reason>().is_err());
    }
}
