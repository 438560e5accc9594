//! The shell completion scripts the binaries print, exercised in the
//! shell itself: bash sources the script and calls its completion
//! function as it would on <TAB>, with COMP_WORDS and COMP_CWORD set.

mod common;

use std::process::Command;

use common::{CLIENT, SERVER};

/// What bash's completion for `words` (the last one being completed)
/// offers, with the script `binary completions bash` prints.
fn complete_in_bash(binary: &str, words: &[&str]) -> Option<Vec<String>> {
    if Command::new("bash").arg("--version").output().is_err() {
        eprintln!("skipped: no bash here");
        return None;
    }
    let name = words[0];
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let script = format!(
        r#"source <("$BINARY" completions bash) || exit 1
COMP_WORDS=({words})
COMP_CWORD={cword}
COMP_LINE="${{COMP_WORDS[*]}}"
COMP_POINT=${{#COMP_LINE}}
function=$(complete -p {name} | sed -n 's/.*-F \([^ ]*\).*/\1/p')
"$function" {name} "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}"
"#,
        words = quoted.join(" "),
        cword = words.len() - 1,
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &script])
        .env("BINARY", binary)
        // An empty directory: a fallback to file names completes nothing.
        .current_dir(common::scratch().path())
        .output()
        .unwrap();
    common::assert_succeeded(&out);
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

#[test]
fn bash_completes_mode_values_after_a_client_subcommand() {
    let Some(offered) = complete_in_bash(CLIENT, &["fdopen-client", "open", "--mode", ""]) else {
        return;
    };
    for mode in ["read", "write", "append", "readwrite"] {
        assert!(offered.iter().any(|o| o == mode), "{mode}: {offered:?}");
    }
}

#[test]
fn bash_completes_a_subcommands_flags_and_the_subcommands() {
    let Some(offered) = complete_in_bash(CLIENT, &["fdopen-client", "open", "--"]) else {
        return;
    };
    assert!(offered.iter().any(|o| o == "--mode"), "{offered:?}");
    assert!(offered.iter().any(|o| o == "--create"), "{offered:?}");
    let Some(offered) = complete_in_bash(CLIENT, &["fdopen-client", ""]) else {
        return;
    };
    assert!(offered.iter().any(|o| o == "open"), "{offered:?}");
    let Some(offered) = complete_in_bash(SERVER, &["fdopen-server", "serve", "--log-level", ""])
    else {
        return;
    };
    assert_eq!(offered, ["error", "warn", "info", "debug"]);
}
