//! `cortex`: the one binary. Parses the command line and hands over to the
//! library code of each subcommand.

mod cli;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    cli::init_tracing(args.verbose);
    match cli::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cortex: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
