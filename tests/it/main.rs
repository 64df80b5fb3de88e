//! The integration tests, one binary (as zero-to-production does): each
//! module drives the real `deployer` binary against real processes, sshd,
//! Docker, systemd hosts, PostgreSQL, nginx and git, sharing `common`.
//! `scripts/test` runs the `swarm_cluster` module on its own afterwards: it turns
//! this machine's Docker engine into a swarm manager and back.

mod common;

mod api;
mod backup;
mod cli;
mod config_docs;
mod crash;
mod dashboard;
mod docker;
mod git;
mod input;
mod lock;
mod monitor;
mod packaging;
mod pipeline;
mod process;
mod proxy;
mod python;
mod register;
mod remote;
mod rollout;
mod sacred_loop;
mod secrets;
mod security;
mod shape;
mod ssh;
mod swarm_cluster;
mod systemd;
