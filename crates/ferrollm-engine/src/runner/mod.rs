//! The model runner: turns a scheduler decision into one forward pass and samples.
//!
//! It keeps per-request sampling state (the seeded generator, tokens for penalties) from a
//! request's first step until the scheduler reports it finished, including across
//! preemptions, so a seed gives the same tokens whatever happens around it.

pub mod draft_model;
pub mod sampler;
pub mod spec_decode;

use std::collections::HashMap;
use std::sync::Arc;

use ferrollm_core::{ModelRunnerOutput, RequestId, SamplingParams, SchedulerOutput, TokenBitmask};
use ferrollm_models::{ForwardBatch, KvCache, LlamaModel, SeqSlice};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::spec_config::{SpeculativeConfig, SpeculativeMethod};
use spec_decode::Target;

struct RequestState {
    params: Arc<SamplingParams>,
    prompt_token_ids: Vec<u32>,
    output_token_ids: Vec<u32>,
    rng: StdRng,
    /// The drafter's distribution at each token it proposed last step, when it sampled them
    /// (layer-skip drafts of a sampled request); `None` means point masses.
    draft_probs: Option<Vec<Vec<f32>>>,
}

impl RequestState {
    /// Adopts tokens the scheduler appended without sampling them here (a grammar's forced
    /// tokens), which arrive as known tokens of the next step.
    fn sync_known_tokens(&mut self, s: &ferrollm_core::ScheduledRequest) {
        let known_end = s.start_pos + s.num_tokens() - s.num_spec_tokens;
        let have = self.prompt_token_ids.len() + self.output_token_ids.len();
        if known_end > have && s.start_pos <= have {
            self.output_token_ids.extend_from_slice(&s.token_ids[have - s.start_pos..known_end - s.start_pos]);
        }
    }
}

/// One request's state while a drafter (layer-skip or a draft model) proposes its tokens.
struct Draft<'a> {
    /// Index in `out.scheduled`.
    idx: usize,
    table: &'a [u32],
    /// Position of the newest (not yet computed) token, the input of the next pass.
    pos: usize,
    max: usize,
    input: u32,
    drafts: Vec<u32>,
    probs: Vec<Vec<f32>>,
}

impl Draft<'_> {
    /// Appends the next draft, chosen from the drafter's logits `raw`: the argmax for greedy
    /// requests; for sampled ones a draw from the drafter's own distribution (the same
    /// transforms as the target's), kept as `q` for verification. Ends drafting when nothing
    /// can be drawn.
    fn push_next(&mut self, raw: &[f32], st: &mut RequestState, sampleable: usize, eos: &[u32]) {
        let mut hist = st.output_token_ids.clone();
        hist.extend_from_slice(&self.drafts);
        let row = prepare_row(raw, sampleable, eos, &st.params, None, &st.prompt_token_ids, &hist);
        let t = if st.params.is_greedy() {
            sampler::argmax(&row)
        } else {
            let Some(c) = sampler::candidates(&row, &st.params) else {
                self.max = self.drafts.len();
                return;
            };
            let c = spec_decode::normalize(c);
            let t = sampler::draw(&c, &mut st.rng);
            let mut q = vec![0f32; raw.len()];
            for &(tok, p) in &c {
                q[tok as usize] = p;
            }
            self.probs.push(q);
            t
        };
        self.drafts.push(t);
        self.input = t;
    }
}

/// Inputs of one drafting pass: each active draft's newest token at its position, one token
/// per request, one logits row each.
struct DraftPass<'a> {
    token_ids: Vec<u32>,
    positions: Vec<u32>,
    slots: Vec<usize>,
    seqs: Vec<SeqSlice<'a>>,
    rows: Vec<usize>,
}

