//! Who runs a job: the process (pid and its start time) on this boot of
//! this machine. Written with every pending or running job, so a reader
//! can tell a job whose deployer died (killed, crashed, the machine
//! rebooted) from one that is still running, without a lock or a guess
//! from ages.

/// A process on one boot of this machine.
#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
    pub pid: u32,
    /// Clock ticks after boot when the process started (`/proc/PID/stat`).
    pub start_time: u64,
    pub boot_id: String,
}

impl Owner {
    /// This process.
    pub fn me() -> &'static Owner {
        static ME: std::sync::OnceLock<Owner> = std::sync::OnceLock::new();
        ME.get_or_init(|| {
            let pid = std::process::id();
            Owner {
                pid,
                start_time: start_time(pid).unwrap_or(0),
                boot_id: boot_id(),
            }
        })
    }

    /// The stored form: `PID START_TIME BOOT_ID`.
    pub fn encode(&self) -> String {
        format!("{} {} {}", self.pid, self.start_time, self.boot_id)
    }

    pub fn decode(s: &str) -> Option<Owner> {
        let mut words = s.split_whitespace();
        Some(Owner {
            pid: words.next()?.parse().ok()?,
            start_time: words.next()?.parse().ok()?,
            boot_id: words.next()?.to_string(),
        })
    }

    /// Whether the process still runs: same boot, same pid, same start
    /// time (a reused pid is another process), not a zombie.
    pub fn alive(&self) -> bool {
        if self.boot_id != boot_id() {
            return false;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            return false;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        let live = fields.first().is_some_and(|s| *s != "Z" && *s != "X");
        live && (self.start_time == 0
            || fields.get(19) == Some(&self.start_time.to_string().as_str()))
    }
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// This boot's id; a machine without one reads as one boot.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-boot".into())
}

#[cfg(test)]
mod tests {
    use super::Owner;

    #[test]
    fn this_process_is_alive_and_a_dead_child_or_another_boot_is_not() {
        let me = Owner::me();
        assert!(me.alive());
        assert_eq!(Owner::decode(&me.encode()).as_ref(), Some(me));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = Owner { pid, ..me.clone() };
        assert!(!dead.alive(), "a process that exited");
        let reused = Owner {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(!reused.alive(), "the same pid started at another time");
        let rebooted = Owner {
            boot_id: "another-boot".into(),
            ..me.clone()
        };
        assert!(!rebooted.alive(), "a process of an earlier boot");
    }
}
