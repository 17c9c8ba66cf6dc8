//! `gatehouse`: the access gateway's server and its command-line client in one binary.
//! `gatehouse serve` runs the gateway; every other command talks to a running gateway through
//! its REST API (except `config check` and `audit verify --data-dir`, which work offline).

#![forbid(unsafe_code)]

mod api;
mod app;
mod cli;
mod config;
mod console;
mod exec;
mod limits;
mod mcp;
mod metrics;
mod pipeline;
mod reviews;
mod serve;
mod tls;

fn main() -> std::process::ExitCode {
    cli::main()
}
