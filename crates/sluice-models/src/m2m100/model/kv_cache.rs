//! The decoder's caches: [`DecoderState`], which a generation loop holds from step to step, and
//! the CPU's own self-attention cache ([`KvCache`]), written in place in the layout the CPU step
//! reads.
//!
//! Apart from the network because reordering beams is where the caches' layout matters: the CPU
//! cache moves only the rows and positions a reorder changes, and that bookkeeping reads best on
//! its own.

use candle_core::Tensor;

use super::CResult;
use crate::rowops::{self, KvView};

/// Buffers a CPU decoding step reuses from layer to layer and step to step (written before
/// they are read, so never zeroed again); held with the caches, so a sentence's steps share them.
#[derive(Debug, Clone, Default)]
pub(super) struct StepScratch {
    /// Layer-normalised rows.
    pub(super) h: Vec<f32>,
    /// Attention outputs.
    pub(super) o: Vec<f32>,
}

/// One copy within a cache buffer: `(to, from, count)`.
type RowCopy = (usize, usize, usize);

/// One layer's self-attention keys and values on the CPU, written in place each step: keys in
/// transposed blocks, `[rows, heads, capacity / KEY_BLOCK, head_dim, KEY_BLOCK]` (see
/// [`rowops::KvView`]), values `[rows, capacity, dim]`. Beam reordering moves only the rows whose
/// beam changed, and only the positions decoded so far; candle's cache had to concatenate every
/// step and re-gather every row (17% of a batch-16, 5-beam decode in `memmove`).
#[derive(Debug, Clone, Default)]
pub(super) struct KvCache {
    k: Vec<f32>,
    v: Vec<f32>,
    rows: usize,
    cap: usize,
    dim: usize,
    heads: usize,
    len: usize,
    /// Positions to allocate for at the first step ([`DecoderState::reserve`]).
    want: usize,
}

impl KvCache {
    /// The copies `(to, from, count)` of keys (one per head) and of values that move the first
    /// `len` positions of row `src` (buffers of capacity `from_cap`) to row `dst` (capacity
    /// `to_cap`). An iterator: beam reordering asks for these for every moved row of every layer.
    fn row_copies(
        &self,
        (dst, to_cap): (usize, usize),
        (src, from_cap): (usize, usize),
    ) -> (impl Iterator<Item = RowCopy>, RowCopy) {
        let (dim, len) = (self.dim, self.len);
        let hd = dim / self.heads.max(1);
        let (t, f) = (dst * to_cap * dim, src * from_cap * dim);
        // Keys: per head, the blocks in use (a block's layout does not depend on the capacity).
        let used = len.div_ceil(rowops::KEY_BLOCK) * rowops::KEY_BLOCK * hd;
        let keys = (0..self.heads).map(move |h| (t + h * to_cap * hd, f + h * from_cap * hd, used));
        (keys, (t, f, len * dim))
    }

    /// Copies the first `len` positions of row `src` of `from` to row `dst` of `self`.
    fn copy_row(&mut self, dst: usize, from: &KvCache, src: usize) {
        let (keys, (t, f, n)) = self.row_copies((dst, self.cap), (src, from.cap));
        for (t, f, n) in keys {
            self.k[t..t + n].copy_from_slice(&from.k[f..f + n]);
        }
        self.v[t..t + n].copy_from_slice(&from.v[f..f + n]);
    }

    /// Copies the first `len` positions of row `src` to row `dst` of the same buffers.
    fn move_row(&mut self, dst: usize, src: usize) {
        let (keys, (t, f, n)) = self.row_copies((dst, self.cap), (src, self.cap));
        for (t, f, n) in keys {
            self.k.copy_within(f..f + n, t);
        }
        self.v.copy_within(f..f + n, t);
    }

