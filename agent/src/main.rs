//! `kiln-agent`: runs kiln suites on this host (see [`kiln_agent::cli`]).

fn main() -> std::process::ExitCode {
    kiln_agent::cli::main()
}
