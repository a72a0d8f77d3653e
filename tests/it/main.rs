//! Integration tests: the real `wsechod` binary, started per test on port 0.

mod cli;
mod echo;
mod http;
mod lifecycle;
mod limits;
mod metrics;
mod security;
mod util;
