//! `fdopen-server man DIR`: the man pages of both command lines, generated
//! from their clap definitions.
//!
//! The daemon and its subcommands go in section 8, as sshd(8) and
//! nginx(8) do, the client's in section 1: `DIR/man8/fdopen-server*.8`
//! and `DIR/man1/fdopen-client*.1`. The `help` subcommand gets no page
//! (nor a mention in SUBCOMMANDS: it would name a page that does not
//! exist), and no page is named plain `fdopen`, which would shadow libc's
//! fdopen(3).

use std::path::Path;

use clap::CommandFactory;

/// Writes every page under `dir`, creating `man1` and `man8` as needed.
pub fn write(dir: &Path) -> std::io::Result<()> {
    write_pages(super::server::Cli::command(), "8", dir)?;
    write_pages(super::client::Cli::command(), "1", dir)
}

/// The page of `command` and one per visible subcommand, in `section`.
fn write_pages(command: clap::Command, section: &str, dir: &Path) -> std::io::Result<()> {
    let command = command.disable_help_subcommand(true);
    let dir = dir.join(format!("man{section}"));
    std::fs::create_dir_all(&dir)?;
    let name = command.get_name().to_owned();
    render(command.clone(), &name, section, &dir)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_name = format!("{name}-{}", sub.get_name());
        render(sub.clone().name(sub_name.clone()), &sub_name, section, &dir)?;
    }
    Ok(())
}

fn render(command: clap::Command, name: &str, section: &str, dir: &Path) -> std::io::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .section(section)
        .render(&mut page)?;
    std::fs::write(dir.join(format!("{name}.{section}")), page)
}
