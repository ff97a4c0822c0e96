//! Parsing a daemon's flags from a list of arguments, as its subcommand
//! would (environment variables honoured, defaults filled in): how
//! `cortex up` and the tests build daemon configurations without a
//! command line of their own.

use std::ffi::OsString;

/// `args` (no binary name) parsed as the flags of `T`.
pub fn parse<T, I, A>(args: I) -> Result<T, clap::Error>
where
    T: clap::Args + clap::FromArgMatches,
    I: IntoIterator<Item = A>,
    A: Into<OsString> + Clone,
{
    let command = T::augment_args(clap::Command::new("cortex").no_binary_name(true));
    let matches = command.try_get_matches_from(args)?;
    T::from_arg_matches(&matches)
}

/// The flags of a daemon that has an id (neuron, placement), for a test:
/// `nats_url`, `id`, no metrics port, the rest defaults.
pub fn for_tests<T>(nats_url: &str, id: &str) -> T
where
    T: clap::Args + clap::FromArgMatches,
{
    parse([
        "--nats-url",
        nats_url,
        "--id",
        id,
        "--metrics-listen",
        "off",
    ])
    .expect("default configuration parses")
}
