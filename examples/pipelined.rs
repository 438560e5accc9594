//! Pipelining: send many requests, then read the answers in order; each
//! grant's descriptor is matched to its response by the client's fd FIFO.
//!
//!     cargo run --example pipelined -- ./fdopen.sock /abs/a /abs/b ...
use fdopen::Client;
use fdopen::protocol::Op;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let socket = args.next().ok_or("usage: pipelined SOCKET PATH...")?;
    let paths: Vec<String> = args.collect();
    let mut client = Client::connect(&socket)?;
    for path in &paths {
        client.send(Op::Open, Some(path.as_ref()), None)?;
    }
    for path in &paths {
        match client.receive()?.into_result() {
            Ok((grant, fd)) => println!("{path}: granted by {} (fd {:?})", grant.rule, fd),
            Err(e) => println!("{path}: {e}"),
        }
    }
    Ok(())
}
