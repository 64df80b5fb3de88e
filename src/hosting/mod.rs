//! Where releases run: a connected host (`site`, `host`, `ssh`), the
//! runtimes that run releases there (`runtime`), the proxy in front of them,
//! their directories and ids (`release`), health checks, backups and
//! Python environments.

pub mod backup;
pub mod health;
pub mod host;
pub mod proxy;
pub mod python;
pub mod release;
pub mod runtime;
pub mod site;
pub mod ssh;
