//! Turns one row of logits into a token, with vLLM's sampling semantics.
//!
//! Order: min-tokens mask, penalties, then greedy argmax, or temperature, min-p, top-k,
//! top-p and a draw from the request's own seeded generator. Logprobs are reported from the
//! model's raw distribution, before any of these, as vLLM does by default.

use ferrollm_core::{SamplingParams, TokenLogprob, TokenLogprobs};
use rand::rngs::StdRng;
use rand::Rng;

/// Logits after the penalties of vLLM: repetition over prompt and output, presence and
/// frequency over output only.
pub fn apply_penalties(logits: &mut [f32], params: &SamplingParams, prompt: &[u32], output: &[u32]) {
    if params.repetition_penalty != 1.0 {
        let mut seen = vec![false; logits.len()];
        for &t in prompt.iter().chain(output) {
            if let Some(s) = seen.get_mut(t as usize) {
                *s = true;
            }
        }
        for (l, s) in logits.iter_mut().zip(&seen) {
            if *s {
                *l = if *l > 0.0 { *l / params.repetition_penalty } else { *l * params.repetition_penalty };
            }
        }
    }
    if params.presence_penalty != 0.0 || params.frequency_penalty != 0.0 {
        let mut counts = std::collections::HashMap::<u32, u32>::new();
        for &t in output {
            *counts.entry(t).or_default() += 1;
        }
        for (&t, &c) in &counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= params.frequency_penalty * c as f32 + params.presence_penalty;
            }
        }
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// `log_softmax` of `logits`.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
    logits.iter().map(|l| l - lse).collect()
}

/// The chosen token's logprob and rank plus the `k` most likely tokens.
pub fn token_logprobs(logprobs: &[f32], chosen: u32, k: usize) -> TokenLogprobs {
    let lp = logprobs[chosen as usize];
    let rank = 1 + logprobs.iter().filter(|&&x| x > lp).count();
    let mut top = Vec::with_capacity(k);
    if k > 0 {
        let mut idx: Vec<u32> = (0..logprobs.len() as u32).collect();
        let kk = k.min(idx.len());
        idx.select_nth_unstable_by(kk - 1, |&a, &b| logprobs[b as usize].total_cmp(&logprobs[a as usize]));
        idx.truncate(kk);
        idx.sort_by(|&a, &b| logprobs[b as usize].total_cmp(&logprobs[a as usize]).then(a.cmp(&b)));
        for (r, &t) in idx.iter().enumerate() {
            top.push(TokenLogprob { token_id: t, logprob: logprobs[t as usize], rank: r + 1 });
        }
    }
    TokenLogprobs { chosen: TokenLogprob { token_id: chosen, logprob: lp, rank }, top }
}

/// Samples from `logits` (already penalized) under temperature, min-p, top-k and top-p.
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut StdRng) -> u32 {
    if params.is_greedy() {
        return argmax(logits);
    }
    match candidates(logits, params) {
        Some(cand) => draw(&cand, rng),
        None => argmax(logits),
    }
}

/// The distribution [`sample`] draws from when not greedy: (token, unnormalized weight) after
/// temperature, min-p, top-k and top-p, in draw order. `None` when every logit is -inf.
pub fn candidates(logits: &[f32], params: &SamplingParams) -> Option<Vec<(u32, f32)>> {
    let t = params.temperature;
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    // Candidates as (token, unnormalized prob); -inf logits drop out.
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| (i as u32, ((l - max) / t).exp()))
        .collect();
    if cand.is_empty() {
        return None;
    }
    if params.min_p > 0.0 {
        // The max candidate has weight 1 after subtracting the max logit.
        let pmax = cand.iter().map(|c| c.1).fold(0.0, f32::max);
        cand.retain(|c| c.1 >= params.min_p * pmax);
    }
    let top_k = if params.top_k > 0 { params.top_k as usize } else { usize::MAX };
    if top_k < cand.len() {
        cand.select_nth_unstable_by(top_k - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        cand.truncate(top_k);
    }
    if params.top_p < 1.0 {
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: f32 = cand.iter().map(|c| c.1).sum();
        let mut acc = 0.0;
        let mut keep = cand.len();
        for (i, c) in cand.iter().enumerate() {
            acc += c.1 / total;
            if acc >= params.top_p {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep);
    } else {
        // A fixed order makes the draw depend only on the generator, not on selection internals.
        cand.sort_by_key(|c| c.0);
    }
    Some(cand)
}

/// One draw from unnormalized weights, using one uniform from `rng`.
pub fn draw(cand: &[(u32, f32)], rng: &mut StdRng) -> u32 {
    let total: f32 = cand.iter().map(|c| c.1).sum();
    let u: f32 = rng.gen::<f32>() * total;
    let mut acc = 0.0;
    for c in cand {
        acc += c.1;
        if u < acc {
            return c.0;
        }
    }
    cand[cand.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams::default();
        f(&mut p);
        p
    }

    #[test]
    fn greedy_is_argmax() {
        let p = params(|p| p.temperature = 0.0);
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(sample(&[0.1, 3.0, 2.9, -1.0], &p, &mut rng), 1);
    }

    #[test]
    fn top_k_one_is_argmax_and_top_p_keeps_nucleus() {
        let mut rng = StdRng::seed_from_u64(1);
        let p = params(|p| p.top_k = 1);
        for _ in 0..50 {
            assert_eq!(sample(&[0.0, 1.0, 0.5], &p, &mut rng), 1);
        }
        // probs ~ [0.7, 0.2, 0.1]; top_p 0.5 keeps only token 0.
        let l = [0.7f32.ln(), 0.2f32.ln(), 0.1f32.ln()];
        let p = params(|p| p.top_p = 0.5);
        for _ in 0..50 {
            assert_eq!(sample(&l, &p, &mut rng), 0);
        }
    }

    #[test]
    fn sampling_follows_the_distribution_and_seed_reproduces() {
        let l = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let p = SamplingParams::default();
        let mut rng = StdRng::seed_from_u64(42);
        let mut counts = [0usize; 3];
        let n = 20000;
        for _ in 0..n {
            counts[sample(&l, &p, &mut rng) as usize] += 1;
        }
        for (c, want) in counts.iter().zip([0.5, 0.3, 0.2]) {
            assert!((*c as f64 / n as f64 - want).abs() < 0.02, "{counts:?}");
        }
        let draw = |seed| {
            let mut r = StdRng::seed_from_u64(seed);
            (0..20).map(|_| sample(&l, &p, &mut r)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
    }

    #[test]
    fn penalties_follow_vllm() {
        let p = params(|p| {
            p.repetition_penalty = 2.0;
            p.presence_penalty = 0.5;
            p.frequency_penalty = 0.25;
        });
        let mut l = vec![2.0, -2.0, 1.0, 1.0];
        apply_penalties(&mut l, &p, &[0], &[1, 1]);
        assert_eq!(l, vec![1.0, -4.0 - 0.5 - 0.5, 1.0, 1.0]);
    }

    #[test]
    fn logprobs_rank_and_top() {
        let lp = log_softmax(&[1.0, 3.0, 2.0]);
        let t = token_logprobs(&lp, 2, 2);
        assert_eq!(t.chosen.rank, 2);
        assert_eq!(t.top.iter().map(|x| x.token_id).collect::<Vec<_>>(), vec![1, 2]);
        let total: f32 = lp.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
    }
}
