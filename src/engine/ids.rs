//! Names the engine gives: job ids and who is deploying.

use chrono::Utc;
use std::io::Read;

/// A job id like the spec's `deploy-abc12345`, made to never collide in
/// practice: 48 bits of milliseconds (so ids sort by time) and 80 random
/// bits from the kernel, in hex.
pub fn new_job_id() -> String {
    let ms = Utc::now().timestamp_millis() as u64 & 0xffff_ffff_ffff;
    let mut random = [0u8; 10];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random));
    if read.is_err() {
        // No kernel randomness: fall back to the std hasher's random keys.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        random[..8].copy_from_slice(&h.finish().to_le_bytes());
    }
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("deploy-{ms:012x}{hex}")
}

/// Who is deploying: `user@host`.
pub fn actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn job_ids_are_unique_and_sort_by_time() {
        let ids: Vec<String> = (0..10_000).map(|_| super::new_job_id()).collect();
        let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        assert!(
            ids.iter()
                .all(|i| i.starts_with("deploy-") && i.len() == 39)
        );
        let first = super::new_job_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(super::new_job_id()[..19] > first[..19]);
    }
}
