//! `herald-console`: parses flags and runs either the interactive console or one
//! subcommand. Everything else lives in the library (see its crate doc).

use clap::Parser;
use herald_console::cli::{self, Args};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // Neither --node nor a registry: the node on this host, or what was tried (a
    // plain message, not an error with a backtrace: nothing went wrong in here).
    if let Err(not_found) = args.find_local().await {
        eprintln!("{not_found}");
        std::process::exit(1);
    }
    match &args.cmd {
        Some(cmd) => {
            let mut out = std::io::stdout();
            cli::run(&args, cmd, &mut out).await
        }
        None => herald_console::ui::run(args.client(), args.sources(), args.interval).await,
    }
}
