//! Speculative decoding in the runner: drafters that propose tokens, and the rejection sampler
//! that verifies them against the target model while keeping its distribution exactly.
//!
//! Greedy requests accept drafts while each equals the target's argmax, then emit the target's
//! argmax (the correction, or the bonus token when every draft matched): token-identical to
//! plain greedy decoding. Sampled requests accept draft `d` with probability
//! `min(1, p(d) / q(d))`, else draw from `normalize(max(0, p - q))` and stop; when every draft
//! is accepted a bonus token is drawn from `p`. `p` is the target's distribution after
//! penalties, temperature, min-p, top-k and top-p at that position, with the accepted drafts
//! in its history; `q` is the drafter's distribution, a point mass for proposers without
//! probabilities (n-gram lookup). Every uniform comes from the request's own generator.

use rand::rngs::StdRng;
use rand::Rng;

use super::sampler::draw;

/// The target model's choice at one position.
#[derive(Debug, Clone)]
pub enum Target {
    /// Greedy decoding: the argmax token.
    Greedy(u32),
    /// (token, probability) over the candidates, summing to 1, in the sampler's draw order.
    Probs(Vec<(u32, f32)>),
}

/// Normalizes the sampler's candidate weights into probabilities.
pub fn normalize(mut cand: Vec<(u32, f32)>) -> Vec<(u32, f32)> {
    let total: f32 = cand.iter().map(|c| c.1).sum();
    for c in &mut cand {
        c.1 /= total;
    }
    cand
}

/// The residual distribution after rejecting a draft: `max(0, p - q)` (unnormalized).
/// `q(t)` is the draft probability of token `t`.
pub fn residual(p: &[(u32, f32)], q: &dyn Fn(u32) -> f32) -> Vec<(u32, f32)> {
    p.iter().map(|&(t, pt)| (t, (pt - q(t)).max(0.0))).filter(|c| c.1 > 0.0).collect()
}

/// Verifies `drafts`: returns the tokens to emit, the accepted drafts followed by one token of
/// the target's own (so between 1 and `drafts.len() + 1` tokens).
///
/// `target(i)` is the target's choice at draft position `i` given that `drafts[..i]` were
/// accepted (position `drafts.len()` is the bonus position). `draft_probs[i]` is the drafter's
/// full distribution at position `i`, indexed by token; `None` means point masses.
pub fn verify(
    drafts: &[u32],
    draft_probs: Option<&[Vec<f32>]>,
    target: impl FnMut(usize) -> Target,
    rng: &mut StdRng,
) -> Vec<u32> {
    verify_with(drafts, draft_probs, target, rng, residual)
}

/// [`verify`] with the residual distribution as a parameter, so tests can show that a wrong
/// one is caught.
pub fn verify_with(
    drafts: &[u32],
    draft_probs: Option<&[Vec<f32>]>,
    mut target: impl FnMut(usize) -> Target,
    rng: &mut StdRng,
    residual: impl Fn(&[(u32, f32)], &dyn Fn(u32) -> f32) -> Vec<(u32, f32)>,
) -> Vec<u32> {
    let mut out = Vec::with_capacity(drafts.len() + 1);
    for i in 0..=drafts.len() {
        let tgt = target(i);
        let Some(&d) = drafts.get(i) else {
            // Every draft accepted: the bonus token.
            out.push(match tgt {
                Target::Greedy(t) => t,
                Target::Probs(p) => draw(&p, rng),
            });
            break;
        };
        match tgt {
            Target::Greedy(t) => {
                out.push(t);
                if t != d {
                    break;
                }
            }
            Target::Probs(p) => {
                let q = |t: u32| -> f32 {
                    match draft_probs {
                        Some(q) => q[i].get(t as usize).copied().unwrap_or(0.0),
                        None => f32::from(t == d),
                    }
                };
                let pd = p.iter().find(|c| c.0 == d).map_or(0.0, |c| c.1);
                let qd = q(d);
                let u: f32 = rng.gen();
                if qd > 0.0 && u * qd < pd {
                    out.push(d);
                    continue;
                }
                let r = residual(&p, &q);
                // An empty residual means p <= q everywhere, i.e. p == q up to rounding, when a
                // rejection is (almost) impossible; p itself is then the right distribution.
                out.push(if r.is_empty() { draw(&p, rng) } else { draw(&r, rng) });
                break;
            }
        }
    }
    out
}

