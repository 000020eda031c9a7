//! Per-request block tables over the shared [`BlockPool`], with prefix caching.

use std::collections::HashMap;

use super::block_hash::{BlockHash, ExtraKeys};
use super::block_pool::{BlockId, BlockPool};
use crate::{Request, RequestId};

/// One request's blocks.
#[derive(Debug, Clone, Default)]
struct RequestBlocks {
    /// Physical blocks for positions `0..`, `block_size` tokens each. Append-only while the
    /// request holds them.
    blocks: Vec<BlockId>,
    /// Names of the first `hashes.len()` blocks, each full of computed KV; the next block to
    /// name (and cache) is `blocks[hashes.len()]`. A name is kept even when its block stayed
    /// uncached as a duplicate, because the next block's name chains from it.
    hashes: Vec<BlockHash>,
}

/// Prefix-cache lookups, counted in tokens as vLLM exports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Tokens of requests looked up when they were admitted (or resumed).
    pub queries: u64,
    /// Of those, tokens whose KV was found in the cache.
    pub hits: u64,
}

/// Hands KV blocks to requests, caches full blocks by name, and finds cached prefixes.
///
/// The scheduler drives it: [`get_computed_blocks`](Self::get_computed_blocks) when admitting
/// a request, [`allocate_slots`](Self::allocate_slots) each step before computing tokens,
/// [`cache_full_blocks`](Self::cache_full_blocks) after a step has written their KV, and
/// [`free`](Self::free) on finish or preemption. A block is only cached once its KV has been
/// computed, so a hit never reads KV that is still being written.
#[derive(Debug, Clone)]
pub struct KvCacheManager {
    block_size: usize,
    enable_caching: bool,
    pool: BlockPool,
    requests: HashMap<RequestId, RequestBlocks>,
    stats: PrefixCacheStats,
}

impl KvCacheManager {
    pub fn new(num_blocks: usize, block_size: usize, enable_caching: bool) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        KvCacheManager {
            block_size,
            enable_caching,
            pool: BlockPool::new(num_blocks, enable_caching),
            requests: HashMap::new(),
            stats: PrefixCacheStats::default(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.pool.num_blocks()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.pool.num_free_blocks()
    }

    /// Fraction of blocks held by requests (0..=1).
    pub fn usage(&self) -> f32 {
        self.pool.usage()
    }

    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.stats
    }

    /// The pool, for inspection (eviction order, reference counts).
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// The request's blocks for positions `0..`; empty for a request holding none.
    pub fn block_table(&self, req_id: &str) -> &[BlockId] {
        self.requests.get(req_id).map_or(&[], |r| &r.blocks)
    }

    /// The longest cached prefix of `req`'s full blocks: their ids and the tokens they cover.
    ///
    /// At least the last known token is always left to compute, because computing it is what
    /// produces the logits for the next token; so a prompt of exactly `k` full blocks hits at
    /// most `k - 1` of them. Nothing is taken yet: pass the ids to `allocate_slots`.
    pub fn get_computed_blocks(&self, req: &Request) -> (Vec<BlockId>, usize) {
        if !self.enable_caching {
            return (Vec::new(), 0);
        }
        let bs = self.block_size;
        let max_blocks = req.num_tokens().saturating_sub(1) / bs;
        let extra = extra_keys(req);
        let mut hits = Vec::new();
        let mut parent = None;
        let mut buf = Vec::with_capacity(bs);
        for i in 0..max_blocks {
            let h = BlockHash::of_block(parent, block_tokens(req, i, bs, &mut buf), extra);
            match self.pool.get_cached_block(h) {
                Some(b) => hits.push(b),
                None => break,
            }
            parent = Some(h);
        }
        let num_tokens = hits.len() * bs;
        (hits, num_tokens)
    }

