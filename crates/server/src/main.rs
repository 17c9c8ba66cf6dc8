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

/// mimalloc rather than the C library's allocator: the data path allocates many small buffers
/// that live for one message or one request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
