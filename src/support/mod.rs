//! Small tools every part uses: commands as data (`cmd`), secrets,
//! errors, file locks (`flock`), the `.env` reader and log files.

pub mod cmd;
pub mod dotenv;
pub mod error;
pub mod flock;
pub mod logwriter;
pub mod secret;
