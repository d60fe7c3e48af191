//! # registrar — a course registration engine
//!
//! Built for the minute enrollment opens: thousands of students press
//! "register" at once, each must get an answer in milliseconds, no seat is
//! sold twice, and nothing acknowledged is ever lost.
//!
//! ## Layout
//!
//! - [`config`]: layered settings; every limit with its reason.
//! - [`startup`]: [`startup::Application`] wires everything; `main`, tests and
//!   benchmarks all start it the same way.
//! - [`http`]: accept loop, router, handlers by area, problem+json errors.
//! - [`auth`]: HS256 tokens and Argon2id passwords (hashed off the async threads).
//! - [`domain`]: values valid by construction.
//! - [`seats`]: the Redis side, the hot path's source of truth.
//! - [`store`]: the PostgreSQL side, the system of record, and its migrations.
//! - [`sync`]: persistence shards, outbox sweeper, warm-up, reconcile.
//! - [`limits`]: rate limits and failed-login back-off, shared through Redis.
//! - [`audit`]: the promises of SPEC §2 checked against both stores.
//! - [`seed`]: demo data.
//! - [`telemetry`], [`metrics`]: logs and Prometheus metrics.
//!
//! ## A request's way
//!
//! `http::server` accepts (bounded connections, header timeout) →
//! `http::router` resolves the route, checks the method, applies the request
//! deadline and records metrics → the rate limits are charged (client
//! address, and the student when the token is valid) → a handler authenticates the bearer token,
//! reads the body within its limit, and calls `seats` (Redis) or `store`
//! (PostgreSQL) → errors leave as `application/problem+json`.

pub mod audit;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod registration;
pub mod seats;
pub mod seed;
pub mod startup;
pub mod state;
pub mod store;
pub mod supervise;
pub mod sync;
pub mod telemetry;
