//! Every fuzz target on its committed corpus (`fuzz/corpus/TARGET/`) and crash reproductions
//! (`fuzz/artifacts/TARGET/`, kept as regression inputs), then on mutations of the corpus for
//! `SLUICE_FUZZ_SECONDS` per target (2 by default): bytes flipped, inserted, deleted and
//! repeated, corpus entries spliced. The mutations come from a fixed seed so that CI is
//! reproducible; `SLUICE_FUZZ_SEED=N` picks another and `SLUICE_FUZZ_SEED=random` one from the
//! clock (printed). Not coverage-guided (that is `bench/fuzz.sh`), but a panic anywhere fails the
//! test with the input that caused it.
//!
//! The process runs under a 6 GiB address-space limit, so that an input making a parser reserve
//! more than any 32-bit length can ask for (a table's count times its entry size, a 64-bit box
//! size) aborts here on any machine instead of passing where memory is plentiful. Reservations of
//! up to 4 GiB from a 32-bit length that the file then does not fill (symphonia zero-fills buffers
//! before reading into them) are let through: Linux maps such a buffer without committing memory
//! and the read fails at the end of the file.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

/// A small deterministic generator (xorshift64*), enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to the parsers, inserted whole.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"-1",
    b"1e999",
    b"0.5",
    b"\\u0000",
    b"\\ud800",
    b"\xff",
    b"\xc3\xa9",
    b"RIFF",
    b"fLaC",
    b"OggS",
    b"ID3",
    b"\x00\x00",
    b"[[stage]]",
    b"[sink]",
    b"[source]",
    b"kind = ",
    b"=",
    b"\n",
    b"#1\n",
    b"18446744073709551615",
];

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(6) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 => input.insert(at, rng.next() as u8),
            2 if !input.is_empty() => {
                let end = (at + rng.below(16)).min(input.len());
                input.drain(at.min(end)..end);
            }
            3 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                input.splice(at..at, token.iter().copied());
            }
            4 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            _ if !input.is_empty() => {
                let start = rng.below(input.len());
                let end = (start + 1 + rng.below(32)).min(input.len());
                let piece = input[start..end].to_vec();
                input.splice(at..at, piece);
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(1 << 16);
}

fn files(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Runs `body` on `input`; a panic fails the test with the input.
fn run(name: &str, body: fn(&[u8]), input: &[u8], what: &str) {
    // An abort (an allocation failure) cannot be caught: with SLUICE_FUZZ_TRACE=FILE each input
    // is written there first, so the one that aborted the process is left behind.
    if let Some(trace) = std::env::var_os("SLUICE_FUZZ_TRACE") {
        let _ = std::fs::write(trace, input);
    }
    if catch_unwind(AssertUnwindSafe(|| body(input))).is_err() {
        // The input whole, to be committed under fuzz/artifacts/NAME/ once fixed.
        let saved = std::env::temp_dir().join(format!("sluice-fuzz-{name}-{}.bin", input.len()));
        let _ = std::fs::write(&saved, input);
        panic!(
            "target {name} panicked on {what}, saved as {}: {:?}",
            saved.display(),
            String::from_utf8_lossy(&input[..input.len().min(200)])
        );
    }
}

/// Caps this process's virtual memory, so that an oversized allocation fails (and aborts).
fn limit_address_space(bytes: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or fill the struct passed and touch nothing else.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_AS, &mut limit), 0);
        limit.rlim_cur = bytes.min(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_AS, &limit), 0);
    }
}

#[test]
fn every_target_survives_its_corpus_its_crashes_and_mutations_of_them() {
    let seconds: f64 = std::env::var("SLUICE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let seed: u64 = match std::env::var("SLUICE_FUZZ_SEED").ok().as_deref() {
        None => 0x5EED_F00D,
        Some("random") => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        }
        Some(n) => n.parse().expect("SLUICE_FUZZ_SEED is a number or `random`"),
    };
    limit_address_space(6 << 30);
    eprintln!("SLUICE_FUZZ_SEED={seed}");
    let root = sluice_fuzz::repo_root().join("fuzz");
    for &(name, body) in sluice_fuzz::TARGETS {
        let corpus = files(&root.join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} is empty");
        for (i, input) in corpus.iter().enumerate() {
            run(name, body, input, &format!("corpus entry {i}"));
        }
        for (i, input) in files(&root.join("artifacts").join(name)).iter().enumerate() {
            run(name, body, input, &format!("crash reproduction {i}"));
        }
        let mut rng = Rng(seed ^ name.len() as u64);
        let until = Instant::now() + Duration::from_secs_f64(seconds);
        let mut tried = 0u64;
        while Instant::now() < until {
            let mut input = corpus[rng.below(corpus.len())].clone();
            mutate(&mut rng, &corpus, &mut input);
            run(name, body, &input, "a mutation");
            tried += 1;
        }
        eprintln!("{name}: {} corpus entries, {tried} mutations", corpus.len());
    }
}
