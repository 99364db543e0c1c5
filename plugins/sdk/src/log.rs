//! The gateway's log, as a plugin writes to it.
//!
//! In a component these call the `causeway:plugin/host` import, which writes a
//! line tagged with the plugin's name. Natively (in `cargo test`) the lines go to
//! [`crate::testing`]'s capture, or to stderr outside of one.
//!
//! Log per batch, not per record: each line is a call out of the sandbox.

/// How loud a line is; the same five levels as the WIT `level` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Details for whoever debugs the plugin.
    Debug,
    /// Normal operation worth a line.
    Info,
    /// Something is off but the plugin carries on.
    Warn,
    /// Something failed.
    Error,
}

impl Level {
    /// The level's name in lower case, as the gateway prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes `message` to the gateway's log at `level`.
pub fn log(level: Level, message: impl AsRef<str>) {
    crate::host::log(level, message.as_ref());
}

/// Writes `message` at level trace.
pub fn trace(message: impl AsRef<str>) {
    log(Level::Trace, message);
}

/// Writes `message` at level debug.
pub fn debug(message: impl AsRef<str>) {
    log(Level::Debug, message);
}

/// Writes `message` at level info.
pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message);
}

/// Writes `message` at level warn.
pub fn warn(message: impl AsRef<str>) {
    log(Level::Warn, message);
}

/// Writes `message` at level error.
pub fn error(message: impl AsRef<str>) {
    log(Level::Error, message);
}