    /// Appends one position (`rows × dim` keys and values) to every row.
    pub(super) fn push(&mut self, k: &[f32], v: &[f32], rows: usize, dim: usize, heads: usize) {
        if self.cap == 0 || self.len == self.cap || self.rows != rows || self.dim != dim {
            // The reserved length, or doubling past it (a caller that decodes further).
            let cap = if self.cap == 0 && self.want > 0 {
                self.want
            } else {
                (self.cap * 2).max(32)
            };
            let cap = cap.max(self.len + 1);
            let cap = cap.div_ceil(rowops::KEY_BLOCK) * rowops::KEY_BLOCK;
            let mut grown = KvCache {
                k: vec![0f32; rows * cap * dim],
                v: vec![0f32; rows * cap * dim],
                rows,
                cap,
                dim,
                heads,
                len: self.len,
                want: self.want,
            };
            for r in 0..rows.min(self.rows) {
                grown.copy_row(r, self, r);
            }
            *self = grown;
        }
        let (cap, len) = (self.cap, self.len);
        let hd = dim / heads.max(1);
        let write = |((kr, vr), r): ((&mut [f32], &mut [f32]), usize)| {
            for (h, kh) in k[r * dim..(r + 1) * dim].chunks_exact(hd).enumerate() {
                let head = &mut kr[h * cap * hd..];
                for (i, &x) in kh.iter().enumerate() {
                    head[rowops::key_offset(hd, i, len)] = x;
                }
            }
            vr[len * dim..(len + 1) * dim].copy_from_slice(&v[r * dim..(r + 1) * dim]);
        };
        // Each key element goes to its own cache line: rows are written on every thread.
        use rayon::prelude::*;
        self.k
            .par_chunks_mut(cap * dim)
            .zip(self.v.par_chunks_mut(cap * dim))
            .zip(0..rows)
            .for_each(write);
        self.len += 1;
    }

    /// Row `i` becomes old row `rows[i]`; rows past `rows.len()` are dropped. `aside` holds
    /// the sources that are also overwritten meanwhile; a caller reuses it across layers and
    /// steps, and it is filled by appending, so nothing is zeroed first.
    fn select(&mut self, rows: &[u32], aside: &mut Vec<f32>) {
        let moved: Vec<(usize, usize)> = rows
            .iter()
            .enumerate()
            .filter(|&(i, &src)| i != src as usize)
            .map(|(i, &src)| (i, src as usize))
            .collect();
        let mut overwritten = vec![false; self.rows.max(rows.len())];
        for &(dst, _) in &moved {
            overwritten[dst] = true;
        }
        let mut saved: Vec<usize> = moved
            .iter()
            .map(|m| m.1)
            .filter(|&src| overwritten[src])
            .collect();
        saved.sort_unstable();
        saved.dedup();
        // Each saved row: its key blocks head by head, then its values.
        aside.clear();
        for &src in &saved {
            let (keys, (_, f, n)) = self.row_copies((src, self.cap), (src, self.cap));
            for (_, f, n) in keys {
                aside.extend_from_slice(&self.k[f..f + n]);
            }
            aside.extend_from_slice(&self.v[f..f + n]);
        }
        let per_row = aside.len() / saved.len().max(1);
        for &(dst, src) in &moved {
            match saved.binary_search(&src) {
                Ok(i) => {
                    let mut from = &aside[i * per_row..(i + 1) * per_row];
                    let (keys, (t, _, n)) = self.row_copies((dst, self.cap), (src, self.cap));
                    for (t, _, n) in keys {
                        self.k[t..t + n].copy_from_slice(&from[..n]);
                        from = &from[n..];
                    }
                    self.v[t..t + n].copy_from_slice(from);
                }
                Err(_) => self.move_row(dst, src),
            }
        }
        self.rows = rows.len();
    }

    /// A view of groups of one row each.
    pub(super) fn view(&self) -> KvView<'_> {
        let hd = self.dim / self.heads.max(1);
        KvView {
            k: &self.k,
            v: &self.v,
            len: self.len,
            hd,
            k_group: self.cap * self.dim,
            k_head: hd * self.cap,
            v_group: self.cap * self.dim,
            v_head: hd,
            v_pos: self.dim,
        }
    }
}

