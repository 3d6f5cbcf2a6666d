//! `kiln`: the collector server and operator CLI (see [`kiln_collector::cli`]).

fn main() -> std::process::ExitCode {
    kiln_collector::cli::main()
}
