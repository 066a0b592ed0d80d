//! Processes of the load benches: CPU pinning, CPU time and memory read
//! from `/proc`, ports, and stopping what the bench started (by pid only).
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Pins every thread of `pid` to `cpu` (a `taskset -c` list).
pub fn pin(pid: u32, cpu: &str) {
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", cpu, &pid.to_string()])
        .stdout(Stdio::null())
        .status();
}

/// User + system CPU time of `pid` so far, in clock ticks (fields 14 and
/// 15 of its stat); 0 if it is gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// The sum of `cpu_ticks` over `pids`.
pub fn cpu_ticks_all(pids: &[u32]) -> u64 {
    pids.iter().map(|p| cpu_ticks(*p)).sum()
}

pub fn ticks_per_sec() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Direct children of `pid` (e.g. nginx's workers).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`).
pub fn status_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_listening(port: u16) {
    for _ in 0..1200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listening on {port}");
}

/// Sends `signal` to `pid` (the bench's own children only).
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Stops a child the bench started: SIGTERM, up to 5 s to exit, then
/// SIGKILL. Any children it leaves behind (by pid, read before) get the same.
pub fn stop(child: &mut Child) {
    let pid = child.id();
    let orphans = children(pid);
    signal(pid, "TERM");
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !matches!(child.try_wait(), Ok(Some(_))) {
        let _ = child.kill();
        let _ = child.wait();
    }
    for p in orphans {
        if std::path::Path::new(&format!("/proc/{p}")).exists() {
            signal(p, "KILL");
        }
    }
}

/// Raises this process's soft open-file limit to its hard limit (children
/// inherit it); returns the limit now in force.
pub fn raise_nofile() -> u64 {
    let me = std::process::id().to_string();
    let hard = Command::new("prlimit")
        .args([
            "--pid",
            &me,
            "--nofile",
            "--raw",
            "--noheadings",
            "-o",
            "HARD",
        ])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .ok()
        });
    if let Some(h) = hard {
        let _ = Command::new("prlimit")
            .args(["--pid", &me, &format!("--nofile={h}:{h}")])
            .status();
    }
    Command::new("prlimit")
        .args([
            "--pid",
            &me,
            "--nofile",
            "--raw",
            "--noheadings",
            "-o",
            "SOFT",
        ])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(1024)
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
