//! The Llama family (Llama 2/3, Mistral, SmolLM, Qwen2) over one flat variable-length batch.
//!
//! A step's tokens from every sequence sit in one `[tokens, hidden]` activation matrix, so
//! each weight matrix is streamed once per step whatever the mix of prefill chunks and
//! decodes. Only attention looks at sequence boundaries, through the paged KV cache.

use std::sync::Arc;

use ferrollm_kernels::ops::RopeTable;
use ferrollm_kernels::{AttentionSeq, Backend, KvMut, KvRef, KvShape, PagedKv, QMatrix, TokenKind, TokenRun};

use crate::{Architecture, ModelConfig, ModelError, WeightSource};

struct Layer {
    attn_norm: Vec<f32>,
    wq: QMatrix,
    wk: QMatrix,
    wv: QMatrix,
    wo: QMatrix,
    /// Qwen2's q/k/v biases.
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    w_gate: QMatrix,
    w_up: QMatrix,
    w_down: QMatrix,
}

pub struct LlamaModel {
    pub config: ModelConfig,
    embed: QMatrix,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: QMatrix,
    rope: RopeTable,
    backend: Arc<dyn Backend>,
}

/// The paged KV cache: per layer, K and V as `[num_blocks, block_size, n_kv_heads, head_dim]`,
/// in f16 ([`KvCache::new`], llama.cpp's default KV type) or f32 ([`KvCache::new_f32`], for
/// checks against f32 references).
pub struct KvCache {
    pub num_blocks: usize,
    pub block_size: usize,
    kv_dim: usize,
    layers: Vec<KvLayer>,
}

enum KvLayer {
    F32(Vec<f32>, Vec<f32>),
    F16(Vec<u16>, Vec<u16>),
}

impl KvLayer {
    fn as_ref(&self) -> KvRef<'_> {
        match self {
            KvLayer::F32(k, v) => KvRef::F32 { k, v },
            KvLayer::F16(k, v) => KvRef::F16 { k, v },
        }
    }

    fn as_mut(&mut self) -> KvMut<'_> {
        match self {
            KvLayer::F32(k, v) => KvMut::F32 { k, v },
            KvLayer::F16(k, v) => KvMut::F16 { k, v },
        }
    }
}

impl KvCache {
    /// An f16 cache of `num_blocks` blocks; [`KvCache::bytes_per_block`] each.
    pub fn new(config: &ModelConfig, num_blocks: usize, block_size: usize) -> KvCache {
        Self::with_layers(config, num_blocks, block_size, |n| KvLayer::F16(vec![0; n], vec![0; n]))
    }

    /// An f32 cache (twice the memory): attention then sees K and V unrounded.
    pub fn new_f32(config: &ModelConfig, num_blocks: usize, block_size: usize) -> KvCache {
        Self::with_layers(config, num_blocks, block_size, |n| KvLayer::F32(vec![0.0; n], vec![0.0; n]))
    }

    fn with_layers(
        config: &ModelConfig,
        num_blocks: usize,
        block_size: usize,
        layer: impl Fn(usize) -> KvLayer,
    ) -> KvCache {
        let kv_dim = config.num_kv_heads * config.head_dim;
        let n = num_blocks * block_size * kv_dim;
        let layers = (0..config.num_layers).map(|_| layer(n)).collect();
        KvCache { num_blocks, block_size, kv_dim, layers }
    }

    /// Bytes one block of a [`KvCache::new`] (f16) cache takes across all layers, K and V.
    pub fn bytes_per_block(config: &ModelConfig, block_size: usize) -> usize {
        2 * config.num_layers * block_size * config.num_kv_heads * config.head_dim * std::mem::size_of::<u16>()
    }

    /// Slot index of position `pos` for a sequence with `block_table`.
    pub fn slot(&self, block_table: &[u32], pos: usize) -> usize {
        block_table[pos / self.block_size] as usize * self.block_size + pos % self.block_size
    }
}

/// One sequence's share of a [`ForwardBatch`].
#[derive(Debug, Clone, Copy)]
pub struct SeqSlice<'a> {
    /// Row of its first token in the flat batch.
    pub query_start: usize,
    pub query_len: usize,
    /// Position of its first token (tokens before it are already in the cache).
    pub start_pos: usize,
    /// Positions below this are the request's prompt, the rest tokens it generated (which may
    /// be computed with other kernels, [`TokenKind`]); 0 for passes over generated tokens only.
    pub prompt_len: usize,
    pub block_table: &'a [u32],
}

impl ForwardBatch<'_> {
    /// The batch's tokens as runs of one [`TokenKind`] each, in row order.
    fn token_runs(&self) -> Vec<TokenRun> {
        let mut runs: Vec<TokenRun> = Vec::new();
        let mut push = |len: usize, kind: TokenKind| match runs.last_mut() {
            _ if len == 0 => {}
            Some(last) if last.kind == kind => last.len += len,
            _ => runs.push(TokenRun { len, kind }),
        };
        let mut row = 0;
        for s in self.seqs {
            // Rows no sequence claims (none in practice) count as generated.
            push(s.query_start.saturating_sub(row), TokenKind::Generated);
            let prompt = s.prompt_len.saturating_sub(s.start_pos).min(s.query_len);
            push(prompt, TokenKind::Prompt);
            push(s.query_len - prompt, TokenKind::Generated);
            row = row.max(s.query_start + s.query_len);
        }
        push(self.token_ids.len().saturating_sub(row), TokenKind::Generated);
        runs
    }
}

