//! deployer: takes a service to running, healthy and registered in six
//! phases (Validation, Transfer, Build, Start Service, Verify Health,
//! Register), and rolls back by itself when a phase fails.
//!
//! Data flows one way: what comes in (`input`: configuration, then the
//! checked plan) → the engine (`engine`: a job as one list of steps) → its
//! effects where releases run (`hosting`: hosts, runtimes, proxy), in the
//! store (`store`) and in the services it talks to (`integrations`). The
//! records (`model`) are shared; `support` holds small tools every part
//! uses and `render` what people read. The CLI (`cli`) and the HTTP API
//! (`api`) are thin front ends over the same engine.

pub mod api;
pub mod cli;
pub mod engine;
pub mod hosting;
pub mod input;
pub mod integrations;
pub mod model;
pub mod render;
pub mod store;
pub mod support;
