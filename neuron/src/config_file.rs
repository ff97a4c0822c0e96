//! The optional TOML config file. Its keys are the long flag names
//! (`heartbeat-interval = "5s"`, `nats-url = ["nats://a:4222"]`; `_` works
//! as well as `-`), and `[[model]]` tables are model profiles to load at
//! start. Precedence: command line, then environment, then file, then
//! default. The file's settings become extra command-line arguments for
//! the flags that neither the command line nor the environment set, so
//! every value goes through the same parser and validation as a flag.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
use cortex_schemas::ModelProfile;

use crate::config::ConfigError;

/// What the file holds: extra arguments for clap and model profiles.
#[derive(Debug, Default)]
pub struct FileSettings {
    pub args: Vec<OsString>,
    pub profiles: Vec<ModelProfile>,
}

/// Reads `path` and turns it into arguments of `command` (the neuron
/// subcommand) for the flags `matches` did not get from the command line
/// or the environment.
pub fn read(
    path: &Path,
    command: &Command,
    matches: &ArgMatches,
) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
    parse(&text, command, matches).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
}

/// [`read`] on text already in memory.
pub fn parse(
    text: &str,
    command: &Command,
    matches: &ArgMatches,
) -> Result<FileSettings, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError(e.to_string()))?;
    let mut settings = FileSettings::default();
    for (key, value) in table {
        if key == "model" {
            settings.profiles = value
                .try_into::<Vec<ModelProfile>>()
                .map_err(|e| ConfigError(format!("[[model]]: {e}")))?;
            continue;
        }
        let long = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .ok_or_else(|| ConfigError(format!("unknown setting {key:?}")))?;
        if long == "config" {
            return Err(ConfigError("a config file cannot name another".into()));
        }
        let id = arg.get_id().as_str();
        if matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let flag = format!("--{long}");
        let takes_value = arg.get_action().takes_values();
        match value {
            toml::Value::Boolean(on) if !takes_value => {
                if on {
                    settings.args.push(flag.into());
                }
            }
            toml::Value::Array(items) => {
                for item in items {
                    settings
                        .args
                        .push(format!("{flag}={}", scalar(&key, &item)?).into());
                }
            }
            other => settings
                .args
                .push(format!("{flag}={}", scalar(&key, &other)?).into()),
        }
    }
    Ok(settings)
}

fn scalar(key: &str, value: &toml::Value) -> Result<String, ConfigError> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => Err(ConfigError(format!(
            "setting {key:?}: expected a string, number or boolean"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args, FromArgMatches};

    use super::*;
    use crate::config::NeuronConfig;

    fn command() -> Command {
        NeuronConfig::augment_args(Command::new("neuron").no_binary_name(true))
    }

    fn parse_with_file(cli: &[&str], file: &str) -> NeuronConfig {
        let matches = command().get_matches_from(cli);
        let settings = parse(file, &command(), &matches).unwrap();
        let mut argv: Vec<OsString> = cli.iter().map(OsString::from).collect();
        argv.extend(settings.args);
        let mut config = NeuronConfig::from_arg_matches(&command().get_matches_from(argv)).unwrap();
        config.profiles = settings.profiles;
        config
    }

    #[test]
    fn the_file_fills_what_the_command_line_left_out() {
        let config = parse_with_file(
            &["--id", "from-cli"],
            r#"
            id = "from-file"
            heartbeat_interval = "5s"
            nats-url = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
            fast-prompt = true
            max_queue = 3
            [[model]]
            id = "smol"
            source = "/models/smol.gguf"
            max_concurrency = 2
            "#,
        );
        assert_eq!(config.id.as_deref(), Some("from-cli"));
        assert_eq!(config.heartbeat_interval, std::time::Duration::from_secs(5));
        assert_eq!(config.nats.servers.len(), 2);
        assert!(config.fast_prompt);
        assert_eq!(config.max_queue, 3);
        assert_eq!(config.profiles[0].id, "smol");
        assert_eq!(config.profiles[0].max_concurrency, Some(2));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let matches = command().get_matches_from(Vec::<&str>::new());
        let error = parse("heartbeat = 3", &command(), &matches).unwrap_err();
        assert!(error.0.contains("\"heartbeat\""), "{error}");
        let error = parse("[[model]]\nid = 3", &command(), &matches).unwrap_err();
        assert!(error.0.contains("[[model]]"), "{error}");
        let error = parse("id = [", &command(), &matches).unwrap_err();
        assert!(error.0.contains("line 1"), "{error}");
    }
}
