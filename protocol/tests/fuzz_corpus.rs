//! Runs every committed fuzz corpus file through the same entry points the
//! fuzz targets call (`courier_protocol::fuzz`), on stable Rust. Files named
//! `valid-*` must be accepted by at least one decoder of their target,
//! `junk-*` by none; any other file (e.g. one a fuzzing run added) must
//! simply not panic. Random and mutated inputs run through every target too.
//!
//! Regenerate the seeds with
//! `cargo test -p courier-protocol --lib regenerate_seed_corpus -- --ignored`.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::path::PathBuf;
use std::sync::LazyLock;

use courier_protocol::fuzz::TARGETS;
use proptest::prelude::*;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// A target's files: (name, contents), sorted by name.
type Corpus = Vec<(String, Vec<u8>)>;

fn corpus(target: &str) -> Corpus {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("corpus for {target}: {e}"))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_corpus_directory() {
    let on_disk: Vec<String> =
        std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
    for (target, _) in TARGETS {
        assert!(
            on_disk.iter().any(|d| d == target),
            "no corpus for {target}"
        );
        let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/fuzz_targets")
            .join(format!("{target}.rs"));
        assert!(source.exists(), "no fuzz target file for {target}");
    }
}

#[test]
fn seed_corpus_decodes_as_labelled() {
    for &(target, run) in TARGETS {
        let files = corpus(target);
        assert!(
            files.iter().any(|(n, _)| n.starts_with("valid-"))
                && files.iter().any(|(n, _)| n.starts_with("junk-")),
            "{target} needs valid and junk seeds"
        );
        for (name, bytes) in files {
            let accepted = run(&bytes);
            if name.starts_with("valid-") {
                assert!(accepted > 0, "{target}/{name} was refused");
            } else if name.starts_with("junk-") {
                assert_eq!(accepted, 0, "{target}/{name} was accepted");
            }
        }
    }
}

/// Every target's corpus, read once for the mutation test.
static SEEDS: LazyLock<Vec<Corpus>> =
    LazyLock::new(|| TARGETS.iter().map(|(target, _)| corpus(target)).collect());

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        for &(_, run) in TARGETS {
            run(&data);
            // The binary targets also see it behind a valid version byte.
            let mut framed = vec![1];
            framed.extend_from_slice(&data);
            run(&framed);
        }
    }

    #[test]
    fn mutated_seeds_never_panic(
        pick in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        for (&(_, run), files) in TARGETS.iter().zip(SEEDS.iter()) {
            let (_, seed) = pick.get(files);
            let mut data = seed.clone();
            if data.is_empty() {
                continue;
            }
            for (at, x) in &flips {
                let i = at.index(data.len());
                data[i] ^= x;
            }
            run(&data);
            run(&data[..cut.index(data.len())]);
        }
    }
}
