//! Parks COUNT idle Unix sockets with a server, then measures how long a
//! wake-up takes to reach a subscriber, and the server's memory and
//! threads while it holds them. Prints one JSON line. Run by
//! `bench/park_bench.py` (part of `make bench`).
//!
//!     park_bench SOCKET SERVER_PID COUNT WAKES

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use fdopen::{Client, WakeEvent};

fn status_field(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, pid, count, wakes] = &args[..] else {
        return Err("usage: park_bench SOCKET SERVER_PID COUNT WAKES".into());
    };
    let (count, wakes): (usize, usize) = (count.parse()?, wakes.parse()?);
    let rss_before = status_field(pid, "VmRSS:");
    let mut parker = Client::connect(socket)?;
    let mut remotes = Vec::with_capacity(count);
    for i in 0..count {
        let (parked, remote) = UnixStream::pair()?;
        parker.park(&format!("bench/{i}"), parked.as_fd(), None)?;
        remotes.push(remote);
    }
    let rss = status_field(pid, "VmRSS:");
    let threads = status_field(pid, "Threads:");
    let mut wakeups = Client::connect(socket)?.wake("bench/", None)?;
    let mut latencies = Vec::with_capacity(wakes);
    // A spread of sockets, each written once: a wake-up each.
    let step = (count / wakes.max(1)).max(1);
    for k in 0..wakes.min(count) {
        let i = k * step;
        let start = Instant::now();
        remotes[i].write_all(b"!")?;
        let woken = wakeups.next().ok_or("subscription closed")??;
        latencies.push(start.elapsed().as_micros() as u64);
        if woken.name != format!("bench/{i}") || !matches!(woken.event, WakeEvent::Readable(_)) {
            return Err(format!("woke {} for bench/{i}", woken.name).into());
        }
    }
    latencies.sort_unstable();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "{{\"parked\":{count},\"rss_before_kb\":{rss_before},\"rss_kb\":{rss},\"threads\":{threads},\"wake_p50_us\":{},\"wake_p99_us\":{}}}",
        pick(0.5),
        pick(0.99)
    );
    Ok(())
}
