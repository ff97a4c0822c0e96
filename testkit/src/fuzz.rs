//! Corpus-driven fuzzing with proptest. Each target has a committed seed
//! corpus in `fuzz/corpus/<target>/` (plus any seeds its test builds in
//! code); the strategy feeds the seeds unchanged, mutated the way
//! coverage-guided fuzzers mutate (bit flips, boundary integers written
//! over lengths and counts, insertions, deletions, truncation, splices),
//! and as plain random bytes. A failing input, once fixed, goes into the
//! corpus so it is replayed on every run.

use std::path::PathBuf;

use proptest::prelude::*;

/// The corpus folder of `target`.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit sits in the workspace")
        .join("fuzz/corpus")
        .join(target)
}

/// Every file of `target`'s corpus, sorted by name (empty when absent).
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(corpus_dir(target)) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    paths.sort();
    paths
        .iter()
        .filter(|p| p.is_file())
        .map(|p| std::fs::read(p).expect("read a corpus file"))
        .collect()
}

/// Writes `seeds` into `target`'s corpus as `seed-<n>` files (run a fuzz
/// test with `CORTEX_UPDATE_CORPUS=1` to refresh the built-in seeds).
pub fn write_corpus(target: &str, seeds: &[(String, Vec<u8>)]) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).expect("create the corpus folder");
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).expect("write a corpus file");
    }
}

/// Values at the edges of integer ranges: where length and count checks break.
const BOUNDARIES: [u64; 12] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,
];

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit { at: usize, bit: u8 },
    SetByte { at: usize, value: u8 },
    Boundary { at: usize, width: usize, value: u64 },
    Insert { at: usize, bytes_in: Vec<u8> },
    Delete { at: usize, len: usize },
    Duplicate { from: usize, len: usize, to: usize },
    Truncate { keep: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        (at, 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (at, any::<u8>()).prop_map(|(at, value)| Mutation::SetByte { at, value }),
        (
            at,
            prop::sample::select(vec![1usize, 2, 4, 8]),
            prop::sample::select(BOUNDARIES.to_vec())
        )
            .prop_map(|(at, width, value)| Mutation::Boundary { at, width, value }),
        (at, prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes_in)| Mutation::Insert { at, bytes_in }),
        (at, 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (at, 1usize..64, at).prop_map(|(from, len, to)| Mutation::Duplicate { from, len, to }),
        at.prop_map(|keep| Mutation::Truncate { keep }),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    let pos = |at: usize| if len == 0 { 0 } else { at % len };
    match *mutation {
        Mutation::FlipBit { at, bit } if len > 0 => bytes[pos(at)] ^= 1 << bit,
        Mutation::SetByte { at, value } if len > 0 => bytes[pos(at)] = value,
        Mutation::Boundary { at, width, value } if len >= width => {
            let start = pos(at).min(len - width);
            bytes[start..start + width].copy_from_slice(&value.to_le_bytes()[..width]);
        }
        Mutation::Insert { at, ref bytes_in } => {
            let start = pos(at);
            bytes.splice(start..start, bytes_in.iter().copied());
        }
        Mutation::Delete { at, len: n } if len > 0 => {
            let start = pos(at);
            bytes.drain(start..(start + n).min(len));
        }
        Mutation::Duplicate { from, len: n, to } if len > 0 => {
            let start = pos(from);
            let chunk: Vec<u8> = bytes[start..(start + n).min(len)].to_vec();
            let to = pos(to);
            bytes.splice(to..to, chunk);
        }
        Mutation::Truncate { keep } => bytes.truncate(if len == 0 { 0 } else { keep % len }),
        _ => {}
    }
}

/// Inputs for a target: its seeds as they are, seeds with 1 to 8
/// mutations, and random bytes up to `max_random` long.
pub fn inputs(seeds: Vec<Vec<u8>>, max_random: usize) -> BoxedStrategy<Vec<u8>> {
    let random = prop::collection::vec(any::<u8>(), 0..max_random);
    if seeds.is_empty() {
        return random.boxed();
    }
    let seed = prop::sample::select(seeds);
    let mutated = (seed.clone(), prop::collection::vec(mutation(), 1..8)).prop_map(
        |(mut bytes, mutations)| {
            for m in &mutations {
                apply(&mut bytes, m);
            }
            bytes
        },
    );
    prop_oneof![1 => seed, 6 => mutated, 1 => random].boxed()
}

/// A runner configuration of `default_cases` cases (`PROPTEST_CASES`
/// overrides it for longer campaigns), without failure files: a failing
/// input is printed, and goes into the corpus once fixed.
pub fn config(default_cases: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
