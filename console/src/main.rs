//! `herald-console`: parses flags and runs either the interactive console or one
//! subcommand. Everything else lives in the library (see its crate doc).

use clap::Parser;
use herald_console::cli::{self, Args};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.cmd {
        Some(cmd) => {
            let mut out = std::io::stdout();
            cli::run(&args, cmd, &mut out).await
        }
        None => {
            if args.redis.is_none() && args.nodes.is_empty() {
                anyhow::bail!(
                    "no nodes to watch: give --redis URL (or REDIS_URL) or --node ADMIN_URL"
                );
            }
            herald_console::ui::run(args.client(), args.sources(), args.interval).await
        }
    }
}
