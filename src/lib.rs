//! # registrar — a course registration engine
//!
//! Built for the minute enrollment opens: thousands of students press
//! "register" at once, each must get an answer in milliseconds, no seat is
//! sold twice, and nothing acknowledged is ever lost.
//!
//! ## Layout
//!
//! Dependencies run one way, downwards (`tests/architecture.rs` checks it):
//!
//! - [`cli`] (what `main` runs) and [`startup`]: [`startup::Application`]
//!   wires everything; `main`, tests and benchmarks start it the same way.
//! - [`http`]: decode, authenticate, admit (rate limits), encode: the accept
//!   loop, the route table, handlers by area, problem+json errors.
//! - [`state`]: [`state::AppState`], what every handler shares.
//! - [`registration`]: the registration service (register, drop, resize):
//!   seats → loader → persistence. [`catalog`]: the browse cache.
//! - [`seats`]: the Redis side, the hot path's source of truth: every key and
//!   script, the outbox, idempotency records, rate limits.
//! - [`sync`]: persistence (shards, sweeper), warm-up, revalidation, reconcile.
//! - [`store`]: the PostgreSQL side, the system of record: every SQL
//!   statement and the migrations.
//! - [`domain`]: values both sides share (roles, events, section snapshots),
//!   so the system of record never depends on the cache's types.
//! - [`auth`]: HS256 tokens and Argon2id passwords (hashed off the async threads).
//! - [`supervise`]: background tasks watched; one that dies stops the process.
//! - [`health`]: the dependency checks `/health` reports, shared for a moment.
//! - [`audit`]: the promises of SPEC §2 checked against both stores.
//! - [`config`], [`telemetry`], [`metrics`], [`seed`].
//!
//! ## A request's way
//!
//! `http::server` accepts (bounded connections, header timeout) →
//! `http::router` resolves the route from its table, checks the method,
//! applies the request deadline and records metrics → `http::limits`
//! charges the rate limits (`seats::limits`) → a handler
//! (`http::registration`) authenticates the bearer token, reads the body
//! within its limit and applies idempotency (`seats::idempotency`) → the
//! registration service ([`registration::Registrar`]) runs each section's
//! script (`seats::scripts`), loads sections Redis lacks
//! (`sync::warmup::Loader`, reading `store`) and hands the events the
//! scripts returned to the shards (`sync::Persistence`) → the shards write
//! them to PostgreSQL (`sync::shard` → `store::engine`) → errors leave as
//! `application/problem+json` (`http::error`).

pub mod access;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod domain;
pub mod health;
pub mod http;
pub mod live;
pub mod metrics;
pub mod registration;
pub mod rules;
pub mod seats;
pub mod seed;
pub mod startup;
pub mod state;
pub mod store;
pub mod supervise;
pub mod sync;
pub mod telemetry;
