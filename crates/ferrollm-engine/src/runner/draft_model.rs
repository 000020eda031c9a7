//! Draft-model speculation: a smaller model with the target's vocabulary proposes tokens.
//!
//! The draft has its own paged KV cache with as many blocks as the target's, indexed by the
//! same block tables the scheduler hands the target (as vLLM does), so the scheduler's
//! allocation, prefix caching and preemption cover both caches at once. Every step the draft
//! runs over the tokens the target has just made known, which keeps its KV in sync with the
//! target's:
//! - all scheduled tokens of a request that does not sample (a prefill chunk);
//! - for a request that samples, its scheduled tokens up to the last known one, the drafts the
//!   target accepted, and the newly sampled token, whose logits give the first draft.
//!
//! Then up to `k - 1` more one-token passes extend each request's drafts. Draft positions are
//! written into the slots the scheduler reserves ahead (`num_lookahead_tokens`); positions
//! whose drafts are rejected are overwritten by a later step before anything reads them,
//! because attention only reads positions below the one being computed. Blocks that reach the
//! prefix cache were written by the step that computed them in both caches, so a cache hit
//! finds the draft's KV there too.
//!
//! Greedy requests take the draft's argmax; sampled requests draw from the draft's own
//! distribution (the target's transforms: penalties, temperature, top-k/p, min-p) with the
//! request's generator and keep it for rejection sampling, exactly like layer-skip drafts.

use std::path::Path;
use std::sync::Arc;

use ferrollm_core::{ModelRunnerOutput, SchedulerOutput};
use ferrollm_kernels::Backend;
use ferrollm_models::{load_model, ForwardBatch, KvCache, LlamaModel, ModelConfig, SeqSlice};

use super::{Draft, DraftPass, ModelRunner};

/// A loaded draft model; its KV cache is built when it joins a runner.
pub struct DraftModel {
    model: LlamaModel,
    kv: Option<KvCache>,
    description: String,
}

impl DraftModel {
    /// Loads the draft at `path` (GGUF or Hugging Face directory) and checks that it can draft
    /// for a target with config `target` serving contexts up to `max_model_len`.
    pub fn load(
        path: &Path,
        backend: Arc<dyn Backend>,
        target: &ModelConfig,
        max_model_len: usize,
    ) -> Result<DraftModel, String> {
        let shown = path.display();
        let loaded = load_model(path, backend).map_err(|e| format!("cannot load draft model {shown}: {e}"))?;
        let (dv, tv) = (loaded.model.config.vocab_size, target.vocab_size);
        if dv != tv {
            return Err(format!(
                "invalid --speculative-config: draft model {shown} has a vocabulary of {dv} tokens but the target \
                 model has {tv}; draft_model needs a model with the target's vocabulary (e.g. one made with \
                 `ferrollm cut-layers`)"
            ));
        }
        if loaded.tokenizer.vocab_size() > tv {
            return Err(format!(
                "invalid --speculative-config: draft model {shown}'s tokenizer has {} tokens, more than the target \
                 model's vocabulary of {tv}",
                loaded.tokenizer.vocab_size()
            ));
        }
        let dmax = loaded.model.config.max_position_embeddings;
        if dmax < max_model_len {
            return Err(format!(
                "invalid --speculative-config: draft model {shown} handles contexts up to {dmax} tokens, shorter than \
                 the {max_model_len} served; pass --max-model-len {dmax} or a draft with a longer context"
            ));
        }
        Ok(DraftModel { model: loaded.model, kv: None, description: loaded.description })
    }

    /// Bytes of one KV block of the draft, to budget `--kv-cache-memory` across both models.
    pub fn bytes_per_block(&self, block_size: usize) -> usize {
        KvCache::bytes_per_block(&self.model.config, block_size)
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    pub fn num_layers(&self) -> usize {
        self.model.num_layers()
    }

    pub fn weight_bytes(&self) -> usize {
        self.model.weight_bytes()
    }
}

impl ModelRunner {
    /// Gives the runner a draft model, with a KV cache over the target's number of blocks;
    /// [`with_speculation`](Self::with_speculation) with `draft_model` then turns it on.
    pub fn with_draft_model(mut self, mut draft: DraftModel) -> ModelRunner {
        draft.kv = Some(KvCache::new(&draft.model.config, self.kv.num_blocks, self.kv.block_size));
        self.draft = Some(draft);
        self
    }

