//! The pool of physical KV blocks: who holds each block, which blocks are free, and which free
//! or held blocks still carry KV that a later request can reuse.

use std::collections::HashMap;

use super::block_hash::BlockHash;

/// Physical block id: the index of a block in the KV tensors.
pub type BlockId = u32;

const NIL: BlockId = BlockId::MAX;

/// The free blocks in eviction order, as a doubly-linked list threaded through block ids.
///
/// Unlike a `VecDeque`, it removes a block from the middle in O(1), which a prefix hit needs:
/// a hit lifts a free-but-cached block out of the queue wherever it sits.
#[derive(Debug, Clone)]
pub struct FreeBlockQueue {
    prev: Vec<BlockId>,
    next: Vec<BlockId>,
    linked: Vec<bool>,
    head: BlockId,
    tail: BlockId,
    len: usize,
}

impl FreeBlockQueue {
    /// A queue holding every block `0..num_blocks`, lowest id first.
    pub fn new_full(num_blocks: usize) -> Self {
        assert!(num_blocks < NIL as usize, "too many blocks for a u32 id");
        let n = num_blocks as BlockId;
        FreeBlockQueue {
            prev: (0..n).map(|i| if i == 0 { NIL } else { i - 1 }).collect(),
            next: (0..n).map(|i| if i + 1 == n { NIL } else { i + 1 }).collect(),
            linked: vec![true; num_blocks],
            head: if n == 0 { NIL } else { 0 },
            tail: if n == 0 { NIL } else { n - 1 },
            len: num_blocks,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, id: BlockId) -> bool {
        self.linked[id as usize]
    }

    /// Takes the block next in line for eviction.
    pub fn pop_front(&mut self) -> Option<BlockId> {
        let id = self.head;
        if id == NIL {
            return None;
        }
        self.remove(id);
        Some(id)
    }

    /// Unlinks `id` from wherever it sits.
    pub fn remove(&mut self, id: BlockId) {
        let i = id as usize;
        assert!(self.linked[i], "block {id} is not in the free queue");
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[i] = NIL;
        self.next[i] = NIL;
        self.linked[i] = false;
        self.len -= 1;
    }

    /// Puts `id` last in line for eviction.
    pub fn push_back(&mut self, id: BlockId) {
        let i = id as usize;
        assert!(!self.linked[i], "block {id} is already in the free queue");
        self.prev[i] = self.tail;
        self.next[i] = NIL;
        if self.tail == NIL {
            self.head = id;
        } else {
            self.next[self.tail as usize] = id;
        }
        self.tail = id;
        self.linked[i] = true;
        self.len += 1;
    }

    /// Block ids from the next evicted to the last.
    pub fn iter(&self) -> impl Iterator<Item = BlockId> + '_ {
        let mut cur = self.head;
        std::iter::from_fn(move || {
            if cur == NIL {
                return None;
            }
            let id = cur;
            cur = self.next[id as usize];
            Some(id)
        })
    }
}

/// One physical block's bookkeeping.
#[derive(Debug, Clone, Copy, Default)]
struct BlockMeta {
    /// Requests whose block tables hold this block.
    ref_cnt: u32,
    /// Set while the block's KV is registered in the prefix cache under this name.
    hash: Option<BlockHash>,
}

/// A fixed pool of KV blocks with reference counts, an LRU free queue and a prefix cache.
///
/// Invariants (checked by [`BlockPool::check_invariants`]):
/// - A block is in the free queue exactly when its reference count is zero. The queue holds
///   free blocks in eviction order: the head is reused first.
/// - `cached[h] == b` exactly when block `b`'s hash is `h`; such a block may be free (its KV
///   waits in the queue to be reused or evicted) or held by any number of requests.
/// - At most one block carries a given hash. When two requests compute the same block
///   concurrently, the second copy is simply not cached: block tables are append-only, so
///   rather than swap a request's block for the cached one, the duplicate is freed as an
///   ordinary block when its request ends.
/// - Allocation takes the head of the queue and forgets its hash, so evicted KV can never
///   be hit again.
#[derive(Debug, Clone)]
pub struct BlockPool {
    blocks: Vec<BlockMeta>,
    free_queue: FreeBlockQueue,
    cached: HashMap<BlockHash, BlockId>,
    enable_caching: bool,
}

