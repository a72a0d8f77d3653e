//! Exit codes, as a type, so `main` and the tests agree on them (sysexits.h values).

use std::fmt;

/// How the process ends. The numbers follow `sysexits.h`, which systemd units can match
/// (`RestartPreventExitStatus=78`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Clean exit, also after a drained shutdown.
    Success,
    /// A listener could not be bound or a socket passed by systemd was unusable
    /// (`EX_UNAVAILABLE`).
    Unavailable,
    /// A task the daemon cannot run without died (`EX_SOFTWARE`); systemd restarts it.
    Software,
    /// An operating-system error such as failing to start the runtime (`EX_OSERR`).
    OsError,
    /// The configuration is invalid (`EX_CONFIG`); restarting will not help.
    Config,
}

impl Exit {
    /// The numeric exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Unavailable => 69,
            Exit::Software => 70,
            Exit::OsError => 71,
            Exit::Config => 78,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

/// A fatal start-up error, with the exit code it maps to.
#[derive(Debug)]
pub struct Fatal {
    /// Exit code for this failure.
    pub exit: Exit,
    /// Human-readable explanation.
    pub message: String,
}

impl Fatal {
    /// A fatal error that ends the process with `exit`.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Fatal {
            exit,
            message: message.into(),
        }
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
