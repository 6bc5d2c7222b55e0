//! `drover-vmm`: the VMM process on its own (`drover vmm` is the same thing inside the
//! one `drover` binary). See `vmm::process`.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "drover-vmm", about = "Drover's micro-VMM: one VM per process")]
struct Cli {
    #[command(flatten)]
    cli: vmm::process::VmmCli,
}

fn main() {
    std::process::exit(vmm::process::main(Cli::parse().cli));
}
