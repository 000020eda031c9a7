//! Paged KV-cache bookkeeping: which physical blocks each request's KV lives in, and which
//! full blocks can be reused by later requests with the same prefix. Pure logic: the runner
//! owns the tensors and reads block tables from the scheduler's output.

mod block_hash;
mod block_pool;
mod manager;

pub use block_hash::{hash_block_tokens, BlockHash, ExtraKeys};
pub use block_pool::{BlockId, BlockPool, FreeBlockQueue};
pub use manager::{KvCacheManager, PrefixCacheStats};
