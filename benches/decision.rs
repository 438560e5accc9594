//! Micro-benchmark of the policy decision alone (no filesystem): how long
//! `candidates` + `judge` take for policies of 100 and 10,000 rules, on a
//! hit and on a miss. Target (issues 5 and 11): at most 2 µs at 10,000
//! rules, with identity conditions (units, cgroups) in them.
//!
//!     cargo bench --bench decision
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use fdopen::decision::Candidates;
use fdopen::peer::PeerIdentity;
use fdopen::policy::Policy;
use fdopen::protocol::Mode;
use fdopen::safe_open::{FileFacts, FileKind};

/// `unrelated` rules shaped like real ones, one allow rule for /data and a deny.
fn policy(unrelated: usize) -> Policy {
    let mut rules = Vec::new();
    for i in 0..unrelated {
        // Every other rule names who may use it by unit or by cgroup.
        let who = match i % 4 {
            0 => format!(r#","units":["svc{i}@*.service"]"#),
            2 => format!(r#","cgroups":["/system.slice/svc{i}.service/**"]"#),
            _ => String::new(),
        };
        rules.push(format!(
            r#"{{"name":"unrelated-{i}","paths":["/srv/app{i}/**/*.log","/var/lib/svc{i}/[a-f]*/data-?.bin"],"modes":["read","append"],"max_size":"10MiB","min_size":1,"max_age":"30d"{who}}}"#
        ));
    }
    rules.push(
        r#"{"name":"data","paths":["/data/**/*.log"],"max_size":"1MiB","units":["app.service","web@*.service"]}"#
            .into(),
    );
    rules.push(
        r#"{"name":"no-batch","effect":"deny","paths":["/data/**"],"cgroups":["/batch.slice/**"]}"#
            .into(),
    );
    rules.push(r#"{"name":"no-keys","effect":"deny","paths":["/**/*.key"]}"#.into());
    let text = format!(r#"{{"rules":[{}]}}"#, rules.join(","));
    Policy::from_str(Path::new("bench.json"), &text).unwrap()
}

fn time_per_call(mut f: impl FnMut()) -> Duration {
    for _ in 0..1000 {
        f();
    }
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let n = 20_000;
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        best = best.min(start.elapsed() / n);
    }
    best
}

fn main() {
    let client = PeerIdentity {
        pid: 1,
        uid: 1000,
        gid: 1000,
        groups: vec![],
        cgroup: Some("/system.slice/app.service".into()),
        foreign_net: false,
        connection: 0,
    };
    let now = SystemTime::now();
    let facts = FileFacts {
        kind: FileKind::Regular,
        size: 500,
        mtime: now,
        dev: 1,
        ino: 1,
        links: 1,
    };
    println!("| rules | hit (granted) | miss (no rule) | deep miss (near an unrelated rule) |");
    println!("| ---: | ---: | ---: | ---: |");
    for unrelated in [98, 9_998] {
        let p = policy(unrelated);
        let mut c = Candidates::default();
        let hit = time_per_call(|| {
            p.candidates(
                Path::new("/data/d3/file0042.log"),
                &client,
                Mode::Read,
                &mut c,
            )
            .unwrap();
            std::hint::black_box(p.judge(&c, &facts, now).unwrap());
        });
        let miss = time_per_call(|| {
            std::hint::black_box(
                p.candidates(
                    Path::new("/home/user/notes.txt"),
                    &client,
                    Mode::Read,
                    &mut c,
                )
                .is_err(),
            );
        });
        let near = time_per_call(|| {
            std::hint::black_box(
                p.candidates(
                    Path::new("/srv/app76/x/y/z.log"),
                    &client,
                    Mode::Read,
                    &mut c,
                )
                .is_err(),
            );
        });
        println!(
            "| {} | {:.2} µs | {:.2} µs | {:.2} µs |",
            p.rules.len(),
            secs(hit),
            secs(miss),
            secs(near)
        );
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
