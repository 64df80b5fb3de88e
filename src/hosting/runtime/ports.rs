//! Who listens on a port: the processes holding its listening socket, with
//! their session, process group, cgroup and command line. Verify Health
//! asks it to prove that the release it started is what answers (not a
//! process an earlier, killed deployer left behind), and Start Service
//! names the holder of a port that is not free.
//!
//! On this machine it is read from `/proc/net/tcp{,6}` (the socket's inode)
//! and `/proc/PID/fd`; on a server, from `ss -ltnp` and `/proc/PID`.

use crate::support::cmd::{Cmd, quote};

/// A process holding a listening socket.
#[derive(Clone, Debug, PartialEq)]
pub struct Listener {
    pub pid: u32,
    pub session: u32,
    pub pgrp: u32,
    /// Its cgroup path (`/system.slice/x.service`), empty when unknown.
    pub cgroup: String,
    pub command: String,
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let command = if self.command.is_empty() {
            "?"
        } else {
            &self.command
        };
        write!(f, "pid {} (`{command}`)", self.pid)
    }
}

/// Says who holds a port, for an error: "pid 42 (`python3 -m x`)".
pub fn describe(listeners: &[Listener]) -> String {
    match listeners {
        [] => "a process deployer cannot see".into(),
        _ => listeners
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The listeners of `port` on this machine. A socket whose holder cannot
/// be read (another user's process, deployer not root) is a listener with
/// pid 0: [`unknown`].
pub fn local(port: u16) -> Vec<Listener> {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return Vec::new();
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|l| wanted.iter().any(|w| l.as_os_str() == w.as_str()))
        });
        if holds && let Some(l) = local_process(pid) {
            found.push(l);
        }
    }
    if found.is_empty() {
        found.push(Listener::unknown());
    }
    found
}

impl Listener {
    /// A listening socket whose process deployer cannot see.
    pub fn unknown() -> Listener {
        Listener {
            pid: 0,
            session: 0,
            pgrp: 0,
            cgroup: String::new(),
            command: String::new(),
        }
    }

    pub fn is_unknown(&self) -> bool {
        self.pid == 0
    }
}

/// Whether deployer cannot tell who holds the port (only sockets whose
/// process it cannot see): the ownership check then does not fail a
/// release that answers.
pub fn cannot_tell(listeners: &[Listener]) -> bool {
    !listeners.is_empty() && listeners.iter().all(Listener::is_unknown)
}

/// Whether `root` or a process below it that stayed in its process group
/// or session holds a listening socket on `port`: the quick proof for a
/// release whose processes deployer started (no walk of every process on
/// the machine). A daemon that left the group (`setsid`) does not count:
/// `stop` would not reach it.
pub fn held_below(root: u32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut queue = vec![root];
    let mut seen = 0;
    while let Some(pid) = queue.pop() {
        seen += 1;
        if seen > 256 {
            return false;
        }
        let holds = std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|l| wanted.iter().any(|w| l.as_os_str() == w.as_str()))
            })
        });
        let in_group = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| pgrp_session(&stat))
                .is_some_and(|(g, s)| g == root || s == root)
        };
        if holds && in_group() {
            return true;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            queue.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    false
}

fn local_process(pid: u32) -> Option<Listener> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (pgrp, session) = pgrp_session(&stat)?;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    Some(Listener {
        pid,
        session,
        pgrp,
        cgroup: last_cgroup(&cgroup),
        command: cmdline(&command),
    })
}

