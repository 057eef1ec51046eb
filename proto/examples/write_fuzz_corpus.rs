//! Writes the seed corpus of the fuzz targets (`fuzz/corpus/`) from
//! `proto/tests/fuzz_checks/seeds.rs`, after a wire change:
//! `cargo run -p taskmaster-proto --example write_fuzz_corpus`.
//! The test `fuzz_corpus::seed_corpus_is_current` fails until it is run.

#[path = "../tests/fuzz_checks/mod.rs"]
mod fuzz_checks;
#[path = "../tests/fuzz_checks/seeds.rs"]
mod seeds;

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut written = 0;
    for seed in seeds::seeds() {
        let dir = root.join(seed.target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&seed.name), &seed.bytes)?;
        written += 1;
    }
    println!("{written} seed files written under {}", root.display());
    Ok(())
}
