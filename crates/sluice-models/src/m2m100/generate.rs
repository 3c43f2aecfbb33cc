//! Greedy and beam-search decoding, reproducing transformers' `generate` token for token.
//!
//! Beam search follows transformers 5's vectorised algorithm: per sentence the top `2 × beams`
//! continuations are kept, finished candidates only count when among the top `beams`, scores of
//! finished hypotheses are divided by `generated_len ^ length_penalty`, and the same `-1e9` f32
//! penalties decide which candidates may still enter. Sentences that can no longer change are
//! dropped from the decoder batch instead of being carried along, which changes no result.

use rayon::prelude::*;

use super::config::EarlyStopping;
use super::model::{EncoderOutput, M2M100Model};
use crate::error::{ModelError, Result};
use crate::rowops;

/// The penalty transformers adds to scores that must not win (an f32, added in f32).
const BLOCKED: f32 = -1.0e9;

/// Resolved decoding settings for one call.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// Beams; 1 selects greedy decoding.
    pub num_beams: usize,
    /// Total decoder length, start token included.
    pub max_length: usize,
    /// Total decoder length before which end-of-sequence is forbidden.
    pub min_length: usize,
    /// Exponent of the length normalisation of finished hypotheses.
    pub length_penalty: f64,
    /// Beam stopping rule.
    pub early_stopping: EarlyStopping,
    /// Token forced first (the target language).
    pub forced_bos: Option<u32>,
    /// Token forced last.
    pub forced_eos: Option<u32>,
    /// First decoder token.
    pub decoder_start: u32,
    /// End-of-sequence ids.
    pub eos: Vec<u32>,
}

impl GenerateParams {
    fn check(&self) -> Result<()> {
        if self.num_beams == 0 {
            return Err(ModelError::InvalidSettings(
                "num_beams must be at least 1".into(),
            ));
        }
        if self.max_length < 2 {
            return Err(ModelError::InvalidSettings(
                "at least one new token must be allowed (max_new_tokens >= 1)".into(),
            ));
        }
        if self.min_length > self.max_length {
            return Err(ModelError::InvalidSettings(format!(
                "min_new_tokens ({}) exceeds max_new_tokens ({})",
                self.min_length.saturating_sub(1),
                self.max_length - 1
            )));
        }
        Ok(())
    }

    /// Applies the logits processors transformers would build for these settings, in its order.
    fn process(&self, scores: &mut [f32], cur_len: usize) {
        if cur_len < self.min_length {
            for &e in &self.eos {
                if let Some(s) = scores.get_mut(e as usize) {
                    *s = f32::NEG_INFINITY;
                }
            }
        }
        let force = |scores: &mut [f32], tok: u32| {
            scores.fill(f32::NEG_INFINITY);
            if let Some(s) = scores.get_mut(tok as usize) {
                *s = 0.0;
            }
        };
        if cur_len == 1 {
            if let Some(b) = self.forced_bos {
                force(scores, b);
            }
        }
        if cur_len + 1 == self.max_length {
            if let Some(e) = self.forced_eos {
                force(scores, e);
            }
        }
    }
}

/// Decodes every sentence of `enc`; each output starts with the decoder start token and ends with
/// end-of-sequence unless it reached `max_length`.
pub fn generate(
    model: &M2M100Model,
    enc: &EncoderOutput,
    params: &GenerateParams,
) -> Result<Vec<Vec<u32>>> {
    params.check()?;
    if params.num_beams == 1 {
        greedy(model, enc, params)
    } else {
        beam_search(model, enc, params)
    }
}

/// Index of the first maximum, as `torch.argmax` (which takes NaN as the maximum).
fn argmax(row: &[f32]) -> u32 {
    // The maximum and whether a NaN occurs in sixteen lanes (vectorised), then its first index.
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut nan = false;
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = l.max(v);
            nan |= v.is_nan();
        }
    }
    let rest = chunks.remainder();
    nan |= rest.iter().any(|v| v.is_nan());
    let max = rest
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let first = if nan {
        row.iter().position(|v| v.is_nan())
    } else {
        row.iter().position(|&v| v == max)
    };
    first.unwrap_or(0) as u32
}

