//! Integration tests: the real `wsechod` binary, started per test on port 0.

mod cli;
mod echo;
mod http;
mod lifecycle;
mod metrics;
mod util;
