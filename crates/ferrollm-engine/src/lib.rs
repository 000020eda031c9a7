//! The ferrollm engine: request intake and streaming (`engine`), the engine-core loop
//! (`engine_core`), the model runner and sampler (`runner`), and the library API (`llm`).

pub mod args;
pub mod chat_template;
pub mod detokenizer;
pub mod engine;
pub mod engine_core;
pub mod error;
pub mod llm;
pub mod metrics;
pub mod outputs;
pub mod runner;
pub mod spec_config;
pub mod structured;

pub use args::EngineArgs;
pub use chat_template::ChatMessage;
pub use engine::{Engine, EngineInfo, PromptInput, RequestStream};
pub use error::EngineError;
pub use ferrollm_core::{SamplingParams, StructuredOutputGrammar, StructuredOutputsParams};
pub use llm::LLM;
pub use outputs::{CompletionOutput, RequestOutput};
pub use spec_config::{SpeculativeConfig, SpeculativeMethod};
