//! Command-line arguments.

use std::path::PathBuf;

use clap::Parser;

/// WebSocket echo daemon with Prometheus metrics and systemd integration.
#[derive(Debug, Parser)]
#[command(name = "wsechod", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file [default: /etc/wsechod/wsechod.toml; built-in defaults if absent]
    #[arg(short, long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Validate the configuration and exit with 0 (valid) or 78 (invalid).
    #[arg(long, conflicts_with = "print_config")]
    pub check_config: bool,

    /// Print the effective configuration (defaults, file and environment merged) as TOML.
    #[arg(long)]
    pub print_config: bool,
}
