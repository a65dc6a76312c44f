use std::process::ExitCode;

use clap::Parser;
use tracer::{
    cli::{Cli, Command},
    demo,
    error::Error,
    watch::{self, WatchRequest},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Watch(args) => {
            let req = WatchRequest {
                ports: args.ports,
                addrs: args.addrs,
                netns: args.netns,
                duration: args.duration,
                json: args.json,
                include_teardown: args.include_teardown,
                ring_bytes: args.ring_bytes,
                hook: args.drop_hook,
                trace_rules: args.trace_rules,
                ready: None,
                stop: None,
                quiet: false,
            };
            runtime().and_then(|rt| {
                rt.block_on(watch::run(req, std::io::stdout().lock()))
                    .map(|_| ())
            })
        }
        Command::Demo(args) if args.cleanup => {
            for ns in demo::cleanup() {
                println!("removed {ns}");
            }
            Ok(())
        }
        Command::Demo(args) => {
            match runtime().and_then(|rt| rt.block_on(demo::run(args.drop_hook))) {
                Ok(true) => Ok(()),
                // Some step was attributed wrong (or the run was interrupted): the table says which.
                Ok(false) => return ExitCode::from(1),
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("droptrace: {err}");
            ExitCode::from(err.exit_code() as u8)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("cannot start the async runtime: {e}")))
}