/// Process group and session from `/proc/PID/stat`.
fn pgrp_session(stat: &str) -> Option<(u32, u32)> {
    let after = &stat[stat.rfind(')')? + 2..];
    let mut f = after.split_whitespace().skip(2);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

fn last_cgroup(text: &str) -> String {
    text.lines()
        .last()
        .and_then(|l| l.splitn(3, ':').nth(2))
        .unwrap_or("")
        .to_string()
}

fn cmdline(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw).replace('\0', " ");
    let s = s.trim();
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The inodes of sockets listening on `port` (any address): asked of the
/// kernel over netlink (sock_diag, listening sockets only), else read from
/// `/proc/net/tcp{,6}`, which walks every socket of the machine (about
/// 7 ms each here, whatever the load). Empty when neither can be read
/// (see [`listening_inodes_known`]).
pub fn listening_inodes(port: u16) -> Vec<u64> {
    listening_inodes_known(port).unwrap_or_default()
}

/// [`listening_inodes`], or `None` when the kernel could not be asked.
pub fn listening_inodes_known(port: u16) -> Option<Vec<u64>> {
    let diag = [libc::AF_INET, libc::AF_INET6]
        .into_iter()
        .map(|family| diag::listening(family as u8, port))
        .collect::<Option<Vec<Vec<u64>>>>();
    match diag {
        Some(found) => Some(found.into_iter().flatten().collect()),
        None => proc_listening_inodes(port),
    }
}

/// From `/proc/net/tcp{,6}`; `None` when neither table can be read.
fn proc_listening_inodes(port: u16) -> Option<Vec<u64>> {
    let mut inodes = Vec::new();
    let mut read_any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        read_any = true;
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let p = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A"
                && p == Some(port)
                && let Ok(i) = inode.parse()
            {
                inodes.push(i);
            }
        }
    }
    read_any.then_some(inodes)
}

/// The kernel's socket diagnostics over netlink (what `ss` uses), for the
/// listening TCP sockets of one family.
mod diag {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_DUMP: u16 = 0x300;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const TCP_LISTEN: u32 = 10;
    /// nlmsghdr: 16 bytes; inet_diag_req_v2: 56.
    const HEADER: usize = 16;
    const REQUEST: usize = HEADER + 56;
    /// In inet_diag_msg: the source port (big-endian) at 4, the inode at 68.
    const SPORT: usize = 4;
    const INODE: usize = 68;

    /// Inodes of the sockets of `family` listening on `port`; `None` when
    /// the kernel cannot be asked.
    pub fn listening(family: u8, port: u16) -> Option<Vec<u64>> {
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if raw < 0 {
            return None;
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let timeout = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: a valid fd and a timeval of the size given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        let mut req = [0u8; REQUEST];
        req[0..4].copy_from_slice(&(REQUEST as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req[8..12].copy_from_slice(&1u32.to_ne_bytes());
        req[HEADER] = family;
        req[HEADER + 1] = libc::IPPROTO_TCP as u8;
        req[HEADER + 4..HEADER + 8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
        // SAFETY: sends `req`'s bytes on a valid fd (to the kernel).
        let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if sent != REQUEST as isize {
            return None;
        }
        let mut found = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: receives into `buf`, at most its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                return None;
            }
            let mut at = 0usize;
            let n = n as usize;
            while at + HEADER <= n {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().ok()?) as usize;
                let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().ok()?);
                if len < HEADER || at + len > n {
                    return None;
                }
                match kind {
                    NLMSG_DONE => return Some(found),
                    NLMSG_ERROR => return None,
                    _ if len >= HEADER + INODE + 4 => {
                        let msg = &buf[at + HEADER..at + len];
                        let sport = u16::from_be_bytes([msg[SPORT], msg[SPORT + 1]]);
                        let inode = u32::from_ne_bytes(msg[INODE..INODE + 4].try_into().ok()?);
                        if sport == port {
                            found.push(u64::from(inode));
                        }
                    }
                    _ => {}
                }
                at += (len + 3) & !3;
            }
        }
    }
}