/// Inputs of one forward pass.
pub struct ForwardBatch<'a> {
    pub token_ids: &'a [u32],
    pub positions: &'a [u32],
    /// KV slot (block * block_size + offset) of each token.
    pub slot_mapping: &'a [usize],
    pub seqs: &'a [SeqSlice<'a>],
    /// Rows whose logits are wanted, in output order.
    pub logits_indices: &'a [usize],
}

fn vector(src: &dyn WeightSource, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let t = src.tensor(name)?;
    let numel: usize = t.shape.iter().product();
    if numel != len {
        return Err(ModelError::BadShape { name: name.into(), got: t.shape.clone(), want: vec![len] });
    }
    t.to_f32()
}

/// A projection's weights, in the layout the matmul kernels read fastest.
fn linear(src: &dyn WeightSource, name: &str, rows: usize, cols: usize) -> Result<QMatrix, ModelError> {
    Ok(matrix(src, name, rows, cols)?.prepared_for_matmul())
}

fn matrix(src: &dyn WeightSource, name: &str, rows: usize, cols: usize) -> Result<QMatrix, ModelError> {
    let t = src.tensor(name)?;
    if t.shape != [rows, cols] {
        return Err(ModelError::BadShape { name: name.into(), got: t.shape.clone(), want: vec![rows, cols] });
    }
    t.into_matrix()
}

impl LlamaModel {
    pub fn load(config: ModelConfig, src: &dyn WeightSource, backend: Arc<dyn Backend>) -> Result<Self, ModelError> {
        let c = &config;
        let (h, q_dim, kv_dim) = (c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let bias = |name: String, len: usize| -> Result<Option<Vec<f32>>, ModelError> {
            match c.architecture {
                Architecture::Qwen2 => vector(src, &name, len).map(Some),
                Architecture::Llama if src.has(&name) => vector(src, &name, len).map(Some),
                Architecture::Llama => Ok(None),
            }
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            layers.push(Layer {
                attn_norm: vector(src, &p("attn_norm.weight"), h)?,
                wq: linear(src, &p("attn_q.weight"), q_dim, h)?,
                wk: linear(src, &p("attn_k.weight"), kv_dim, h)?,
                wv: linear(src, &p("attn_v.weight"), kv_dim, h)?,
                wo: linear(src, &p("attn_output.weight"), h, q_dim)?,
                bq: bias(p("attn_q.bias"), q_dim)?,
                bk: bias(p("attn_k.bias"), kv_dim)?,
                bv: bias(p("attn_v.bias"), kv_dim)?,
                ffn_norm: vector(src, &p("ffn_norm.weight"), h)?,
                w_gate: linear(src, &p("ffn_gate.weight"), c.intermediate_size, h)?,
                w_up: linear(src, &p("ffn_up.weight"), c.intermediate_size, h)?,
                w_down: linear(src, &p("ffn_down.weight"), h, c.intermediate_size)?,
            });
        }
        let embed = matrix(src, "token_embd.weight", c.vocab_size, h)?;
        let lm_head =
            // Tied embeddings: the lookup keeps the row layout, the head gets its own copy.
            if src.has("output.weight") { linear(src, "output.weight", c.vocab_size, h)? } else { embed.clone().prepared_for_matmul() };
        let norm = vector(src, "output_norm.weight", h)?;
        let rope = RopeTable::new(c.head_dim, c.max_position_embeddings, c.rope_theta);
        Ok(LlamaModel { config, embed, layers, norm, lm_head, rope, backend })
    }

    /// Bytes of weights read per decode step: the figure that bounds batch-1 speed.
    pub fn weight_bytes(&self) -> usize {
        let l: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                    .iter()
                    .map(|m| m.bytes().len())
                    .sum::<usize>()
            })
            .sum();
        l + self.lm_head.bytes().len()
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Runs the batch, writing each token's K/V into the cache, and returns the logits of
    /// `logits_indices` rows as `[logits_indices.len(), vocab]`.
    pub fn forward(&self, batch: &ForwardBatch, kv: &mut KvCache) -> Vec<f32> {
        self.forward_layers(batch, kv, self.layers.len())
    }

