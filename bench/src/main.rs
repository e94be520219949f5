use clap::Parser;
use herald_bench::config::{Cli, Command};
use herald_bench::{report, runner};

/// mimalloc instead of glibc malloc: the generator shares the box with the nodes it
/// measures, and glibc's allocator was a tenth of its CPU while connecting.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Each worker hands back what it freed while connecting (memory.rs).
        .on_thread_park(herald_bench::memory::on_park)
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
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