/// N-gram lookup (prompt lookup decoding): for n from `max_n` down to `min_n`, finds the latest
/// earlier occurrence of the last n tokens and proposes up to `k` tokens that followed it.
pub fn propose_ngram(tokens: &[u32], min_n: usize, max_n: usize, k: usize) -> Vec<u32> {
    let len = tokens.len();
    for n in (min_n..=max_n).rev() {
        if n == 0 || n >= len {
            continue;
        }
        let suffix = &tokens[len - n..];
        // Latest match first: it is likeliest to be the passage being copied right now.
        for i in (0..len - n).rev() {
            if tokens[i..i + n] == *suffix {
                let start = i + n;
                return tokens[start..(start + k).min(len)].to_vec();
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::SeedableRng;

    use super::*;

    #[test]
    fn ngram_finds_the_longest_latest_match() {
        // "1 2 3 4 5 ... 1 2 3" -> propose "4 5".
        let t = [1, 2, 3, 4, 5, 9, 9, 1, 2, 3];
        assert_eq!(propose_ngram(&t, 1, 3, 2), vec![4, 5]);
        assert_eq!(propose_ngram(&t, 1, 3, 10), vec![4, 5, 9, 9, 1, 2, 3]);
        // The 2-gram "7 3" never occurred; with min 1 the 1-gram "3" did.
        let t = [3, 8, 8, 7, 3];
        assert_eq!(propose_ngram(&t, 2, 2, 3), Vec::<u32>::new());
        assert_eq!(propose_ngram(&t, 1, 2, 3), vec![8, 8, 7]);
        assert!(propose_ngram(&[5], 1, 3, 3).is_empty());
        // Latest occurrence wins.
        assert_eq!(propose_ngram(&[1, 2, 1, 3, 1], 1, 1, 1), vec![3]);
    }

    #[test]
    fn greedy_accepts_while_drafts_match_then_corrects() {
        let argmaxes = [4, 5, 6, 7];
        let mut rng = StdRng::seed_from_u64(0);
        let tgt = |i: usize| Target::Greedy(argmaxes[i]);
        assert_eq!(verify(&[4, 5, 6], None, tgt, &mut rng), vec![4, 5, 6, 7]);
        assert_eq!(verify(&[4, 9, 6], None, tgt, &mut rng), vec![4, 5]);
        assert_eq!(verify(&[1, 5, 6], None, tgt, &mut rng), vec![4]);
        assert_eq!(verify(&[], None, tgt, &mut rng), vec![4]);
    }

    const V: usize = 6;

    /// A two-step target: p0, then p1 depending on the first token.
    fn p0() -> Vec<f32> {
        vec![0.05, 0.4, 0.1, 0.3, 0.15, 0.0]
    }
    fn p1(prev: u32) -> Vec<f32> {
        let mut p: Vec<f32> = (0..V).map(|t| 1.0 + ((t as u32 * 7 + prev * 3) % 5) as f32).collect();
        p[prev as usize] *= 3.0;
        let s: f32 = p.iter().sum();
        p.iter().map(|x| x / s).collect()
    }
    /// The drafter's distributions: deliberately unlike the target's.
    fn q_at(prefix: &[u32]) -> Vec<f32> {
        let mut q: Vec<f32> = (0..V)
            .map(|t| 1.0 + ((t + 2 * prefix.len() + prefix.last().map_or(0, |&x| x as usize)) % 3) as f32)
            .collect();
        q[5] += 2.0;
        let s: f32 = q.iter().sum();
        q.iter().map(|x| x / s).collect()
    }
    fn target_probs(prefix: &[u32]) -> Target {
        let p = match prefix.len() {
            0 => p0(),
            1 => p1(prefix[0]),
            _ => vec![1.0 / V as f32; V],
        };
        Target::Probs((0..V as u32).zip(p).filter(|c| c.1 > 0.0).collect())
    }
    fn sample_dense(q: &[f32], rng: &mut StdRng) -> u32 {
        draw(&(0..q.len() as u32).zip(q.iter().copied()).collect::<Vec<_>>(), rng)
    }

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Variant {
        Correct,
        /// Resamples from p instead of the residual after a rejection.
        ResampleFromTarget,
        /// Draws drafts from q but verifies them against other (uniform) draft probabilities.
        /// (Verifying them as point masses instead would be exact, only slower.)
        WrongDraftProbs,
    }

    /// Generates the first two tokens `trials` times with speculation (`k` drafts per step,
    /// from q when `dense`, else a fixed point-mass guess) and returns the total-variation
    /// distance between their empirical joint distribution and the target's exact one.
    fn tv_distance(trials: usize, k: usize, dense: bool, variant: Variant) -> f64 {
        let mut rng = StdRng::seed_from_u64(1234);
        let mut counts: HashMap<(u32, u32), usize> = HashMap::new();
        for _ in 0..trials {
            let mut emitted: Vec<u32> = Vec::new();
            while emitted.len() < 2 {
                let mut drafts = Vec::new();
                let mut qs = Vec::new();
                for j in 0..k {
                    let mut prefix = emitted.clone();
                    prefix.extend(&drafts);
                    if dense {
                        let q = q_at(&prefix);
                        drafts.push(sample_dense(&q, &mut rng));
                        qs.push(q);
                    } else {
                        // An n-gram-like guess: deterministic given the prefix.
                        drafts.push(((prefix.len() + j) % 2 * 2 + 1) as u32);
                    }
                }
                let target = |i: usize| {
                    let mut prefix = emitted.clone();
                    prefix.extend(&drafts[..i]);
                    target_probs(&prefix)
                };
                if variant == Variant::WrongDraftProbs {
                    qs = vec![vec![1.0 / V as f32; V]; qs.len()];
                }
                let probs = dense.then_some(&qs[..]);
                let out = match variant {
                    Variant::ResampleFromTarget => verify_with(&drafts, probs, target, &mut rng, |p, _| p.to_vec()),
                    _ => verify(&drafts, probs, target, &mut rng),
                };
                assert!(!out.is_empty() && out.len() <= k + 1);
                emitted.extend(out);
            }
            *counts.entry((emitted[0], emitted[1])).or_default() += 1;
        }
        let mut tv = 0.0;
        for a in 0..V as u32 {
            for b in 0..V as u32 {
                let want = (p0()[a as usize] * p1(a)[b as usize]) as f64;
                let got = *counts.get(&(a, b)).unwrap_or(&0) as f64 / trials as f64;
                tv += (want - got).abs() / 2.0;
            }
        }
        eprintln!("k={k} dense={dense} {variant:?}: TV {tv:.4}");
        tv
    }

    /// 36 outcomes, 40 000 seeded trials: the expected total-variation distance of an exact
    /// sampler is about 0.5 * sum(sqrt(2 p / (pi N))) < 0.012, with a spread near 0.002; the
    /// bound 0.025 leaves over five spreads of margin, and each broken variant lands far above it.
    const TRIALS: usize = 40_000;
    const TV_BOUND: f64 = 0.025;

    #[test]
    fn rejection_sampling_keeps_the_target_distribution() {
        for (k, dense) in [(1, false), (3, false), (1, true), (3, true)] {
            let tv = tv_distance(TRIALS, k, dense, Variant::Correct);
            assert!(tv < TV_BOUND, "k={k} dense={dense}: TV {tv:.4} >= {TV_BOUND}");
        }
    }

    #[test]
    fn the_distribution_test_catches_broken_samplers() {
        let tv = tv_distance(TRIALS, 2, true, Variant::ResampleFromTarget);
        assert!(tv > 2.0 * TV_BOUND, "resampling from p went unnoticed: TV {tv:.4}");
        let tv = tv_distance(TRIALS, 2, false, Variant::ResampleFromTarget);
        assert!(tv > 2.0 * TV_BOUND, "point mass, resampling from p went unnoticed: TV {tv:.4}");
        let tv = tv_distance(TRIALS, 2, true, Variant::WrongDraftProbs);
        assert!(tv > 2.0 * TV_BOUND, "wrong q went unnoticed: TV {tv:.4}");
    }

    #[test]
    fn seeded_verification_reproduces() {
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50).flat_map(|_| verify(&[1, 3], None, |i| target_probs(&[1, 3][..i]), &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }
}