    /// Runs the draft model after the target's step (see the module docs): syncs its KV with
    /// the step's known tokens and proposes up to `k` tokens per sampling request.
    pub(super) fn draft_with_model(&mut self, out: &SchedulerOutput, k: usize, result: &mut ModelRunnerOutput) {
        let Some(draft) = self.draft.as_mut() else { return };
        let kv = draft.kv.as_mut().expect("with_draft_model builds the draft's KV cache");
        let model = &draft.model;
        let bs = kv.block_size;
        let max_pos = model.config.max_position_embeddings.min(self.model.config.max_position_embeddings);

        // Pass 1: the step's known tokens, plus each drafting request's newest token.
        let mut ds: Vec<Draft> = Vec::new();
        let (mut token_ids, mut positions, mut slots, mut ranges) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut logits_indices = Vec::new();
        for (idx, s) in out.scheduled.iter().enumerate() {
            let st = &self.states[&s.req_id];
            let known = if s.sample {
                // The last known token's row came before the drafts; accepted drafts are known too.
                s.num_tokens() - s.num_spec_tokens + result.sampled_token_ids[idx].len().saturating_sub(1)
            } else {
                s.num_tokens()
            };
            let start = token_ids.len();
            for (i, &t) in s.token_ids[..known].iter().enumerate() {
                token_ids.push(t);
                positions.push((s.start_pos + i) as u32);
                slots.push(kv.slot(&s.block_table, s.start_pos + i));
            }
            // Sampled drafts of a constrained request would be cut by its grammar, which biases
            // them (see draft_layer_skip); its KV is still kept in step above.
            let biased = st.params.structured_outputs.is_some() && !st.params.is_greedy();
            if s.sample && !st.params.disable_speculation && !biased {
                let pos = st.prompt_token_ids.len() + st.output_token_ids.len() - 1;
                debug_assert_eq!(pos, s.start_pos + known, "the sampled token follows the known ones");
                let room = (s.block_table.len() * bs).saturating_sub(pos);
                let max = k.min(room).min(max_pos.saturating_sub(pos));
                if max > 0 {
                    let input = *st.output_token_ids.last().expect("a sampling step emitted a token");
                    token_ids.push(input);
                    positions.push(pos as u32);
                    slots.push(kv.slot(&s.block_table, pos));
                    logits_indices.push(token_ids.len() - 1);
                    ds.push(Draft {
                        idx,
                        table: &s.block_table,
                        pos: pos + 1,
                        max,
                        input,
                        drafts: Vec::new(),
                        probs: Vec::new(),
                    });
                }
            }
            if token_ids.len() > start {
                ranges.push((
                    start,
                    token_ids.len() - start,
                    s.start_pos,
                    st.prompt_token_ids.len(),
                    &s.block_table[..],
                ));
            }
        }
        if token_ids.is_empty() {
            return;
        }
        let seqs: Vec<SeqSlice> = ranges
            .iter()
            .map(|&(query_start, query_len, start_pos, prompt_len, block_table)| SeqSlice {
                query_start,
                query_len,
                start_pos,
                prompt_len,
                block_table,
            })
            .collect();
        let batch = ForwardBatch {
            token_ids: &token_ids,
            positions: &positions,
            slot_mapping: &slots,
            seqs: &seqs,
            logits_indices: &logits_indices,
        };
        let mut logits = model.forward(&batch, kv);
        let vocab = model.config.vocab_size;
        let mut active: Vec<usize> = (0..ds.len()).collect();
        loop {
            // `logits` row r belongs to ds[active[r]]: choose each one's next draft.
            for (r, &i) in active.iter().enumerate() {
                let d = &mut ds[i];
                let st = self.states.get_mut(&out.scheduled[d.idx].req_id).expect("known request");
                d.push_next(&logits[r * vocab..(r + 1) * vocab], st, self.sampleable_vocab, &self.eos_token_ids);
            }
            // The next pass: one token per request that wants another draft.
            active.retain(|&i| ds[i].drafts.len() < ds[i].max);
            if active.is_empty() {
                break;
            }
            let pass = DraftPass::new(&mut ds, &active, kv);
            logits = model.forward(&pass.batch(), kv);
        }
        self.hand_over_drafts(ds, out, result);
    }
}