/// A layer's self-attention cache: candle tensors (GPU), or a [`KvCache`] (CPU).
#[derive(Debug, Clone)]
pub(super) enum SelfKv {
    Tensors(Option<(Tensor, Tensor)>),
    Cpu(KvCache),
}

/// Decoder caches for sentences being generated together, each as `beams` consecutive rows.
#[derive(Debug, Clone)]
pub struct DecoderState {
    /// Per layer: self-attention keys and values so far.
    pub(super) self_kv: Vec<SelfKv>,
    /// Per layer: cross-attention keys and values of each sentence, `[sentences, heads, src,
    /// head_dim]` (keys in transposed blocks on the CPU, `[sentences, heads, blocks, head_dim,
    /// KEY_BLOCK]`, see [`rowops::KvView`]), shared by its beams.
    pub(super) cross_kv: Vec<(Tensor, Tensor)>,
    /// Source mask of each sentence.
    pub(super) mask: Tensor,
    /// Decoder rows per sentence.
    pub(super) beams: usize,
    /// Tokens already decoded per row.
    pub(super) len: usize,
    /// Buffers of the CPU decoding step.
    pub(super) scratch: StepScratch,
}

impl DecoderState {
    /// Sizes the key/value caches for `positions` decoded tokens before the first step, so they
    /// are allocated once instead of grown (a grown cache is copied, and the old one freed while
    /// the new one is live).
    pub fn reserve(&mut self, positions: usize) {
        for kv in self.self_kv.iter_mut() {
            if let SelfKv::Cpu(cache) = kv {
                cache.want = positions;
            }
        }
    }

    /// Sentences in the batch.
    pub fn sentences(&self) -> usize {
        self.mask.dims()[0]
    }

    /// Keeps the rows `rows` (in that order, repeats allowed: beams are reordered this way),
    /// which must be `beams` rows for each sentence of `sentences` (indices of the sentences
    /// kept, in order). Sentences no longer listed leave the batch.
    pub fn select(&mut self, sentences: &[u32], rows: &[u32]) -> CResult<()> {
        debug_assert_eq!(rows.len(), sentences.len() * self.beams);
        let identity = |v: &[u32], n: usize| {
            v.len() == n && v.iter().enumerate().all(|(i, &r)| r as usize == i)
        };
        let n_rows = self.sentences() * self.beams;
        if !identity(rows, n_rows) {
            let idx = Tensor::new(rows, self.mask.device())?;
            // The layers' CPU caches are independent: a share of them on each thread, one after
            // another with one aside buffer per thread (beam reordering on the decoding thread
            // alone was a tenth of a batch-16, 5-beam step in `memmove`).
            let layers = self.self_kv.len();
            let per_thread = layers.div_ceil(rayon::current_num_threads().max(1)).max(1);
            let reorder = |share: &mut [SelfKv]| -> CResult<()> {
                let mut aside = Vec::new();
                for kv in share {
                    match kv {
                        SelfKv::Tensors(Some(kv)) => {
                            *kv = (kv.0.index_select(&idx, 0)?, kv.1.index_select(&idx, 0)?)
                        }
                        SelfKv::Tensors(None) => {}
                        SelfKv::Cpu(cache) => cache.select(rows, &mut aside),
                    }
                }
                Ok(())
            };
            if idx.device().is_cpu() {
                use rayon::prelude::*;
                self.self_kv
                    .par_chunks_mut(per_thread)
                    .try_for_each(reorder)?;
            } else {
                reorder(&mut self.self_kv)?;
            }
        }
        if !identity(sentences, self.sentences()) {
            let idx = Tensor::new(sentences, self.mask.device())?;
            for kv in self.cross_kv.iter_mut() {
                *kv = (kv.0.index_select(&idx, 0)?, kv.1.index_select(&idx, 0)?);
            }
            self.mask = self.mask.index_select(&idx, 0)?;
        }
        Ok(())
    }
}
