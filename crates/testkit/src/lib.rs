//! Test support for Gatehouse: runs the built `gatehouse` binary ([`Gateway`]) and starts **real**
//! servers from the machine's packages (today PostgreSQL through Debian's `initdb`/`pg_ctl`; MariaDB, Redis and sshd are meant to follow as
//! sibling modules built on [`common`]) and an OpenID Connect provider ([`OidcProvider`]: the
//! npm package `oauth2-mock-server` run by `node` as the current user, installed with `npm ci
//! --prefix crates/testkit/oidc`) on loopback ports picked at run time, each in its own
//! temporary directory, and tears them down on Drop. For the web console it drives a real
//! headless browser ([`Browser`]: the machine's `chromium` under the npm package
//! `playwright-core`, run by `node`, installed with `npm ci --prefix crates/testkit/browser`),
//! one isolated browser context per simulated user. When the tests run as root, servers run as
//! an unprivileged account (`nobody`, or `GATEHOUSE_TEST_USER`) via `runuser`. It does not mock
//! anything, install packages, download binaries, touch the machine's own servers (5432, 3306,
//! 6379 …) or clean up after a process killed with SIGKILL (Drop must run); its API is blocking,
//! so async tests call it inside `tokio::task::spawn_blocking`.
//!
//! ```no_run
//! use gatehouse_testkit::{PgAuth, Postgres};
//!
//! # fn main() -> anyhow::Result<()> {
//! let pg = Postgres::start()?; // initdb + pg_ctl start on 127.0.0.1:<free port>
//! assert_eq!(pg.psql("postgres", "select 1")?, "1");
//! pg.create_role("alice", "s3cret", PgAuth::Md5)?;
//! pg.create_database("shop", "alice")?;
//! let rows = pg.psql_as("alice", Some("s3cret"), "shop", "select current_user")?;
//! assert_eq!(rows, "alice");
//! let _url = pg.url("shop"); // postgres://postgres:<password>@127.0.0.1:<port>/shop
//! pg.kill_postmaster()?; // the upstream dies…
//! pg.restart()?; // …and comes back on the same port
//! # Ok(())
//! # }
//! // Dropping `pg` stops the server and removes its directory.
//! ```
//!
//! Environment: `GATEHOUSE_TEST_PG_BINDIR` picks the PostgreSQL binaries (default:
//! `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`); `GATEHOUSE_TEST_USER`
//! picks the account servers run as when the tests are root (default `nobody`);
//! `GATEHOUSE_TEST_NODE` picks `node` (default: from `PATH`) and `GATEHOUSE_TEST_CHROMIUM` the
//! browser (default `/usr/bin/chromium`, Debian's `chromium`).

#![forbid(unsafe_code)]

pub mod browser;
pub mod common;
pub mod fuzz;
pub mod gateway;
pub mod oidc;
pub mod postgres;

pub use browser::{Browser, Page};
pub use gateway::Gateway;
pub use oidc::OidcProvider;
pub use postgres::{PgAuth, Postgres};
