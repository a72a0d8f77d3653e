//! wsechod: a WebSocket echo daemon for systemd, with Prometheus metrics.
//!
//! See ARCHITECTURE.md for the map of these modules and their invariants.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod connection;
pub mod daemon;
pub mod deflate;
pub mod error;
pub mod greeting;
pub mod http;
pub mod latch;
pub mod listeners;
pub mod logging;
pub mod metrics;
pub mod metrics_endpoint;
pub mod origin;
pub mod server;
pub mod settings;
pub mod shutdown;
pub mod signals;
pub mod state;
pub mod systemd;
pub mod tls;
pub mod tracker;