fn greedy(model: &M2M100Model, enc: &EncoderOutput, p: &GenerateParams) -> Result<Vec<Vec<u32>>> {
    let n = enc.hidden.dim(0)?;
    let mut seqs = vec![vec![p.decoder_start]; n];
    let mut active: Vec<usize> = (0..n).collect();
    let mut state = model.start_decoding(enc, 1)?;
    // One position per step: the start token and every generated token but the last.
    state.reserve(p.max_length - 1);
    let vocab = model.vocab_size();
    let mut logits = Vec::new();
    while !active.is_empty() {
        let tokens: Vec<u32> = active.iter().map(|&i| seqs[i][seqs[i].len() - 1]).collect();
        let cur_len = seqs[active[0]].len();
        model.decode_step_into(&tokens, &mut state, &mut logits)?;
        // Each row's processors and argmax on its own thread: 128k values per row.
        let picked: Vec<u32> = logits
            .par_chunks_mut(vocab)
            .map(|row| {
                p.process(row, cur_len);
                argmax(row)
            })
            .collect();
        let mut keep = Vec::with_capacity(active.len());
        for (r, tok) in picked.into_iter().enumerate() {
            let seq = &mut seqs[active[r]];
            seq.push(tok);
            if !p.eos.contains(&tok) && seq.len() < p.max_length {
                keep.push(r);
            }
        }
        if keep.len() < active.len() {
            active = keep.iter().map(|&r| active[r]).collect();
            if !active.is_empty() {
                let keep: Vec<u32> = keep.iter().map(|&r| r as u32).collect();
                state.select(&keep, &keep)?;
            }
        }
    }
    Ok(seqs)
}

/// A finished-hypothesis slot of one sentence.
#[derive(Debug, Clone)]
struct FinishedSlot {
    /// Length-normalised score (or a blocked placeholder).
    score: f32,
    /// Whether this slot holds a real finished hypothesis.
    finished: bool,
    /// The hypothesis, start token included.
    tokens: Vec<u32>,
}

/// Beam-search state of one sentence.
#[derive(Debug, Clone)]
struct Sentence {
    /// Running beams, best first.
    running: Vec<Vec<u32>>,
    /// Accumulated log-probabilities of the running beams.
    running_scores: Vec<f32>,
    /// Best finished hypotheses, best first.
    slots: Vec<FinishedSlot>,
    /// transformers' `is_early_stop_heuristic_unsatisfied`: the search can still improve.
    improvable: bool,
}

impl Sentence {
    /// A sentence before its first step: `beams` copies of the start token, only the first of
    /// which may be extended (the others start blocked), and no finished hypothesis.
    fn new(p: &GenerateParams, beams: usize) -> Self {
        Sentence {
            running: vec![vec![p.decoder_start]; beams],
            running_scores: (0..beams)
                .map(|j| if j == 0 { 0.0 } else { BLOCKED })
                .collect(),
            slots: vec![
                FinishedSlot {
                    score: BLOCKED,
                    finished: false,
                    tokens: Vec::new(),
                };
                beams
            ],
            improvable: true,
        }
    }

    fn is_full(&self) -> bool {
        self.slots.iter().all(|s| s.finished)
    }

    /// Whether nothing can change any more, so the sentence may leave the batch.
    fn is_frozen(&self, p: &GenerateParams) -> bool {
        !self.improvable || (p.early_stopping == EarlyStopping::True && self.is_full())
    }

    /// Running beam `flat / vocab` extended with token `flat % vocab`.
    fn extended(&self, flat: usize, vocab: usize) -> Vec<u32> {
        let mut seq = self.running[flat / vocab].clone();
        seq.push((flat % vocab) as u32);
        seq
    }

    /// Takes one step's candidates (best first): the finished ones merge into the slots, the best
    /// unfinished ones become the running beams, and the search may stop being improvable.
    /// Returns the decoder row each new beam continues (the sentence's rows start at `first_row`).
    fn advance(&mut self, cands: &[(usize, f32)], step: &Step, first_row: u32) -> Vec<u32> {
        let vocab = step.vocab;
        let hits: Vec<bool> = cands
            .iter()
            .map(|&(flat, _)| step.at_max || step.p.eos.contains(&((flat % vocab) as u32)))
            .collect();
        let slots = self.finished_slots(cands, &hits, step);
        let (chosen, scores) = next_beams(cands, &hits, step.beams);
        let running: Vec<Vec<u32>> = chosen
            .iter()
            .map(|&c| self.extended(cands[c].0, vocab))
            .collect();
        let sources: Vec<u32> = chosen
            .iter()
            .map(|&c| first_row + (cands[c].0 / vocab) as u32)
            .collect();
        self.running = running;
        self.running_scores = scores;
        self.slots = slots;
        let can_improve = self.can_improve(step);
        self.improvable &= can_improve;
        sources
    }

