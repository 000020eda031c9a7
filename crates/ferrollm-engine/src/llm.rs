//! The offline library API, mirroring vLLM's `LLM` class.

use ferrollm_core::SamplingParams;

use crate::chat_template::ChatMessage;
use crate::engine::{Engine, PromptInput};
use crate::outputs::RequestOutput;
use crate::{EngineArgs, EngineError};

/// Batch generation: submits every prompt at once so the engine batches them, then waits.
pub struct LLM {
    engine: Engine,
    next_id: std::sync::atomic::AtomicU64,
}

impl LLM {
    /// `LLM::new("model.gguf")` or `LLM::new(EngineArgs { .. })`.
    pub fn new(args: impl Into<EngineArgs>) -> Result<LLM, EngineError> {
        Ok(LLM { engine: Engine::new(args.into())?, next_id: 0.into() })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn request_id(&self) -> String {
        format!("llm-{}", self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    /// One output per prompt, in order.
    pub fn generate<P: Into<PromptInput> + Clone>(
        &self,
        prompts: &[P],
        params: &SamplingParams,
    ) -> Result<Vec<RequestOutput>, EngineError> {
        let streams = prompts
            .iter()
            .map(|p| self.engine.add_request(self.request_id(), p.clone().into(), params.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(streams.into_iter().map(|s| s.blocking_collect()).collect())
    }

    /// Applies the model's chat template to each conversation and generates a reply.
    pub fn chat(
        &self,
        conversations: &[Vec<ChatMessage>],
        params: &SamplingParams,
    ) -> Result<Vec<RequestOutput>, EngineError> {
        let prompts = conversations
            .iter()
            .map(|m| {
                let text = self.engine.apply_chat_template(m, true)?;
                // The template writes BOS itself where the model wants one.
                Ok(PromptInput::Tokens(self.engine.tokenize(&text, false)?))
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        self.generate(&prompts, params)
    }
}
