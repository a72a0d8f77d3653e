#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    wsechod::daemon::main(wsechod::cli::Cli::parse()).into()
}