    /// The best `beams` of the slots so far and this step's candidates, each scored
    /// `score / divisor` and blocked unless it finishes among the best `beams` while the sentence
    /// can still take it (the blocked ones hold slots as placeholders).
    fn finished_slots(
        &self,
        cands: &[(usize, f32)],
        hits: &[bool],
        step: &Step,
    ) -> Vec<FinishedSlot> {
        let (p, k) = (step.p, step.beams);
        let full_penalty = if p.early_stopping == EarlyStopping::True && self.is_full() {
            BLOCKED
        } else {
            0.0
        };
        let frozen_penalty = if self.improvable { 0.0 } else { BLOCKED };
        let mut merged_scores: Vec<f32> = self.slots.iter().map(|sl| sl.score).collect();
        for (c, &(_, score)) in cands.iter().enumerate() {
            let just_finished = hits[c] && c < k;
            let mut f = score / step.divisor;
            f += full_penalty;
            f += frozen_penalty;
            f += if just_finished { 0.0 } else { BLOCKED };
            merged_scores.push(f);
        }
        top_k(&merged_scores, k)
            .into_iter()
            .map(|m| {
                if m < k {
                    self.slots[m].clone()
                } else {
                    let c = m - k;
                    let finished = hits[c] && c < k;
                    FinishedSlot {
                        score: merged_scores[m],
                        finished,
                        tokens: if finished {
                            self.extended(cands[c].0, step.vocab)
                        } else {
                            Vec::new()
                        },
                    }
                }
            })
            .collect()
    }

    /// Whether a running beam can still beat the worst finished hypothesis.
    fn can_improve(&self, step: &Step) -> bool {
        let p = step.p;
        let hyp_len = if p.early_stopping == EarlyStopping::Never && p.length_penalty > 0.0 {
            p.max_length - 1
        } else {
            step.cur_len
        };
        let best_possible =
            self.running_scores[0] / ((hyp_len as f64).powf(p.length_penalty)) as f32;
        let worst_all = self
            .slots
            .iter()
            .map(|sl| sl.score)
            .fold(f32::INFINITY, f32::min);
        self.slots
            .iter()
            .any(|sl| best_possible > if sl.finished { worst_all } else { BLOCKED })
    }

    /// The best finished hypothesis, or the best running beam when none finished.
    fn into_best(self) -> Vec<u32> {
        let best = &self.slots[0];
        if best.finished {
            best.tokens.clone()
        } else {
            self.running[0].clone()
        }
    }
}

/// The best `beams` candidates that did not just finish (finished ones enter blocked), as indices
/// into `cands` with their scores.
fn next_beams(cands: &[(usize, f32)], hits: &[bool], beams: usize) -> (Vec<usize>, Vec<f32>) {
    let running_vals: Vec<f32> = cands
        .iter()
        .zip(hits)
        .map(|(&(_, sc), &h)| sc + if h { BLOCKED } else { 0.0 })
        .collect();
    let chosen = top_k(&running_vals, beams);
    let scores = chosen.iter().map(|&c| running_vals[c]).collect();
    (chosen, scores)
}

/// What every sentence's update shares in one beam-search step.
struct Step<'a> {
    p: &'a GenerateParams,
    /// Beams per sentence.
    beams: usize,
    vocab: usize,
    /// Decoder length before this step's token, start token included.
    cur_len: usize,
    /// This step's token reaches `max_length`: every candidate finishes.
    at_max: bool,
    /// `cur_len ^ length_penalty`, which divides the scores of hypotheses finished at this step.
    divisor: f32,
    /// Candidates kept per sentence.
    keep: usize,
}

