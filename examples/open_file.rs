//! Open a file through an fdopen server and print it.
//!
//!     cargo run --example open_file -- ./fdopen.sock /abs/path/to/file
use std::io::Read;

use fdopen::{Client, Mode};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(socket), Some(path)) = (args.next(), args.next()) else {
        eprintln!("usage: open_file SOCKET PATH");
        std::process::exit(2);
    };
    let mut client = Client::connect(&socket)?;
    let info = client.hello()?;
    eprintln!("connected to {} {}", info.server, info.version);
    let (mut file, grant) = client.open_with_grant(&path, Mode::Read)?;
    eprintln!("granted by rule {} ({} bytes)", grant.rule, grant.size);
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    print!("{text}");
    Ok(())
}
