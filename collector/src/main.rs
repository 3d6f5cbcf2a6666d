//! `kiln`: the collector server and operator CLI (see [`kiln_collector::cli`]).

/// Every request and every stored batch allocates dozens of small buffers on two or three
/// threads at once; with glibc's allocator, malloc and free were a tenth of the collector's CPU
/// under the load bench (perf, 10,000 agents saturating it).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    no_transparent_huge_pages();
    kiln_collector::cli::main()
}

/// mimalloc asks for transparent huge pages on the memory it maps (`MADV_HUGEPAGE`), so the
/// first touch of each thread's heap makes the kernel zero a whole 2 MiB page where a few
/// 4 KiB ones were wanted. The first report over 10,000 nodes in a fresh collector then cost
/// three times the CPU of any later one (perf: two thirds of it in the kernel's
/// `clear_page_erms`): 88–126 ms against 33–37 ms with huge pages off, six fresh processes
/// each, idle — and under ingest, where the readers run at idle priority, that was the one
/// load past the pages' 200 ms budget. Resident memory falls by a third as well. This is what
/// `MIMALLOC_ALLOW_THP=0` does, for the whole process; failing, it changes nothing but speed.
fn no_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and sets one flag of this process.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}
