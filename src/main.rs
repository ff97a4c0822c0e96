//! `cortex`: the one binary. Parses the command line and hands over to the
//! library code of each subcommand.

mod cli;

use std::process::ExitCode;

/// Exit code of a configuration the daemon refuses (BSD `EX_USAGE`).
const EXIT_CONFIG: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    let args = match cli::parse_with_file(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("cortex: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let quiet = !args.command.is_daemon();
    cli::init_tracing(args.verbose, quiet);
    let code = match cli::run(args).await {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("cortex: {error:#}");
            let config = error
                .downcast_ref::<cortex_neuron::NeuronError>()
                .is_some_and(cortex_neuron::NeuronError::is_config)
                || error
                    .downcast_ref::<cortex_ingress::IngressError>()
                    .is_some_and(cortex_ingress::IngressError::is_config)
                || error
                    .downcast_ref::<cortex_placement::PlacementError>()
                    .is_some_and(cortex_placement::PlacementError::is_config);
            if config {
                i32::from(EXIT_CONFIG)
            } else {
                1
            }
        }
    };
    // Exit now: dropping the runtime would wait for blocking tasks (a model
    // load cut short by Ctrl-C) with no signal handler left to stop it.
    std::process::exit(code)
}