    /// Makes room for `num_new_tokens` more tokens of `req` after its computed ones, first
    /// taking `new_computed_blocks` (a prefix hit, only on the request's first allocation).
    ///
    /// Returns the number of blocks taken from the free queue, or `None` when the pool cannot
    /// supply them, in which case nothing changed. A request's first allocation counts its
    /// prefix lookup in [`prefix_cache_stats`](Self::prefix_cache_stats). `num_new_tokens`
    /// may include speculative tokens that are later rejected: their slots are overwritten.
    #[must_use = "None means nothing was allocated"]
    pub fn allocate_slots(
        &mut self,
        req: &Request,
        num_new_tokens: usize,
        new_computed_blocks: &[BlockId],
    ) -> Option<usize> {
        let bs = self.block_size;
        let num_held = self.requests.get(&req.id).map_or(0, |r| r.blocks.len());
        assert!(
            new_computed_blocks.is_empty() || (num_held == 0 && req.num_computed_tokens == 0),
            "request {}: prefix hits are only taken on first allocation",
            req.id
        );
        let num_computed = req.num_computed_tokens + new_computed_blocks.len() * bs;
        let num_required = (num_computed + num_new_tokens).div_ceil(bs);
        let num_new_blocks = num_required.saturating_sub(num_held + new_computed_blocks.len());
        // Hit blocks that sit in the free queue stop being free once taken.
        let num_evictable_hits = new_computed_blocks.iter().filter(|&&b| self.pool.ref_cnt(b) == 0).count();
        if num_new_blocks + num_evictable_hits > self.pool.num_free_blocks() {
            return None;
        }

        let first_allocation = num_held == 0 && req.num_computed_tokens == 0;
        if first_allocation && self.enable_caching {
            self.stats.queries += req.num_tokens() as u64;
            self.stats.hits += (new_computed_blocks.len() * bs) as u64;
        }
        // Touch the hits before allocating, so that allocation cannot evict them.
        self.pool.touch(new_computed_blocks);
        let new_blocks = self.pool.get_new_blocks(num_new_blocks).expect("free blocks counted above");
        let state = self.requests.entry(req.id.clone()).or_default();
        for &b in new_computed_blocks {
            state.hashes.push(self.pool.block_hash(b).expect("a prefix hit is a cached block"));
            state.blocks.push(b);
        }
        state.blocks.extend(new_blocks);
        Some(num_new_blocks)
    }

    /// Names and caches the request's blocks that its computed tokens now fill, so that later
    /// requests can hit them. Call after each step has advanced `num_computed_tokens`.
    pub fn cache_full_blocks(&mut self, req: &Request) {
        if !self.enable_caching {
            return;
        }
        let bs = self.block_size;
        let Some(state) = self.requests.get_mut(&req.id) else { return };
        let num_full = req.num_computed_tokens.min(req.num_tokens()) / bs;
        debug_assert!(num_full <= state.blocks.len(), "request {} computed past its blocks", req.id);
        let extra = extra_keys(req);
        let mut buf = Vec::with_capacity(bs);
        for i in state.hashes.len()..num_full {
            let h = BlockHash::of_block(state.hashes.last().copied(), block_tokens(req, i, bs, &mut buf), extra);
            self.pool.cache_full_block(state.blocks[i], h);
            state.hashes.push(h);
        }
    }

    /// Returns the request's blocks to the pool, last block first so that it is evicted first:
    /// a later request sharing a prefix is likelier to need the early blocks. Unknown ids are
    /// ignored (a request that never got blocks, or was already freed).
    pub fn free(&mut self, req_id: &str) {
        if let Some(state) = self.requests.remove(req_id) {
            self.pool.free_blocks(state.blocks.into_iter().rev());
        }
    }

    /// Forgets all cached KV; refused (false) while any request holds blocks.
    pub fn reset_prefix_cache(&mut self) -> bool {
        if !self.pool.reset_prefix_cache() {
            return false;
        }
        for state in self.requests.values_mut() {
            state.hashes.clear();
        }
        true
    }

    /// Checks the pool's invariants and that reference counts match the block tables.
    pub fn check_invariants(&self) {
        self.pool.check_invariants();
        let mut refs = vec![0u32; self.pool.num_blocks()];
        for (id, state) in &self.requests {
            assert!(state.hashes.len() <= state.blocks.len(), "request {id} names blocks it lacks");
            for (i, &b) in state.blocks.iter().enumerate() {
                refs[b as usize] += 1;
                if let Some(h) = self.pool.block_hash(b) {
                    assert_eq!(state.hashes.get(i), Some(&h), "request {id}: block {b} cached under another name");
                }
            }
        }
        for (b, &n) in refs.iter().enumerate() {
            assert_eq!(self.pool.ref_cnt(b as BlockId), n, "block {b}: ref count differs from its holders");
        }
    }
}

fn extra_keys(req: &Request) -> ExtraKeys<'_> {
    ExtraKeys { cache_salt: req.cache_salt.as_deref(), lora_id: None }
}

