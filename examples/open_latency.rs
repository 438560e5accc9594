//! Times `Client::open` (or, with `stat`, `Client::stat`) of one file,
//! COUNT times on one connection, and prints the median and p99 in
//! nanoseconds as JSON. `make bench` compares it with the same call made
//! by an unchanged program under `fdopen-client run`.
//!
//!     cargo run --release --example open_latency -- SOCKET PATH COUNT [open|stat]

use std::time::Instant;

use fdopen::{Client, Mode};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (socket, path, count, stat) = match &args[..] {
        [_, socket, path, count] => (socket, path, count, false),
        [_, socket, path, count, op] if op == "open" || op == "stat" => {
            (socket, path, count, op == "stat")
        }
        _ => return Err("usage: open_latency SOCKET PATH COUNT [open|stat]".into()),
    };
    let count: usize = count.parse()?;
    let mut client = Client::connect(socket)?;
    let mut ns: Vec<u128> = (0..count)
        .map(|_| {
            let start = Instant::now();
            if stat {
                client.stat(path).expect("the bench file may be stat'ed");
            } else {
                let file = client
                    .open(path, Mode::Read)
                    .expect("the bench file is granted");
                drop(file);
            }
            start.elapsed().as_nanos()
        })
        .collect();
    ns.sort_unstable();
    println!(
        "{{\"median_ns\":{},\"p99_ns\":{}}}",
        ns[count / 2],
        ns[count * 99 / 100]
    );
    Ok(())
}