    /// [`forward`](Self::forward) through the first `num_layers` layers only, then the final
    /// norm and head: the model's own early-exit drafter (layer-skip self-speculation). It
    /// writes K/V of those layers only, exactly what the full model writes there.
    pub fn forward_layers(&self, batch: &ForwardBatch, kv: &mut KvCache, num_layers: usize) -> Vec<f32> {
        let c = &self.config;
        let be = &*self.backend;
        let n = batch.token_ids.len();
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (q_dim, kv_dim, ff) = (c.num_heads * hd, c.num_kv_heads * hd, c.intermediate_size);
        assert_eq!(kv.kv_dim, kv_dim, "KV cache built for another model");
        let style = c.rope_style;

        let mut x = vec![0f32; n * h];
        for (t, &id) in batch.token_ids.iter().enumerate() {
            self.embed.dequantize_row(id as usize, &mut x[t * h..(t + 1) * h]);
        }
        let mut xn = vec![0f32; n * h];
        let mut q = vec![0f32; n * q_dim];
        let mut k = vec![0f32; n * kv_dim];
        let mut v = vec![0f32; n * kv_dim];
        let mut attn = vec![0f32; n * q_dim];
        let mut o = vec![0f32; n * h];
        let mut gate = vec![0f32; n * ff];
        let mut up = vec![0f32; n * ff];
        let attn_seqs: Vec<AttentionSeq> = batch
            .seqs
            .iter()
            .map(|s| AttentionSeq {
                query_start: s.query_start,
                query_len: s.query_len,
                context_len: s.start_pos + s.query_len,
                block_table: s.block_table,
            })
            .collect();
        let scale = 1.0 / (hd as f32).sqrt();
        let runs = batch.token_runs();

        for (layer, kvl) in self.layers.iter().zip(kv.layers.iter_mut()).take(num_layers) {
            be.rms_norm(&x, &layer.attn_norm, c.rms_norm_eps, &mut xn);
            // One dispatch for Q, K and V (they share the input and, usually, the dtype).
            be.matmul_many_runs(&[&layer.wq, &layer.wk, &layer.wv], &xn, &runs, &mut [&mut q, &mut k, &mut v]);
            if let (Some(bq), Some(bk), Some(bv)) = (&layer.bq, &layer.bk, &layer.bv) {
                ferrollm_kernels::ops::add_bias(&mut q, bq);
                ferrollm_kernels::ops::add_bias(&mut k, bk);
                ferrollm_kernels::ops::add_bias(&mut v, bv);
            }
            be.rope(&self.rope, &mut q, batch.positions, c.num_heads, style);
            be.rope(&self.rope, &mut k, batch.positions, c.num_kv_heads, style);
            let shape = KvShape { block_size: kv.block_size, n_kv_heads: c.num_kv_heads, head_dim: hd };
            be.write_kv(kvl.as_mut(), &k, &v, batch.slot_mapping, shape);
            let paged = PagedKv { data: kvl.as_ref(), shape };
            be.paged_attention(&q, &paged, &attn_seqs, c.num_heads, scale, &mut attn);
            be.matmul_many_runs(&[&layer.wo], &attn, &runs, &mut [&mut o]);
            be.add_inplace(&mut x, &o);

            be.rms_norm(&x, &layer.ffn_norm, c.rms_norm_eps, &mut xn);
            be.matmul_many_runs(&[&layer.w_gate, &layer.w_up], &xn, &runs, &mut [&mut gate, &mut up]);
            be.silu_mul(&mut gate, &up);
            be.matmul_many_runs(&[&layer.w_down], &gate, &runs, &mut [&mut o]);
            be.add_inplace(&mut x, &o);
        }

        let m = batch.logits_indices.len();
        let mut last = vec![0f32; m * h];
        for (i, &row) in batch.logits_indices.iter().enumerate() {
            last[i * h..(i + 1) * h].copy_from_slice(&x[row * h..(row + 1) * h]);
        }
        let mut normed = vec![0f32; m * h];
        be.rms_norm(&last, &self.norm, c.rms_norm_eps, &mut normed);
        let mut logits = vec![0f32; m * c.vocab_size];
        // A few rows, whatever their tokens: the head keeps the vector kernels.
        be.matmul(&self.lm_head, &normed, m, &mut logits);
        logits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(query_start: usize, query_len: usize, start_pos: usize, prompt_len: usize) -> SeqSlice<'static> {
        SeqSlice { query_start, query_len, start_pos, prompt_len, block_table: &[] }
    }

    /// Prompt positions are prompt tokens wherever their chunk starts, the rest generated;
    /// neighbouring runs of one kind merge.
    #[test]
    fn token_runs_follow_each_sequence_s_prompt() {
        let seqs = [
            seq(0, 1, 40, 30), // a decode step
            seq(1, 1, 9, 0),   // a draft pass
            seq(2, 8, 16, 20), // a chunk ending 4 past its prompt (resumed after preemption)
            seq(10, 6, 0, 100),
            seq(16, 5, 94, 99), // the last prompt chunk
        ];
        let ids = [0u32; 21];
        let batch =
            ForwardBatch { token_ids: &ids, positions: &[], slot_mapping: &[], seqs: &seqs, logits_indices: &[] };
        let got: Vec<(usize, TokenKind)> = batch.token_runs().iter().map(|r| (r.len, r.kind)).collect();
        use TokenKind::{Generated as G, Prompt as P};
        assert_eq!(got, [(2, G), (4, P), (4, G), (11, P)]);
    }
}