impl BlockPool {
    pub fn new(num_blocks: usize, enable_caching: bool) -> Self {
        BlockPool {
            blocks: vec![BlockMeta::default(); num_blocks],
            free_queue: FreeBlockQueue::new_full(num_blocks),
            cached: HashMap::new(),
            enable_caching,
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks no request holds (cached ones included: they are reclaimable).
    pub fn num_free_blocks(&self) -> usize {
        self.free_queue.len()
    }

    /// Fraction of blocks held by requests (0..=1).
    pub fn usage(&self) -> f32 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        1.0 - self.num_free_blocks() as f32 / self.blocks.len() as f32
    }

    pub fn ref_cnt(&self, id: BlockId) -> u32 {
        self.blocks[id as usize].ref_cnt
    }

    pub fn block_hash(&self, id: BlockId) -> Option<BlockHash> {
        self.blocks[id as usize].hash
    }

    /// The block holding KV named `hash`, if still cached (held or free).
    pub fn get_cached_block(&self, hash: BlockHash) -> Option<BlockId> {
        self.cached.get(&hash).copied()
    }

    pub fn num_cached_blocks(&self) -> usize {
        self.cached.len()
    }

    /// Free blocks in eviction order, next evicted first.
    pub fn free_queue(&self) -> impl Iterator<Item = BlockId> + '_ {
        self.free_queue.iter()
    }

    /// Takes `n` blocks from the head of the free queue, evicting whatever KV they cached.
    /// All or nothing: `None` when fewer than `n` are free, with the pool unchanged.
    pub fn get_new_blocks(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.free_queue.len() {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.free_queue.pop_front().expect("length checked above");
            let meta = &mut self.blocks[id as usize];
            debug_assert_eq!(meta.ref_cnt, 0, "block {id} in the free queue is held");
            if let Some(h) = meta.hash.take() {
                let removed = self.cached.remove(&h);
                debug_assert_eq!(removed, Some(id), "cache map disagrees with block {id}'s hash");
            }
            meta.ref_cnt = 1;
            out.push(id);
        }
        Some(out)
    }

    /// Takes one more reference on each block (a prefix hit); a free block leaves the queue.
    pub fn touch(&mut self, ids: &[BlockId]) {
        for &id in ids {
            let meta = &mut self.blocks[id as usize];
            if meta.ref_cnt == 0 {
                debug_assert!(meta.hash.is_some(), "touching free block {id} that caches nothing");
                self.free_queue.remove(id);
            }
            meta.ref_cnt += 1;
        }
    }

    /// Drops one reference on each block; blocks reaching zero join the tail of the free queue
    /// in the order given, so callers pass blocks in the order they should be evicted.
    pub fn free_blocks(&mut self, ordered: impl IntoIterator<Item = BlockId>) {
        for id in ordered {
            let meta = &mut self.blocks[id as usize];
            assert!(meta.ref_cnt > 0, "freeing block {id}, which nobody holds");
            meta.ref_cnt -= 1;
            if meta.ref_cnt == 0 {
                self.free_queue.push_back(id);
            }
        }
    }