/// The tokens of the request's block `i`, borrowed from the prompt when it lies inside it.
fn block_tokens<'a>(req: &'a Request, i: usize, bs: usize, buf: &'a mut Vec<u32>) -> &'a [u32] {
    let (start, end) = (i * bs, (i + 1) * bs);
    let p = req.prompt_token_ids.len();
    if end <= p {
        return &req.prompt_token_ids[start..end];
    }
    buf.clear();
    buf.extend((start..end).map(|j| req.token_at(j)));
    buf
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::SamplingParams;

    fn req(id: &str, prompt: Vec<u32>) -> Request {
        Request::new(id, prompt, Arc::new(SamplingParams::default()))
    }

    /// Admits `r` as the scheduler would and marks its whole prompt computed.
    fn prefill(m: &mut KvCacheManager, r: &mut Request) -> usize {
        let (hits, n) = m.get_computed_blocks(r);
        m.allocate_slots(r, r.num_tokens() - n, &hits).expect("room");
        r.num_computed_tokens = r.num_tokens();
        m.cache_full_blocks(r);
        n
    }

    #[test]
    fn a_shared_1000_token_prefix_is_served_from_the_cache() {
        let mut m = KvCacheManager::new(200, 16, true);
        let prefix: Vec<u32> = (0..1000).collect();
        let mut a = req("a", [prefix.clone(), vec![7; 20]].concat());
        assert_eq!(prefill(&mut m, &mut a), 0);
        let mut b = req("b", [prefix, vec![9; 30]].concat());
        let (hits, n) = m.get_computed_blocks(&b);
        assert_eq!(n, 992);
        assert_eq!(hits, &m.block_table("a")[..62]);
        m.allocate_slots(&b, b.num_tokens() - n, &hits).unwrap();
        b.num_computed_tokens = b.num_tokens();
        assert_eq!(m.prefix_cache_stats(), PrefixCacheStats { queries: 1020 + 1030, hits: 992 });
        m.check_invariants();
        // The shared blocks are held twice.
        assert_eq!(m.pool().ref_cnt(hits[0]), 2);
        m.free("a");
        m.free("b");
        m.check_invariants();
        assert_eq!(m.num_free_blocks(), 200);
    }

    #[test]
    fn the_last_prompt_token_is_always_computed() {
        let mut m = KvCacheManager::new(10, 4, true);
        let mut a = req("a", (0..8).collect());
        prefill(&mut m, &mut a);
        // Same 8 tokens: two full cached blocks, but only the first may be hit.
        let b = req("b", (0..8).collect());
        assert_eq!(m.get_computed_blocks(&b).1, 4);
        // One token more: both blocks hit, the 9th token is computed.
        let c = req("c", (0..9).collect());
        assert_eq!(m.get_computed_blocks(&c).1, 8);
        // A prompt shorter than a block hits nothing.
        let d = req("d", (0..3).collect());
        assert_eq!(m.get_computed_blocks(&d).1, 0);
    }

    #[test]
    fn partial_blocks_are_not_cached() {
        let mut m = KvCacheManager::new(10, 4, true);
        let mut a = req("a", (0..6).collect());
        prefill(&mut m, &mut a);
        assert_eq!(m.pool().num_cached_blocks(), 1);
        let b = req("b", (0..7).collect());
        assert_eq!(m.get_computed_blocks(&b).1, 4);
    }

    #[test]
    fn generated_tokens_fill_blocks_that_get_cached() {
        let mut m = KvCacheManager::new(10, 4, true);
        let mut a = req("a", (0..3).collect());
        prefill(&mut m, &mut a);
        // Decode: sample token 3, compute it, sample 4.
        a.output_token_ids.push(3);
        m.allocate_slots(&a, 1, &[]).unwrap();
        a.num_computed_tokens += 1;
        a.output_token_ids.push(4);
        m.cache_full_blocks(&a);
        assert_eq!(m.pool().num_cached_blocks(), 1);
        let b = req("b", (0..6).collect());
        assert_eq!(m.get_computed_blocks(&b), (vec![m.block_table("a")[0]], 4));
    }

    #[test]
    fn the_same_block_under_another_parent_or_salt_does_not_hit() {
        let mut m = KvCacheManager::new(10, 4, true);
        let mut a = req("a", vec![1, 1, 1, 1, 2, 2, 2, 2, 0]);
        prefill(&mut m, &mut a);
        // Second block's tokens match, first block's do not.
        let b = req("b", vec![9, 9, 9, 9, 2, 2, 2, 2, 0]);
        assert_eq!(m.get_computed_blocks(&b).1, 0);
        let mut c = req("c", vec![1, 1, 1, 1, 2, 2, 2, 2, 0]);
        c.cache_salt = Some("other tenant".into());
        assert_eq!(m.get_computed_blocks(&c).1, 0);
        let d = req("d", vec![1, 1, 1, 1, 2, 2, 2, 2, 0]);
        assert_eq!(m.get_computed_blocks(&d).1, 8);
    }

    #[test]
    fn eviction_takes_the_least_recently_freed_and_a_requests_tail_first() {
        let mut m = KvCacheManager::new(6, 4, true);
        let mut a = req("a", (0..13).collect()); // 4 blocks, 3 full
        prefill(&mut m, &mut a);
        let ta = m.block_table("a").to_vec();
        m.free("a");
        // Untouched blocks first, then a's blocks last-first.
        let order: Vec<_> = m.pool().free_queue().collect();
        assert_eq!(order, [4, 5, ta[3], ta[2], ta[1], ta[0]]);
        // A 4-block request without hits takes 4, 5 and a's last two blocks; a's second block
        // (tokens 4..8) is evicted before its first.
        let mut b = req("b", (100..116).collect());
        prefill(&mut m, &mut b);
        assert_eq!(m.block_table("b"), [4, 5, ta[3], ta[2]]);
        let probe = req("p", (0..13).collect());
        assert_eq!(m.get_computed_blocks(&probe).1, 8);
        let mut c = req("c", (200..204).collect());
        prefill(&mut m, &mut c);
        assert_eq!(m.block_table("c"), [ta[1]]);
        assert_eq!(m.get_computed_blocks(&probe).1, 4);
        m.check_invariants();
    }

    #[test]
    fn failed_allocation_leaks_nothing_and_keeps_hits_cached() {
        let mut m = KvCacheManager::new(4, 4, true);
        let mut a = req("a", (0..9).collect());
        prefill(&mut m, &mut a);
        m.free("a");
        let b = req("b", (0..40).collect());
        let (hits, n) = m.get_computed_blocks(&b);
        assert_eq!(n, 8);
        assert_eq!(m.allocate_slots(&b, 32, &hits), None);
        assert_eq!(m.num_free_blocks(), 4);
        assert_eq!(m.block_table("b"), &[] as &[BlockId]);
        assert_eq!(m.prefix_cache_stats(), PrefixCacheStats { queries: 9, hits: 0 });
        assert_eq!(m.get_computed_blocks(&b).1, 8);
        m.check_invariants();
    }

    #[test]
    fn hits_in_the_free_queue_count_against_free_blocks() {
        // 3 blocks; a's 2 cached blocks are free. b hits both and needs 2 more: 2 + 2 > 3.
        let mut m = KvCacheManager::new(3, 2, true);
        let mut a = req("a", (0..5).collect());
        prefill(&mut m, &mut a);
        m.free("a");
        let b = req("b", [(0..4).collect::<Vec<u32>>(), vec![50, 51, 52]].concat());
        let (hits, n) = m.get_computed_blocks(&b);
        assert_eq!(n, 4);
        assert_eq!(m.allocate_slots(&b, 3, &hits), None);
        assert_eq!(m.allocate_slots(&b, 2, &hits), Some(1));
        m.check_invariants();
    }

    #[test]
    fn caching_disabled_never_hits() {
        let mut m = KvCacheManager::new(10, 4, false);
        let mut a = req("a", (0..9).collect());
        prefill(&mut m, &mut a);
        assert_eq!(m.get_computed_blocks(&req("b", (0..9).collect())).1, 0);
        assert_eq!(m.prefix_cache_stats(), PrefixCacheStats::default());
        m.free("a");
        m.check_invariants();
    }

    #[test]
    fn reset_forgets_everything_once_idle() {
        let mut m = KvCacheManager::new(10, 4, true);
        let mut a = req("a", (0..9).collect());
        prefill(&mut m, &mut a);
        assert!(!m.reset_prefix_cache());
        m.free("a");
        assert!(m.reset_prefix_cache());
        assert_eq!(m.get_computed_blocks(&req("b", (0..9).collect())).1, 0);
        m.check_invariants();
    }
}