impl<'a> DraftPass<'a> {
    /// The pass for drafts `active` of `ds`; moves each one's position past its input.
    fn new(ds: &mut [Draft<'a>], active: &[usize], kv: &KvCache) -> DraftPass<'a> {
        let m = active.len();
        let mut p = DraftPass {
            token_ids: Vec::with_capacity(m),
            positions: Vec::with_capacity(m),
            slots: Vec::with_capacity(m),
            seqs: Vec::with_capacity(m),
            rows: (0..m).collect(),
        };
        for (r, &i) in active.iter().enumerate() {
            let d = &mut ds[i];
            p.token_ids.push(d.input);
            p.positions.push(d.pos as u32);
            p.slots.push(kv.slot(d.table, d.pos));
            p.seqs.push(SeqSlice {
                query_start: r,
                query_len: 1,
                start_pos: d.pos,
                prompt_len: 0,
                block_table: d.table,
            });
            d.pos += 1;
        }
        p
    }

    fn batch(&self) -> ForwardBatch<'_> {
        ForwardBatch {
            token_ids: &self.token_ids,
            positions: &self.positions,
            slot_mapping: &self.slots,
            seqs: &self.seqs,
            logits_indices: &self.rows,
        }
    }
}

/// The drafter run after each step (speculative decoding).
#[derive(Debug, Clone, Copy)]
enum Drafter {
    Ngram {
        min_n: usize,
        max_n: usize,
        k: usize,
    },
    LayerSkip {
        layers: usize,
        k: usize,
    },
    /// A separate draft model (`draft_model.rs`), held in `ModelRunner::draft`.
    DraftModel {
        k: usize,
    },
}

pub struct ModelRunner {
    model: LlamaModel,
    kv: KvCache,
    /// Tokens masked until `min_tokens` outputs exist.
    eos_token_ids: Vec<u32>,
    /// Ids at or above this have no token (a model's padded vocabulary) and are never sampled.
    sampleable_vocab: usize,
    states: HashMap<RequestId, RequestState>,
    drafter: Option<Drafter>,
    draft: Option<draft_model::DraftModel>,
}

/// The logits a token is chosen from at a position whose history is `prompt` + `output`:
/// padded ids masked, the grammar's disallowed tokens masked, stop tokens masked before
/// `min_tokens`, penalties applied.
fn prepare_row(
    raw: &[f32],
    sampleable_vocab: usize,
    eos_token_ids: &[u32],
    params: &SamplingParams,
    grammar: Option<&TokenBitmask>,
    prompt: &[u32],
    output: &[u32],
) -> Vec<f32> {
    let mut row = raw.to_vec();
    for l in row.iter_mut().skip(sampleable_vocab) {
        *l = f32::NEG_INFINITY;
    }
    if let Some(mask) = grammar {
        mask.apply(&mut row);
    }
    if output.len() < params.min_tokens {
        let stops = || eos_token_ids.iter().chain(&params.stop_token_ids).map(|&t| t as usize);
        let masked: Vec<(usize, f32)> = stops().filter_map(|t| Some((t, *row.get(t)?))).collect();
        for &(t, _) in &masked {
            row[t] = f32::NEG_INFINITY;
        }
        // A finished grammar allows only end-of-sequence: the grammar wins over min_tokens.
        if row.iter().all(|l| *l == f32::NEG_INFINITY) {
            for (t, l) in masked {
                row[t] = l;
            }
        }
    }
    sampler::apply_penalties(&mut row, params, prompt, output);
    row
}

impl ModelRunner {
    pub fn new(
        model: LlamaModel,
        num_blocks: usize,
        block_size: usize,
        eos_token_ids: Vec<u32>,
        sampleable_vocab: usize,
    ) -> ModelRunner {
        let kv = KvCache::new(&model.config, num_blocks, block_size);
        ModelRunner { model, kv, eos_token_ids, sampleable_vocab, states: HashMap::new(), drafter: None, draft: None }
    }