    /// Registers held block `id`, now full of computed KV, under `hash`. Returns false (and
    /// leaves the block uncached) when another block already holds that KV or caching is off.
    pub fn cache_full_block(&mut self, id: BlockId, hash: BlockHash) -> bool {
        let meta = &mut self.blocks[id as usize];
        debug_assert!(meta.ref_cnt > 0, "caching block {id}, which nobody holds");
        if !self.enable_caching || meta.hash.is_some() {
            return meta.hash == Some(hash);
        }
        match self.cached.entry(hash) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(id);
                meta.hash = Some(hash);
                true
            }
        }
    }

    /// Forgets every cached block. Refused (false) while any block is held, since a running
    /// request may be relying on the names of its blocks.
    pub fn reset_prefix_cache(&mut self) -> bool {
        if self.free_queue.len() != self.blocks.len() {
            return false;
        }
        self.cached.clear();
        for meta in &mut self.blocks {
            meta.hash = None;
        }
        true
    }

    /// Checks every invariant in the type's doc comment; panics naming the first broken one.
    pub fn check_invariants(&self) {
        let mut queued = 0;
        for (i, id) in self.free_queue.iter().enumerate() {
            assert!(i < self.blocks.len(), "free queue has a cycle");
            assert_eq!(self.blocks[id as usize].ref_cnt, 0, "block {id} is queued but held");
            queued += 1;
        }
        assert_eq!(queued, self.free_queue.len(), "free queue length is off");
        for (i, meta) in self.blocks.iter().enumerate() {
            let id = i as BlockId;
            assert_eq!(meta.ref_cnt == 0, self.free_queue.contains(id), "block {id}: queued iff unheld");
            if let Some(h) = meta.hash {
                assert_eq!(self.cached.get(&h), Some(&id), "block {id}'s hash is not mapped to it");
            }
        }
        for (h, &id) in &self.cached {
            assert_eq!(self.blocks[id as usize].hash, Some(*h), "cache maps {h} to block {id}, which lost it");
        }
        if !self.enable_caching {
            assert!(self.cached.is_empty(), "caching is off but blocks are cached");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: u128) -> BlockHash {
        BlockHash(x)
    }

    #[test]
    fn queue_removes_from_the_middle_and_keeps_order() {
        let mut q = FreeBlockQueue::new_full(5);
        q.remove(2);
        assert_eq!(q.iter().collect::<Vec<_>>(), [0, 1, 3, 4]);
        q.remove(0);
        q.remove(4);
        assert_eq!(q.iter().collect::<Vec<_>>(), [1, 3]);
        q.push_back(0);
        assert_eq!(q.pop_front(), Some(1));
        assert_eq!(q.iter().collect::<Vec<_>>(), [3, 0]);
        assert_eq!(q.len(), 2);
        q.remove(3);
        q.remove(0);
        assert!(q.is_empty());
        assert_eq!(q.pop_front(), None);
        q.push_back(4);
        assert_eq!(q.iter().collect::<Vec<_>>(), [4]);
    }

    #[test]
    fn allocation_is_all_or_nothing() {
        let mut pool = BlockPool::new(4, true);
        assert_eq!(pool.get_new_blocks(3), Some(vec![0, 1, 2]));
        assert_eq!(pool.get_new_blocks(2), None);
        assert_eq!(pool.num_free_blocks(), 1);
        pool.check_invariants();
    }

    #[test]
    fn freed_blocks_join_the_tail_in_the_order_given() {
        let mut pool = BlockPool::new(4, true);
        let blocks = pool.get_new_blocks(3).unwrap();
        pool.free_blocks(blocks.iter().rev().copied());
        assert_eq!(pool.free_queue().collect::<Vec<_>>(), [3, 2, 1, 0]);
        pool.check_invariants();
    }

    #[test]
    fn allocation_evicts_the_head_and_forgets_its_hash() {
        let mut pool = BlockPool::new(2, true);
        let b = pool.get_new_blocks(2).unwrap();
        assert!(pool.cache_full_block(b[0], h(10)));
        assert!(pool.cache_full_block(b[1], h(11)));
        pool.free_blocks([b[1], b[0]]);
        assert_eq!(pool.get_cached_block(h(11)), Some(b[1]));
        // The head (b[1]) goes first.
        assert_eq!(pool.get_new_blocks(1), Some(vec![b[1]]));
        assert_eq!(pool.get_cached_block(h(11)), None);
        assert_eq!(pool.get_cached_block(h(10)), Some(b[0]));
        pool.check_invariants();
    }

    #[test]
    fn a_hit_lifts_a_free_block_out_of_the_queue_or_shares_a_held_one() {
        let mut pool = BlockPool::new(3, true);
        let b = pool.get_new_blocks(1).unwrap()[0];
        pool.cache_full_block(b, h(1));
        pool.touch(&[b]);
        assert_eq!(pool.ref_cnt(b), 2);
        pool.free_blocks([b, b]);
        assert_eq!(pool.free_queue().collect::<Vec<_>>(), [1, 2, 0]);
        pool.touch(&[b]);
        assert_eq!(pool.ref_cnt(b), 1);
        assert_eq!(pool.free_queue().collect::<Vec<_>>(), [1, 2]);
        pool.check_invariants();
    }

    #[test]
    fn a_second_copy_of_the_same_kv_stays_uncached() {
        let mut pool = BlockPool::new(2, true);
        let b = pool.get_new_blocks(2).unwrap();
        assert!(pool.cache_full_block(b[0], h(5)));
        assert!(!pool.cache_full_block(b[1], h(5)));
        assert_eq!(pool.block_hash(b[1]), None);
        pool.free_blocks(b);
        pool.check_invariants();
    }

    #[test]
    fn reset_is_refused_while_blocks_are_held() {
        let mut pool = BlockPool::new(2, true);
        let b = pool.get_new_blocks(1).unwrap();
        pool.cache_full_block(b[0], h(1));
        assert!(!pool.reset_prefix_cache());
        pool.free_blocks(b);
        assert!(pool.reset_prefix_cache());
        assert_eq!(pool.num_cached_blocks(), 0);
        pool.check_invariants();
    }

    #[test]
    fn caching_disabled_caches_nothing() {
        let mut pool = BlockPool::new(1, false);
        let b = pool.get_new_blocks(1).unwrap();
        assert!(!pool.cache_full_block(b[0], h(1)));
        assert_eq!(pool.get_cached_block(h(1)), None);
        pool.check_invariants();
    }
}
