//! What comes in: the configuration files and flags (`config`), and the
//! plan they become once checked (`plan`).

pub mod config;
pub mod plan;
