//! One integration-test binary: every test starts the real application on
//! port 0 with its own database and Redis namespace (see `helpers`).
//! Set TEST_LOG=1 to see the application's logs.

mod admin;
mod auth;
mod authz;
mod catalog;
mod cluster;
mod connections;
mod dependencies;
mod engine;
mod failover;
mod faults;
mod helpers;
mod input;
#[path = "../kit/mod.rs"]
mod kit;
mod limits;
mod live;
mod me;
mod migrations;
mod model;
mod observability;
mod offers;
mod openapi;
mod operations;
mod ordinary;
mod page;
mod partitions;
mod probes;
mod processes;
mod reconcile;
mod recovery;
mod revocation;
mod rolling;
mod rules;
mod scripts;
mod security;
mod shutdown;
mod writers;
