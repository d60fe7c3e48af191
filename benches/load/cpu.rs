//! CPU time by process, from /proc: what each part of the system spent on
//! a phase (the server's instances, PostgreSQL's backends, Redis), so a
//! throughput figure can say where an enrolment's CPU went.

use std::path::Path;

/// CPU seconds (user + system, all threads) so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub server: f64,
    /// Every postgres process, with the children they reaped (autovacuum
    /// workers and backends that ended).
    pub postgres: f64,
    /// Of which the backends serving clients (the shards' writes, reads).
    pub postgres_backends: f64,
    pub redis: f64,
}

impl Cpu {
    /// The processes' CPU now: `servers` by pid, PostgreSQL and Redis by
    /// process name (every postgres and redis-server process on the machine:
    /// on this machine they serve the load tool alone while it runs).
    pub fn now(servers: &[u32]) -> Self {
        let mut cpu = Self {
            server: servers
                .iter()
                .filter_map(|pid| seconds(*pid).map(|(_, s)| s))
                .sum(),
            ..Self::default()
        };
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return cpu;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            match seconds(pid) {
                Some((name, s)) if name == "postgres" => {
                    cpu.postgres += s;
                    if is_client_backend(pid) {
                        cpu.postgres_backends += s;
                    }
                }
                Some((name, s)) if name == "redis-server" => cpu.redis += s,
                _ => {}
            }
        }
        cpu
    }

    /// CPU spent between `self` and `later`.
    pub fn until(&self, later: &Self) -> Self {
        Self {
            server: later.server - self.server,
            postgres: later.postgres - self.postgres,
            postgres_backends: later.postgres_backends - self.postgres_backends,
            redis: later.redis - self.redis,
        }
    }
}

/// A backend's title names its user, database and client address
/// ("postgres: 15/main: postgres regbench_… 127.0.0.1(5432) idle"); the
/// walwriter, checkpointer, autovacuum and the postmaster's do not.
fn is_client_backend(pid: u32) -> bool {
    std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains('('))
        .unwrap_or(false)
}

/// (command name, seconds) of `pid`: its user + system time and that of
/// the children it reaped.
fn seconds(pid: u32) -> Option<(String, f64)> {
    let stat =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_string();
    // Fields after the name: state is the 3rd field of the line, utime the
    // 14th and stime the 15th.
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let utime: f64 = rest.get(11)?.parse().ok()?;
    let stime: f64 = rest.get(12)?.parse().ok()?;
    let cutime: f64 = rest.get(13)?.parse().ok()?;
    let cstime: f64 = rest.get(14)?.parse().ok()?;
    Some((name, (utime + stime + cutime + cstime) / ticks_per_second()))
}

fn ticks_per_second() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on.
    100.0
}
