use std::process::ExitCode;

use clap::Parser;
use tracer::{
    cli::{Cli, Command},
    cmd::demo,
    cmd::history,
    cmd::preflight,
    cmd::record,
    cmd::watch::{self, WatchRequest},
    error::Error,
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
                every_drop: args.every_drop,
                ring_bytes: args.ring_bytes,
                hook: args.drop_hook,
                trace_rules: args.trace_rules,
                kernel_log: args.kernel_log,
                no_forwarding_hooks: args.no_forwarding_hooks,
                routing_hook: args.routing_hook,
                ready: None,
                stop: None,
                quiet: false,
                drop_privileges: true,
                pcap: args.pcap,
                snaplen: args.snaplen,
                metrics: args.metrics,
                evidence: args.evidence,
                docker_host: args.docker_host,
                container: args.container,
                journal: args.journal,
            };
            block_on(watch::run(req, std::io::stdout().lock())).and_then(|r| r.map(|_| ()))
        }
        Command::Report(args) => tracer::report::evidence::read_records(&args.dir).map(|records| {
            print!("{}", tracer::report::evidence::render_report(&records));
        }),
        Command::Ports(args) => block_on(preflight::ports(
            preflight_request(args),
            std::io::stdout().lock(),
        ))
        .and_then(|r| r),
        Command::Check(args) => {
            let mut req = preflight_request(args.preflight);
            req.journal = args.journal;
            match block_on(preflight::check(req, std::io::stdout().lock())).and_then(|r| r) {
                Ok(true) => Ok(()),
                // Findings were printed: exit 1, as documented.
                Ok(false) => return ExitCode::from(1),
                Err(e) => Err(e),
            }
        }
        Command::Demo(args) if args.cleanup => {
            for ns in demo::cleanup() {
                println!("removed {ns}");
            }
            Ok(())
        }
        Command::Record(args) => block_on(record::run(record::RecordRequest {
            journal: args.journal,
            netns: args.netns,
            limits: tracer::journal::store::Limits::new(
                args.max_size,
                std::time::Duration::from_secs_f64(args.max_age * 86_400.0),
            ),
            fingerprint_every: args.fingerprint_every,
            duration: args.duration,
        }))
        .and_then(|r| r),
        Command::History(args) => history::run(
            history::HistoryRequest {
                journal: args.journal,
                netns: args.netns,
                key: args.key,
                since: args.since,
                until: args.until,
                unit: args.unit,
                json: args.json,
            },
            std::io::stdout().lock(),
        ),
        Command::Completions(args) => {
            tracer::cli::completions(args.shell, &mut std::io::stdout().lock());
            Ok(())
        }
        Command::Manpages(args) => tracer::cli::manpages(&args.dir).map(|written| {
            for path in written {
                println!("{}", path.display());
            }
        }),
        Command::Demo(args) => {
            match block_on(demo::run(args.drop_hook)).and_then(|r| r) {
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

fn preflight_request(args: tracer::cli::PreflightArgs) -> preflight::PreflightRequest {
    preflight::PreflightRequest {
        docker_host: args.docker_host,
        netns: args.netns,
        ports: args.ports,
        json: args.json,
        journal: None,
    }
}

/// Runs `fut` to completion on a single-threaded runtime. State reads abandoned when the run
/// was stopped may still be running on blocking threads: they are not waited for (each is
/// bounded, but the user asked to stop).
fn block_on<F: std::future::Future>(fut: F) -> Result<F::Output, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("cannot start the async runtime: {e}")))?;
    let out = rt.block_on(fut);
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    Ok(out)
}
