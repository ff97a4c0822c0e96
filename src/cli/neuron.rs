//! `cortex neuron`: the per-host daemon (see the `cortex-neuron` crate).

use std::ffi::OsString;

use clap::{ArgMatches, CommandFactory, FromArgMatches};
use cortex_neuron::config_file;
use cortex_neuron::NeuronConfig;

use super::{signal, Cli, Command};

pub async fn run(config: NeuronConfig) -> anyhow::Result<()> {
    cortex_neuron::run(config, signal::shutdown()).await?;
    Ok(())
}

/// Parses the command line; for `cortex neuron --config FILE`, adds the
/// file's settings for the flags neither the command line nor the
/// environment set, and its `[[model]]` profiles.
pub fn parse_with_file(argv: Vec<OsString>) -> Result<Cli, cortex_neuron::config::ConfigError> {
    let command = Cli::command();
    let matches = command.clone().get_matches_from(&argv);
    let (Some(("neuron", sub)), Some(file)) = (
        matches.subcommand(),
        matches
            .subcommand_matches("neuron")
            .and_then(|m: &ArgMatches| m.get_one::<std::path::PathBuf>("config_file")),
    ) else {
        return Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()));
    };
    let neuron_command = command
        .find_subcommand("neuron")
        .expect("the neuron subcommand exists");
    let settings = config_file::read(file, neuron_command, sub)?;
    let mut argv = argv;
    argv.extend(settings.args);
    let matches = command
        .try_get_matches_from(&argv)
        .map_err(|e| cortex_neuron::config::ConfigError(format!("{}: {e}", file.display())))?;
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Command::Neuron(config) = &mut cli.command {
        config.profiles = settings.profiles;
    }
    Ok(cli)
}