/// The command that asks a server who listens on `port`: a line per
/// process, `PID PGRP SESSION CGROUP COMMAND...`; `- 0 0 - -` for a
/// listening socket whose process `ss` does not show, or when `ss` cannot
/// answer.
pub fn remote_cmd(port: u16) -> Cmd {
    let filter = quote(&format!("sport = :{port}"));
    let script = format!(
        "out=$(ss -Hltnp {filter} 2>/dev/null) || {{ echo '- 0 0 - -'; exit 0; }}; \
         [ -n \"$out\" ] || exit 0; \
         pids=$(printf '%s\\n' \"$out\" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); \
         [ -n \"$pids\" ] || {{ echo '- 0 0 - -'; exit 0; }}; \
         for p in $pids; do \
           s=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -d' ' -f3,4); \
           c=$(tail -n1 /proc/$p/cgroup 2>/dev/null | cut -d: -f3-); \
           a=$(tr '\\0' ' ' 2>/dev/null </proc/$p/cmdline | cut -c1-120); \
           printf '%s %s %s %s\\n' \"$p\" \"${{s:-0 0}}\" \"${{c:--}}\" \"${{a:--}}\"; \
         done"
    );
    Cmd::new("sh").args(["-c", &script])
}

/// Reads what [`remote_cmd`] printed.
pub fn parse_remote(out: &str) -> Vec<Listener> {
    out.lines()
        .filter_map(|line| {
            let mut w = line.splitn(5, ' ');
            let pid = w.next()?;
            let pgrp = w.next()?.parse().ok()?;
            let session = w.next()?.parse().ok()?;
            let cgroup = w.next()?;
            let command = w.next().unwrap_or("-").trim();
            Some(Listener {
                pid: pid.parse().unwrap_or(0),
                session,
                pgrp,
                cgroup: if cgroup == "-" { "" } else { cgroup }.to_string(),
                command: if command == "-" { "" } else { command }.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_of_this_process_is_found_with_its_command() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let found = local(port);
        let me = std::process::id();
        assert!(found.iter().any(|x| x.pid == me), "{found:?}");
        assert!(describe(&found).contains(&format!("pid {me}")));
        // netlink and /proc agree.
        assert_eq!(Some(listening_inodes(port)), proc_listening_inodes(port));
        assert!(!listening_inodes(port).is_empty());
        let mut other = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(
            !held_below(other.id(), port),
            "another process's tree does not"
        );
        let _ = other.kill();
        let _ = other.wait();
        drop(l);
        assert!(local(port).iter().all(|x| x.pid != me));
    }

    #[test]
    fn a_group_leader_holding_the_port_below_itself_is_the_quick_proof() {
        use std::os::unix::process::CommandExt;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        // sh leads its group; python below it holds the port.
        let mut leader = std::process::Command::new("sh")
            .args([
                "-c",
                &format!("python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1; :"),
            ])
            .process_group(0)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while listening_inodes(port).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let held = held_below(leader.id(), port);
        // SAFETY: kill(2) on the group the test made.
        unsafe { libc::kill(-(leader.id() as i32), libc::SIGKILL) };
        let _ = leader.wait();
        assert!(held, "the leader's child holds the port");
    }

    #[tokio::test]
    async fn the_servers_command_finds_a_listener_here_as_on_a_server() {
        if !std::path::Path::new("/usr/bin/ss").exists()
            && !std::path::Path::new("/bin/ss").exists()
        {
            return;
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        use crate::support::cmd::Transport;
        let out = crate::support::cmd::LocalTransport
            .exec(&remote_cmd(port), std::time::Duration::from_secs(10))
            .await
            .unwrap();
        let found = parse_remote(&out.stdout);
        let me = std::process::id();
        assert!(
            found
                .iter()
                .any(|x| x.pid == me && x.pgrp > 0 && !x.command.is_empty()),
            "{found:?} from {}",
            out.stdout
        );
    }

    #[test]
    fn the_servers_answer_is_read_line_by_line() {
        let out = "812 812 812 /system.slice/deployer-web-r1.service python3 -m http.server 9000\n\
                   - 0 0 - -\n";
        let got = parse_remote(out);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].pid, 812);
        assert_eq!(got[0].cgroup, "/system.slice/deployer-web-r1.service");
        assert_eq!(got[0].command, "python3 -m http.server 9000");
        assert_eq!(got[1].pid, 0);
        assert_eq!(describe(&got[1..]), "pid 0 (`?`)");
    }
}
