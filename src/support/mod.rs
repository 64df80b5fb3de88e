//! Small tools every part uses: commands as data (`cmd`), secrets,
//! errors, file locks (`flock`), the `.env` reader and log files.

pub mod cmd;
pub mod dotenv;
pub mod error;
pub mod flock;
pub mod logwriter;
pub mod secret;

/// Creates a directory (and its parents) that only its owner can enter:
/// deployer's state holds logs, environment files and tokens.
pub fn private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}
