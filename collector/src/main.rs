//! `kiln`: the collector server and operator CLI (see [`kiln_collector::cli`]).

/// Every request and every stored batch allocates dozens of small buffers on two or three
/// threads at once; with glibc's allocator, malloc and free were a tenth of the collector's CPU
/// under the load bench (perf, 10,000 agents saturating it).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    kiln_collector::cli::main()
}
