//! Running a command line tool in a test and reading what it printed.

use std::process::Command;

/// Runs `command`, asserts that it succeeded (its stderr in the panic),
/// and parses its stdout as one JSON value.
pub fn json_output(command: &mut Command) -> serde_json::Value {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} did not start: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}
