//! The engine core's pure logic: requests, sampling parameters, the scheduler and the
//! KV-cache manager. Nothing here touches a tensor, so all of it is unit-tested directly.

pub mod kv_cache;
pub mod outputs;
pub mod request;
pub mod sampling_params;
pub mod scheduler;
pub mod structured_output;

pub use outputs::{EngineCoreOutput, ModelRunnerOutput, TokenLogprob, TokenLogprobs};
pub use request::{FinishReason, Request, RequestId, RequestStatus};
pub use sampling_params::{ParamError, SamplingParams};
pub use scheduler::{ScheduledRequest, Scheduler, SchedulerConfig, SchedulerOutput, SchedulerStats};
pub use structured_output::{StructuredOutputGrammar, StructuredOutputsParams, TokenBitmask};