impl Step<'_> {
    /// Each sentence's `keep` best (flat index into its `beams × vocab` block, score) candidates,
    /// best first. Every row on its own thread, while its 128k values are in cache: log-softmax,
    /// the processors, its best continuations; then each sentence merges its beams' lists.
    fn candidates(&self, log_probs: &mut [f32], running: &[f32]) -> Vec<Vec<(usize, f32)>> {
        let row_cands: Vec<Vec<(usize, f32)>> = log_probs
            .par_chunks_mut(self.vocab)
            .zip(running.par_iter())
            .map(|(row, &base)| {
                rowops::log_softmax(row);
                self.p.process(row, self.cur_len);
                top_of_row(row, base, self.keep)
            })
            .collect();
        row_cands
            .chunks(self.beams)
            .map(|rows| merge_rows(rows, self.vocab, self.keep))
            .collect()
    }
}

/// Indices of the `k` largest values, largest first, earlier index first among equals.
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let cmp = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

/// The `k` best `(index, lp + base)` of one row of log-probabilities, best first, earlier index
/// first among equals, NaN never (torch.topk's order here).
fn top_of_row(row: &[f32], base: f32, k: usize) -> Vec<(usize, f32)> {
    // A bounded sorted list beats sorting 128k entries for k = 10; once it is full, a chunk
    // whose values all fail to beat its last entry is skipped after one vectorised comparison.
    const CHUNK: usize = 16;
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
    for (c, chunk) in row.chunks(CHUNK).enumerate() {
        if best.len() == k && k > 0 {
            let floor = best[k - 1].1;
            if !chunk
                .iter()
                .fold(false, |any, &lp| any | (lp + base > floor))
            {
                continue;
            }
        }
        for (i, &lp) in chunk.iter().enumerate() {
            let s = lp + base;
            let enters = best.len() < k
                || s.partial_cmp(&best[k - 1].1) == Some(std::cmp::Ordering::Greater);
            if !enters || s.is_nan() {
                continue;
            }
            let pos = best.partition_point(|&(_, b)| b >= s);
            best.insert(pos, (c * CHUNK + i, s));
            best.truncate(k);
        }
    }
    best
}

