//! `completions SHELL`: the shell completion scripts of both binaries.
//!
//! clap_complete's bash script for a binary whose name holds a hyphen
//! completes nothing after a subcommand (clap-rs/clap#6421): it dispatches
//! `fdopen-client open` to `fdopen__client__subcmd__open` but names the
//! arm that completes it `fdopen__subcmd__client__subcmd__open`. The
//! script is repaired here, before anyone sources it.

use clap::CommandFactory;
use clap_complete::Shell;

/// The separator clap_complete puts between the words of a command path.
const SEP: &str = "__subcmd__";

/// Writes the completion script of `C`, installed as `name`, to stdout.
pub fn print<C: CommandFactory>(shell: Shell, name: &str) {
    use std::io::Write;
    let script = generate(&mut C::command(), shell, name);
    let _ = std::io::stdout().lock().write_all(script.as_bytes());
}

/// The script for `cmd`, with the bash one repaired.
pub fn generate(cmd: &mut clap::Command, shell: Shell, name: &str) -> String {
    let mut script = Vec::new();
    clap_complete::generate(shell, cmd, name, &mut script);
    let script = String::from_utf8(script).expect("clap_complete writes UTF-8");
    match shell {
        Shell::Bash => repair_bash(script, name),
        _ => script,
    }
}

/// Names every subcommand arm as the dispatch loop does: the binary's
/// hyphens as `__`, not as the separator of subcommands.
fn repair_bash(script: String, name: &str) -> String {
    if !name.contains('-') {
        return script;
    }
    let wrong = format!("{}{SEP}", name.replace('-', SEP));
    let right = format!("{}{SEP}", name.replace('-', "__"));
    script.replace(&wrong, &right)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_binary_names_hyphen_is_rewritten() {
        let script = "fdopen__subcmd__client__subcmd__open)\nfdopen__client__subcmd__open\n";
        assert_eq!(
            repair_bash(script.into(), "fdopen-client"),
            "fdopen__client__subcmd__open)\nfdopen__client__subcmd__open\n"
        );
        assert_eq!(repair_bash("x__subcmd__y".into(), "x"), "x__subcmd__y");
    }
}
