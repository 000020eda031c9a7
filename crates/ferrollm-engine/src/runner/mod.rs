//! The model runner: turns a scheduler decision into one forward pass and samples.
//!
//! It keeps per-request sampling state (the seeded generator, tokens for penalties) from a
//! request's first step until the scheduler reports it finished, including across
//! preemptions, so a seed gives the same tokens whatever happens around it.

pub mod sampler;

use std::collections::HashMap;
use std::sync::Arc;

use ferrollm_core::{ModelRunnerOutput, RequestId, SamplingParams, SchedulerOutput};
use ferrollm_models::{ForwardBatch, KvCache, LlamaModel, SeqSlice};
use rand::rngs::StdRng;
use rand::SeedableRng;

struct RequestState {
    params: Arc<SamplingParams>,
    prompt_token_ids: Vec<u32>,
    output_token_ids: Vec<u32>,
    rng: StdRng,
}

pub struct ModelRunner {
    model: LlamaModel,
    kv: KvCache,
    /// Tokens masked until `min_tokens` outputs exist.
    eos_token_ids: Vec<u32>,
    states: HashMap<RequestId, RequestState>,
}

impl ModelRunner {
    pub fn new(model: LlamaModel, num_blocks: usize, block_size: usize, eos_token_ids: Vec<u32>) -> ModelRunner {
        let kv = KvCache::new(&model.config, num_blocks, block_size);
        ModelRunner { model, kv, eos_token_ids, states: HashMap::new() }
    }

    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    pub fn execute(&mut self, out: &SchedulerOutput) -> ModelRunnerOutput {
        for id in &out.finished_req_ids {
            self.states.remove(id);
        }
        for s in &out.scheduled {
            if let Some(new) = &s.new {
                let rng = match new.params.seed {
                    Some(seed) => StdRng::seed_from_u64(seed),
                    None => StdRng::from_entropy(),
                };
                self.states.insert(
                    s.req_id.clone(),
                    RequestState {
                        params: new.params.clone(),
                        prompt_token_ids: new.prompt_token_ids.clone(),
                        output_token_ids: Vec::new(),
                        rng,
                    },
                );
            }
        }
        let n_tokens: usize = out.scheduled.iter().map(|s| s.num_tokens()).sum();
        let mut token_ids = Vec::with_capacity(n_tokens);
        let mut positions = Vec::with_capacity(n_tokens);
        let mut slots = Vec::with_capacity(n_tokens);
        let mut seqs = Vec::with_capacity(out.scheduled.len());
        // Per request: (first logits row, rows, whether the last row is sampled).
        let mut logit_rows = Vec::with_capacity(out.scheduled.len());
        let mut logits_indices = Vec::new();
        for s in &out.scheduled {
            let state = &self.states[&s.req_id];
            let start = token_ids.len();
            token_ids.extend_from_slice(&s.token_ids);
            for i in 0..s.num_tokens() {
                let pos = s.start_pos + i;
                positions.push(pos as u32);
                slots.push(self.kv.slot(&s.block_table, pos));
            }
            seqs.push(SeqSlice {
                query_start: start,
                query_len: s.num_tokens(),
                start_pos: s.start_pos,
                block_table: &s.block_table,
            });
            let prompt_len = state.prompt_token_ids.len();
            let first = logits_indices.len();
            if state.params.prompt_logprobs.is_some() && s.start_pos < prompt_len {
                // Rows whose next token is still a prompt token.
                let end = (s.start_pos + s.num_tokens()).min(prompt_len - 1);
                logits_indices.extend((s.start_pos..end).map(|p| start + p - s.start_pos));
            }
            if s.sample {
                logits_indices.push(start + s.num_tokens() - 1);
            }
            logit_rows.push((first, logits_indices.len() - first));
        }
        let batch = ForwardBatch {
            token_ids: &token_ids,
            positions: &positions,
            slot_mapping: &slots,
            seqs: &seqs,
            logits_indices: &logits_indices,
        };
        let logits = self.model.forward(&batch, &mut self.kv);
        let vocab = self.model.config.vocab_size;

        let mut result = ModelRunnerOutput::default();
        for (s, &(first, rows)) in out.scheduled.iter().zip(&logit_rows) {
            let state = self.states.get_mut(&s.req_id).expect("state created above");
            let params = state.params.clone();
            let mut prompt_lps = None;
            let n_prompt_rows = if s.sample { rows - 1 } else { rows };
            if let Some(k) = params.prompt_logprobs {
                let mut lps = Vec::with_capacity(n_prompt_rows);
                for r in 0..n_prompt_rows {
                    let row = &logits[(first + r) * vocab..(first + r + 1) * vocab];
                    let next = state.prompt_token_ids[s.start_pos + r + 1];
                    lps.push(sampler::token_logprobs(&sampler::log_softmax(row), next, k));
                }
                prompt_lps = Some(lps);
            }
            let mut sampled = Vec::new();
            let mut lps = None;
            if s.sample {
                let r = first + rows - 1;
                let raw = &logits[r * vocab..(r + 1) * vocab];
                let mut row = raw.to_vec();
                if state.output_token_ids.len() < params.min_tokens {
                    for &t in self.eos_token_ids.iter().chain(&params.stop_token_ids) {
                        if let Some(l) = row.get_mut(t as usize) {
                            *l = f32::NEG_INFINITY;
                        }
                    }
                }
                sampler::apply_penalties(&mut row, &params, &state.prompt_token_ids, &state.output_token_ids);
                let token = sampler::sample(&row, &params, &mut state.rng);
                if let Some(k) = params.logprobs {
                    lps = Some(vec![sampler::token_logprobs(&sampler::log_softmax(raw), token, k)]);
                }
                state.output_token_ids.push(token);
                sampled.push(token);
            }
            result.req_ids.push(s.req_id.clone());
            result.sampled_token_ids.push(sampled);
            result.logprobs.push(lps);
            result.prompt_logprobs.push(prompt_lps);
        }
        result
    }
}
