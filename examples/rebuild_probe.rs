//! Opens a store over an existing data directory and reports the rebuild rate (for profiling).
//! Usage: `rebuild_probe DATA_DIR`
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: rebuild_probe DATA_DIR");
    let started = std::time::Instant::now();
    let store =
        hybridstore::Store::open_blocking(hybridstore::StoreConfig::new(dir)).expect("open");
    let end = store.durable_end();
    let elapsed = started.elapsed();
    println!(
        "{} events in {elapsed:?}: {:.0} events/s",
        end.0,
        end.0 as f64 / elapsed.as_secs_f64()
    );
}