/// The `k` best (flat index, score) pairs of a sentence's `beams × vocab` scores from each beam's
/// own best ([`top_of_row`]), ordered as one scan of all rows would: the `k` best of the whole
/// block are among the `k` best of their own row.
fn merge_rows(rows: &[Vec<(usize, f32)>], vocab: usize, k: usize) -> Vec<(usize, f32)> {
    let mut all: Vec<(usize, f32)> = rows
        .iter()
        .enumerate()
        .flat_map(|(j, r)| r.iter().map(move |&(t, s)| (j * vocab + t, s)))
        .collect();
    // No NaN reaches here; equal scores keep the earlier flat index.
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

fn beam_search(
    model: &M2M100Model,
    enc: &EncoderOutput,
    p: &GenerateParams,
) -> Result<Vec<Vec<u32>>> {
    let k = p.num_beams;
    let n = enc.hidden.dim(0)?;
    // Enough candidates that `k` remain after every end-of-sequence id has taken one per beam.
    let keep = 2.max(1 + p.eos.len()) * k;
    let mut sentences: Vec<Sentence> = (0..n).map(|_| Sentence::new(p, k)).collect();
    let mut state = model.start_decoding(enc, k)?;
    // One position per step: the start token and every generated token but the last.
    state.reserve(p.max_length - 1);
    let vocab = model.vocab_size();
    let mut active: Vec<usize> = (0..n).collect();
    let mut cur_len = 1;
    let mut log_probs = Vec::new();
    while !active.is_empty() {
        let tokens: Vec<u32> = active
            .iter()
            .flat_map(|&s| sentences[s].running.iter().map(|b| b[b.len() - 1]))
            .collect();
        model.decode_step_into(&tokens, &mut state, &mut log_probs)?;
        let step = Step {
            p,
            beams: k,
            vocab,
            cur_len,
            at_max: cur_len + 1 >= p.max_length,
            divisor: ((cur_len as f64).powf(p.length_penalty)) as f32,
            keep,
        };
        let running: Vec<f32> = active
            .iter()
            .flat_map(|&s| sentences[s].running_scores.iter().copied())
            .collect();
        let all_cands = step.candidates(&mut log_probs, &running);
        let mut next_rows: Vec<u32> = Vec::with_capacity(active.len() * k);
        let mut kept_sentences: Vec<u32> = Vec::with_capacity(active.len());
        let mut still_active = Vec::with_capacity(active.len());
        for ((a, &s), cands) in active.iter().enumerate().zip(all_cands) {
            let sent = &mut sentences[s];
            let sources = sent.advance(&cands, &step, (a * k) as u32);
            if !step.at_max && !sent.is_frozen(p) {
                still_active.push(s);
                kept_sentences.push(a as u32);
                next_rows.extend(sources);
            }
        }
        cur_len += 1;
        active = still_active;
        if !active.is_empty() {
            state.select(&kept_sentences, &next_rows)?;
        }
    }
    Ok(sentences.into_iter().map(Sentence::into_best).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum_and_nan_first() {
        let mut row = vec![0f32; 100];
        row[37] = 2.0;
        row[90] = 2.0;
        assert_eq!(argmax(&row), 37);
        row[95] = f32::NAN;
        assert_eq!(argmax(&row), 95);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
        assert_eq!(argmax(&[1.0, 3.0]), 1);
    }

    #[test]
    fn top_k_orders_by_score_then_index() {
        assert_eq!(top_k(&[1.0, 3.0, 3.0, 2.0], 3), vec![1, 2, 3]);
        assert_eq!(top_k(&[f32::NEG_INFINITY, 0.0], 2), vec![1, 0]);
    }

    /// Every candidate of a block sorted as torch.topk orders them: score, then flat index.
    fn brute_force(lp: &[f32], vocab: usize, running: &[f32], k: usize) -> Vec<(usize, f32)> {
        let mut all: Vec<(usize, f32)> = lp
            .iter()
            .enumerate()
            .map(|(i, &v)| (i, v + running[i / vocab]))
            .filter(|c| !c.1.is_nan())
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    #[test]
    fn row_candidates_merge_to_the_best_of_the_whole_block() {
        let lp = [-1.0, -2.0, -0.5, -0.1, -3.0, -4.0];
        let rows = [top_of_row(&lp[..3], 0.0, 3), top_of_row(&lp[3..], -1.0, 3)];
        let got = merge_rows(&rows, 3, 3);
        assert_eq!(got.iter().map(|c| c.0).collect::<Vec<_>>(), vec![2, 0, 3]);

        // Ties, −∞ (forced rows), NaN and many skipped chunks.
        let (vocab, beams, k) = (1000, 5, 10);
        let mut seed = 7u64;
        for case in 0..20 {
            let mut lp: Vec<f32> = (0..vocab * beams)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    -(((seed >> 33) % 50) as f32) / 4.0
                })
                .collect();
            if case % 3 == 0 {
                lp[..vocab].fill(f32::NEG_INFINITY);
                lp[17] = 0.0;
            }
            if case % 4 == 0 {
                lp[vocab + 3] = f32::NAN;
            }
            let running: Vec<f32> = (0..beams).map(|j| -(j as f32) * 0.25).collect();
            let rows: Vec<_> = lp
                .chunks(vocab)
                .zip(&running)
                .map(|(r, &b)| top_of_row(r, b, k))
                .collect();
            let got = merge_rows(&rows, vocab, k);
            let want = brute_force(&lp, vocab, &running, k);
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert_eq!((g.0, g.1.to_bits()), (w.0, w.1.to_bits()), "case {case}");
            }
        }
    }

    #[test]
    fn processors_force_language_then_forbid_early_end() {
        let p = GenerateParams {
            num_beams: 1,
            max_length: 5,
            min_length: 3,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            forced_bos: Some(3),
            forced_eos: Some(2),
            decoder_start: 2,
            eos: vec![2],
        };
        let mut s = vec![0.5; 5];
        p.process(&mut s, 1);
        assert_eq!(argmax(&s), 3);
        let mut s = vec![0.0, 0.0, 9.0, 0.0, 0.0];
        p.process(&mut s, 2);
        assert_ne!(argmax(&s), 2);
        let mut s = vec![9.0, 0.0, 0.0, 0.0, 0.0];
        p.process(&mut s, 4);
        assert_eq!(argmax(&s), 2);
    }
}
