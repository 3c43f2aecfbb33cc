//! Batch mode's materialised stage outputs: held in memory up to a byte budget, then spilled to
//! length-prefixed MessagePack chunks in a temporary directory (removed when the store is
//! dropped). MessagePack is self-describing, so `serde_json::Value` items round-trip too.
//! The in-memory size is estimated from the encoded size of a sample of items, which costs
//! one encode per 64 items instead of a size walk per item.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Envelope;

const SAMPLE_EVERY: usize = 64;

/// Items between two stages in batch mode.
pub(crate) struct Store<T> {
    mem: Vec<Envelope<T>>,
    chunks: Vec<PathBuf>,
    dir: Arc<tempfile::TempDir>,
    budget: u64,
    sampled_bytes: u64,
    sampled_items: u64,
    pushed: usize,
}

impl<T: Serialize + DeserializeOwned> Store<T> {
    /// An empty store that spills past `budget` bytes into `dir`.
    pub fn new(dir: Arc<tempfile::TempDir>, budget: u64) -> Self {
        Store {
            mem: Vec::new(),
            chunks: Vec::new(),
            dir,
            budget,
            sampled_bytes: 0,
            sampled_items: 0,
            pushed: 0,
        }
    }

    /// Files written so far, for the summary.
    pub fn spilled_chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Adds an item, spilling everything held in memory when the estimate passes the budget.
    pub fn push(&mut self, item: Envelope<T>) -> std::io::Result<()> {
        if self.pushed % SAMPLE_EVERY == 0 {
            let size = rmp_serde::to_vec(&item.value)
                .map_err(std::io::Error::other)?
                .len();
            self.sampled_bytes += size as u64 + item.key.len() as u64 + 16;
            self.sampled_items += 1;
        }
        self.pushed += 1;
        self.mem.push(item);
        let estimate =
            self.sampled_bytes as f64 / self.sampled_items.max(1) as f64 * self.mem.len() as f64;
        if estimate > self.budget as f64 {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> std::io::Result<()> {
        // Stores of consecutive stages share the directory: number chunks across all of them.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = self
            .dir
            .path()
            .join(format!("chunk-{:08}.msgpack", NEXT.fetch_add(1, Relaxed)));
        let mut out = BufWriter::new(File::create(&path)?);
        for item in self.mem.drain(..) {
            let bytes = rmp_serde::to_vec(&(item.seq, &*item.key, &item.value))
                .map_err(std::io::Error::other)?;
            out.write_all(&(bytes.len() as u32).to_le_bytes())?;
            out.write_all(&bytes)?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        self.chunks.push(path);
        Ok(())
    }

    /// Every item: the spilled chunks in order, then what is in memory.
    pub fn drain(self) -> impl Iterator<Item = std::io::Result<Envelope<T>>> {
        let Store {
            mem, chunks, dir, ..
        } = self;
        chunks
            .into_iter()
            .flat_map(move |path| ChunkReader::open(&path, dir.clone()))
            .chain(mem.into_iter().map(Ok))
    }
}

/// Reads one spilled chunk back, deleting it once read.
struct ChunkReader<T> {
    input: Option<BufReader<File>>,
    path: PathBuf,
    _dir: Arc<tempfile::TempDir>,
    failed: Option<std::io::Error>,
    _items: std::marker::PhantomData<T>,
}

impl<T> ChunkReader<T> {
    fn open(path: &Path, dir: Arc<tempfile::TempDir>) -> Self {
        let (input, failed) = match File::open(path) {
            Ok(f) => (Some(BufReader::new(f)), None),
            Err(e) => (None, Some(e)),
        };
        ChunkReader {
            input,
            path: path.to_path_buf(),
            _dir: dir,
            failed,
            _items: std::marker::PhantomData,
        }
    }
}

impl<T: DeserializeOwned> Iterator for ChunkReader<T> {
    type Item = std::io::Result<Envelope<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        let input = self.input.as_mut()?;
        let mut len = [0u8; 4];
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.input = None;
                let _ = std::fs::remove_file(&self.path);
                return None;
            }
            Err(e) => return Some(Err(e)),
        }
        let mut bytes = vec![0u8; u32::from_le_bytes(len) as usize];
        if let Err(e) = input.read_exact(&mut bytes) {
            return Some(Err(e));
        }
        Some(
            rmp_serde::from_slice::<(u64, String, T)>(&bytes)
                .map(|(seq, key, value)| Envelope {
                    seq,
                    key: key.into(),
                    value,
                })
                .map_err(std::io::Error::other),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_past_the_budget_spill_and_come_back_in_order() {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut store = Store::new(dir.clone(), 10_000);
        for i in 0..1000u64 {
            let value = serde_json::json!({"i": i, "pad": "x".repeat(100)});
            store
                .push(Envelope {
                    seq: i,
                    key: i.to_string().into(),
                    value,
                })
                .unwrap();
        }
        assert!(
            store.spilled_chunks() >= 5,
            "{} chunks",
            store.spilled_chunks()
        );
        let back: Vec<_> = store.drain().map(|r| r.unwrap()).collect();
        assert_eq!(back.len(), 1000);
        for (i, e) in back.iter().enumerate() {
            assert_eq!(
                (e.seq, &*e.key, &e.value["i"]),
                (i as u64, i.to_string().as_str(), &serde_json::json!(i))
            );
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "chunks are deleted once read"
        );
    }
}
