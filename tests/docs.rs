//! The configuration reference (`docs/configuration.md`) is generated from
//! the binary's own `--help` and must match it: a flag added, renamed or
//! given another default without regenerating the file fails this test.
//! Regenerate with `CORTEX_UPDATE_DOCS=1 cargo test --test docs`.

use std::process::Command;

const COMMANDS: &[&str] = &[
    "up",
    "neuron",
    "placement",
    "ingress",
    "status",
    "load",
    "unload",
    "pin",
    "unpin",
    "models",
    "bench",
    "events",
    "ping",
];

fn help(command: &str) -> String {
    // No environment: a variable set here would show up as a value.
    let output = Command::new(env!("CARGO_BIN_EXE_cortex"))
        .args([command, "--help"])
        .env_clear()
        .output()
        .unwrap();
    assert!(output.status.success(), "cortex {command} --help failed");
    String::from_utf8(output.stdout).unwrap()
}

fn reference() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from `cortex <command> --help` by `tests/docs.rs` (regenerate with\n\
         `CORTEX_UPDATE_DOCS=1 cargo test --test docs`; the test fails when this file\n\
         and the binary disagree). Every flag also reads the environment variable\n\
         it names; the command line wins over the environment.\n",
    );
    for command in COMMANDS {
        out.push_str(&format!(
            "\n## `cortex {command}`\n\n```text\n{}```\n",
            help(command)
        ));
    }
    out
}

#[test]
fn the_configuration_reference_matches_the_binary() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let generated = reference();
    if std::env::var_os("CORTEX_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/configuration.md is out of date: run `CORTEX_UPDATE_DOCS=1 cargo test --test docs`"
    );
}
