use clap::Parser;
use herald_bench::config::{Cli, Command};
use herald_bench::{report, runner};

/// mimalloc instead of glibc malloc: the generator shares the box with the nodes it
/// measures, and glibc's allocator was a tenth of its CPU while connecting.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let rep = runner::run(&args).await?;
            report::emit(&rep, args.json.as_deref())?;
        }
        Command::Ramp(args) => {
            let rep = runner::ramp(&args).await?;
            report::emit(&rep, args.run.json.as_deref())?;
        }
        Command::Merge { inputs, json } => {
            let mut reports = Vec::new();
            for p in &inputs {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                reports.push(serde_json::from_str(&text)?);
            }
            let rep = report::merge(&reports)?;
            report::emit(&rep, json.as_deref())?;
        }
    }
    Ok(())
}
