//! `uiommu`: the command line of uiommu.
//!
//! `uiommu probe` builds a platform (the embedded default or a TOML file), routes its devices
//! through the IOMMU core to their drivers, and prints the topology. `uiommu run` runs a
//! program with uiommu's `/dev/iommu` (see [`run`]).
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use uiommu::probe;
use uiommu_core::{DefaultDomainPolicy, ProbePolicy};

mod run;

#[derive(Parser, Debug)]
#[command(
    name = "uiommu",
    version,
    about = "The Linux IOMMU subsystem, in user space"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build a platform, probe every device and print who serves it.
    Probe(ProbeArgs),
    /// Run a program with uiommu's /dev/iommu (LD_PRELOAD of libuiommu_preload.so).
    Run(run::RunArgs),
}

#[derive(clap::Args, Debug)]
struct ProbeArgs {
    /// A platform description (TOML); the embedded x86-like default when absent.
    platform: Option<PathBuf>,
    /// How the core finds each device's driver.
    #[arg(long, value_enum, default_value_t = PolicyArg::ByFwnode)]
    policy: PolicyArg,
    /// The default domain type when drivers state no preference.
    #[arg(long, value_enum, default_value_t = DefaultDomainArg::Strict)]
    default_domain: DefaultDomainArg,
    /// Print JSON instead of a table.
    #[arg(long, conflicts_with = "dot")]
    json: bool,
    /// Print a Graphviz graph instead of a table.
    #[arg(long)]
    dot: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PolicyArg {
    /// Route by fwspec fwnode (Linux's design).
    ByFwnode,
    /// Ask every driver in turn (the rejected alternative).
    CallAll,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DefaultDomainArg {
    /// Translated DMA, synchronous invalidation.
    Strict,
    /// Translated DMA, deferred invalidation.
    Lazy,
    /// Identity mapping.
    Passthrough,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Probe(args) => run_probe(args),
        Command::Run(args) => return run::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("uiommu: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run_probe(args: ProbeArgs) -> Result<(), String> {
    let (origin, text) = match &args.platform {
        Some(path) => (
            path.display().to_string(),
            std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
        ),
        None => (
            "<embedded>".to_string(),
            probe::DEFAULT_PLATFORM.to_string(),
        ),
    };
    let config = uiommu_core::CoreConfig {
        policy: match args.policy {
            PolicyArg::ByFwnode => ProbePolicy::ByFwnode,
            PolicyArg::CallAll => ProbePolicy::CallAll,
        },
        default_domain: match args.default_domain {
            DefaultDomainArg::Strict => DefaultDomainPolicy::Strict,
            DefaultDomainArg::Lazy => DefaultDomainPolicy::Lazy,
            DefaultDomainArg::Passthrough => DefaultDomainPolicy::Passthrough,
        },
    };
    let topology = probe::probe(&origin, &text, config)?;
    let out = if args.json {
        topology.to_json()
    } else if args.dot {
        topology.to_dot()
    } else {
        topology.to_table()
    };
    print!("{out}");
    Ok(())
}