    /// Turns on speculative decoding; refuses a config this model cannot run.
    pub fn with_speculation(mut self, cfg: &SpeculativeConfig) -> Result<ModelRunner, String> {
        let k = cfg.num_speculative_tokens;
        self.drafter = Some(match &cfg.method {
            SpeculativeMethod::Ngram { prompt_lookup_min, prompt_lookup_max } => {
                Drafter::Ngram { min_n: *prompt_lookup_min, max_n: *prompt_lookup_max, k }
            }
            SpeculativeMethod::LayerSkip { draft_layers } => {
                let n = self.model.num_layers();
                if *draft_layers >= n {
                    return Err(format!(
                        "invalid --speculative-config: draft_layers must be below the model's {n} layers, got {draft_layers}"
                    ));
                }
                Drafter::LayerSkip { layers: *draft_layers, k }
            }
            SpeculativeMethod::DraftModel { model } => {
                if self.draft.is_none() {
                    return Err(format!("draft model {model} was not loaded (ModelRunner::with_draft_model)"));
                }
                Drafter::DraftModel { k }
            }
        });
        Ok(self)
    }

    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    pub fn execute(&mut self, out: &SchedulerOutput) -> ModelRunnerOutput {
        for id in &out.finished_req_ids {
            self.states.remove(id);
        }
        for s in &out.scheduled {
            if let Some(state) = self.states.get_mut(&s.req_id) {
                state.sync_known_tokens(s);
            }
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
                        draft_probs: None,
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
            let prompt_len = state.prompt_token_ids.len();
            seqs.push(SeqSlice {
                query_start: start,
                query_len: s.num_tokens(),
                start_pos: s.start_pos,
                prompt_len,
                block_table: &s.block_table,
            });
            let first = logits_indices.len();
            if state.params.prompt_logprobs.is_some() && s.start_pos < prompt_len {
                // Rows whose next token is still a prompt token.
                let end = (s.start_pos + s.num_tokens()).min(prompt_len - 1);
                logits_indices.extend((s.start_pos..end).map(|p| start + p - s.start_pos));
            }
            if s.sample {
                // The last known token's row, then one row per draft token.
                let n = s.num_tokens();
                logits_indices.extend((n - 1 - s.num_spec_tokens..n).map(|i| start + i));
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
            let n_prompt_rows = if s.sample { rows - 1 - s.num_spec_tokens } else { rows };
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
            let mut proposal = Vec::new();
            if s.sample {
                let nspec = s.num_spec_tokens;
                let r0 = first + rows - 1 - nspec;
                let raw_row = |i: usize| &logits[(r0 + i) * vocab..(r0 + i + 1) * vocab];
                let (sampleable, eos) = (self.sampleable_vocab, &self.eos_token_ids[..]);
                let RequestState { prompt_token_ids: prompt, output_token_ids: output, rng, draft_probs, .. } = state;
                let q = draft_probs.take();
                let masks = &s.grammar_bitmasks;
                // Drafts past the grammar's last mask were rejected by it: verify the rest.
                let nverify = if masks.is_empty() { nspec } else { nspec.min(masks.len() - 1) };
                if nverify == 0 {
                    let row = prepare_row(raw_row(0), sampleable, eos, &params, masks.first(), prompt, output);
                    sampled.push(sampler::sample(&row, &params, rng));
                } else {
                    let drafts = &s.token_ids[s.num_tokens() - nspec..][..nverify];
                    let nspec = nverify;
                    let q = q.filter(|_| !params.is_greedy());
                    debug_assert!(q.as_ref().is_none_or(|q| q.len() >= nspec), "draft probabilities lost");
                    let target = |i: usize| {
                        let mut hist = output.clone();
                        hist.extend_from_slice(&drafts[..i]);
                        let row = prepare_row(raw_row(i), sampleable, eos, &params, masks.get(i), prompt, &hist);
                        if params.is_greedy() {
                            return Target::Greedy(sampler::argmax(&row));
                        }
                        match sampler::candidates(&row, &params) {
                            Some(c) => Target::Probs(spec_decode::normalize(c)),
                            None => Target::Greedy(sampler::argmax(&row)),
                        }
                    };
                    sampled = spec_decode::verify(drafts, q.as_ref().map(|q| &q[..nspec]), target, rng);
                }
                if let Some(k) = params.logprobs {
                    lps = Some(
                        sampled
                            .iter()
                            .enumerate()
                            .map(|(i, &t)| sampler::token_logprobs(&sampler::log_softmax(raw_row(i)), t, k))
                            .collect(),
                    );
                }
                output.extend_from_slice(&sampled);
                if let (Some(Drafter::Ngram { min_n, max_n, k }), false) = (self.drafter, params.disable_speculation) {
                    let mut history = Vec::with_capacity(prompt.len() + output.len());
                    history.extend_from_slice(prompt);
                    history.extend_from_slice(output);
                    proposal = spec_decode::propose_ngram(&history, min_n, max_n, k);
                }
            }
            result.req_ids.push(s.req_id.clone());
            result.sampled_token_ids.push(sampled);
            result.logprobs.push(lps);
            result.prompt_logprobs.push(prompt_lps);
            result.spec_token_ids.push(proposal);
        }
        if let Some(Drafter::LayerSkip { layers, k }) = self.drafter {
            self.draft_layer_skip(out, layers, k, &mut result);
        }
        if let Some(Drafter::DraftModel { k }) = self.drafter {
            self.draft_with_model(out, k, &mut result);
        }
        result
    }

    /// Layer-skip self-drafting: up to `k` passes of the model's first `layers` layers, one
    /// token per sampling request per pass, each feeding the previous draft. The passes write
    /// K/V of those layers at the draft positions (into slots the scheduler reserved ahead);
    /// the next step's verification recomputes the same positions and overwrites them, and
    /// since the first layers compute the same thing in both, the KV before them is shared.
    fn draft_layer_skip(&mut self, out: &SchedulerOutput, layers: usize, k: usize, result: &mut ModelRunnerOutput) {
        let bs = self.kv.block_size;
        let mut ds: Vec<Draft> = Vec::new();
        for (idx, s) in out.scheduled.iter().enumerate() {
            let st = &self.states[&s.req_id];
            if !s.sample || st.params.disable_speculation {
                continue;
            }
            // A constrained request's drafts are checked against its grammar afterwards, and
            // cutting sampled drafts there would bias them; greedy drafts are cut exactly.
            if st.params.structured_outputs.is_some() && !st.params.is_greedy() {
                continue;
            }
            let pos = st.prompt_token_ids.len() + st.output_token_ids.len() - 1;
            let room = (s.block_table.len() * bs).saturating_sub(pos);
            let max = k.min(room).min(self.model.config.max_position_embeddings.saturating_sub(pos));
            if max > 0 {
                let input = *st.output_token_ids.last().expect("a sampling step emitted a token");
                ds.push(Draft { idx, table: &s.block_table, pos, max, input, drafts: Vec::new(), probs: Vec::new() });
            }
        }
        let vocab = self.model.config.vocab_size;
        for _ in 0..k {
            let active: Vec<usize> = (0..ds.len()).filter(|&i| ds[i].drafts.len() < ds[i].max).collect();
            if active.is_empty() {
                break;
            }
            let pass = DraftPass::new(&mut ds, &active, &self.kv);
            let logits = self.model.forward_layers(&pass.batch(), &mut self.kv, layers);
            for (r, &i) in active.iter().enumerate() {
                let d = &mut ds[i];
                let st = self.states.get_mut(&out.scheduled[d.idx].req_id).expect("known request");
                d.push_next(&logits[r * vocab..(r + 1) * vocab], st, self.sampleable_vocab, &self.eos_token_ids);
            }
        }
        self.hand_over_drafts(ds, out, result);
    }

    /// Puts each request's drafts in the step's result, and keeps the drafter's distributions
    /// (sampled drafts) for the next step's verification.
    fn hand_over_drafts(&mut self, ds: Vec<Draft>, out: &SchedulerOutput, result: &mut ModelRunnerOutput) {
        for d in ds {
            let st = self.states.get_mut(&out.scheduled[d.idx].req_id).expect("known request");
            st.draft_probs = (!d.probs.is_empty()).then_some(d.probs);
            result.spec_token_ids[d.idx] = d.drafts;
        }
    }
}
