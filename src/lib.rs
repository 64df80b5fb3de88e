//! deployer: takes a service to running, healthy and registered in six
//! phases (Validation, Transfer, Build, Start Service, Verify Health,
//! Register), and rolls back by itself when a phase fails.
//!
//! Data flows one way: input (`config`) → validated plan (`plan`) → engine
//! (`engine`) → effects through runtimes (`runtime`), the store (`store`) and
//! the registry (`registry`). The CLI (`cli`) and the HTTP API (`api`) are
//! thin front ends over the same engine.

pub mod api;
pub mod backup;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod dotenv;
pub mod engine;
pub mod error;
pub mod git;
pub mod health;
pub mod host;
pub mod lock;
pub mod logwriter;
pub mod model;
pub mod notify;
pub mod output;
pub mod pipeline;
pub mod plan;
pub mod proxy;
pub mod python;
pub mod registry;
pub mod release;
pub mod report;
pub mod runtime;
pub mod secret;
pub mod site;
pub mod ssh;
pub mod store;
