//! Services deployer talks to: the registry (`registry_client`), where
//! jobs are announced (`notify`), git, and the pipeline's external stages
//! (`stages`).

pub mod git;
pub mod notify;
pub mod registry_client;
pub mod stages;
