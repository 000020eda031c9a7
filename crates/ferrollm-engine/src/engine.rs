//! The engine frontend: request intake, validation, detokenizing and one output stream per
//! request. The engine core runs on its own thread; a second thread turns its outputs into
//! text deltas, so tokenization and detokenization never hold up a model step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use ferrollm_core::{
    EngineCoreOutput, FinishReason, Request, RequestId, SamplingParams, Scheduler, SchedulerConfig, SchedulerStats,
    StructuredOutputGrammar, TokenLogprobs,
};
use ferrollm_kernels::{Backend, CpuBackend};
use ferrollm_models::{load_model, KvCache, Tokenizer};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::detokenizer::IncrementalDetokenizer;
use crate::engine_core::{CoreEvent, CoreRequest, EngineCore};
use crate::metrics::Metrics;
use crate::outputs::{CompletionOutput, RequestOutput};
use crate::runner::draft_model::DraftModel;
use crate::runner::ModelRunner;
use crate::structured::GrammarCompiler;
use crate::{EngineArgs, EngineError};
use crate::{SpeculativeConfig, SpeculativeMethod};

/// A prompt as text or as token ids.
#[derive(Debug, Clone)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

impl From<&str> for PromptInput {
    fn from(s: &str) -> Self {
        PromptInput::Text(s.to_string())
    }
}

impl From<String> for PromptInput {
    fn from(s: String) -> Self {
        PromptInput::Text(s)
    }
}

impl From<Vec<u32>> for PromptInput {
    fn from(t: Vec<u32>) -> Self {
        PromptInput::Tokens(t)
    }
}

/// Facts about the loaded model and engine, for the API and logs.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub model_name: String,
    pub model_description: String,
    pub max_model_len: usize,
    pub vocab_size: usize,
    pub num_kv_blocks: usize,
    pub block_size: usize,
    /// Tokens the KV pool holds.
    pub kv_capacity_tokens: usize,
    pub weight_bytes: usize,
}

/// One completion's progress inside the output thread.
struct ChildState {
    parent: RequestId,
    index: usize,
    detok: IncrementalDetokenizer,
    params: Arc<SamplingParams>,
    tx: UnboundedSender<RequestOutput>,
    siblings_left: Arc<AtomicUsize>,
    arrival: Instant,
    last_token: Option<Instant>,
    cumulative_logprob: f64,
    sent_prompt_logprobs: bool,
}

struct Shared {
    tokenizer: Arc<Tokenizer>,
    metrics: Arc<Metrics>,
    core_tx: Mutex<Sender<CoreRequest>>,
    children: Mutex<HashMap<RequestId, ChildState>>,
    /// Requests admitted and not yet finished (all their completions).
    pending: AtomicUsize,
    /// False once the engine core has stopped (shut down or crashed).
    alive: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Marks one completion of a request done; true when it was the last one, and the
    /// request then stops counting as pending.
    fn retire(&self, c: &ChildState) -> bool {
        let last = c.siblings_left.fetch_sub(1, Ordering::Relaxed) == 1;
        if last {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
        last
    }

    fn send_core(&self, msg: CoreRequest) {
        let tx = self.core_tx.lock().unwrap_or_else(|e| e.into_inner());
        let _ = tx.send(msg);
    }
}

struct Inner {
    shared: Arc<Shared>,
    info: EngineInfo,
    chat_template: Option<ChatTemplate>,
    eos_token_ids: Vec<u32>,
    max_pending: usize,
    grammars: Arc<GrammarCompiler>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.send_core(CoreRequest::Shutdown);
        for t in self.threads.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = t.join();
        }
    }
}

/// A cloneable handle to a running engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// The outputs of one request as they arrive; dropping it before the end aborts the request.
pub struct RequestStream {
    rx: UnboundedReceiver<RequestOutput>,
    child_ids: Vec<RequestId>,
    shared: Arc<Shared>,
    done: bool,
}

impl RequestStream {
    /// The next delta, or `None` once the request has finished.
    pub async fn next(&mut self) -> Option<RequestOutput> {
        if self.done {
            return None;
        }
        let out = self.rx.recv().await;
        self.observe(&out);
        out
    }

    /// Blocking form of [`RequestStream::next`], for threads outside an async runtime.
    pub fn blocking_next(&mut self) -> Option<RequestOutput> {
        if self.done {
            return None;
        }
        let out = self.rx.blocking_recv();
        self.observe(&out);
        out
    }

    fn observe(&mut self, out: &Option<RequestOutput>) {
        match out {
            Some(o) if o.finished => self.done = true,
            None => self.done = true,
            _ => {}
        }
    }

    /// Waits for the end and returns the whole output.
    pub fn blocking_collect(mut self) -> RequestOutput {
        let mut acc: Option<RequestOutput> = None;
        while let Some(d) = self.blocking_next() {
            match &mut acc {
                Some(a) => a.merge_delta(d),
                None => acc = Some(d),
            }
        }
        acc.unwrap_or_default()
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            let mut children = self.shared.children.lock().unwrap_or_else(|e| e.into_inner());
            for id in &self.child_ids {
                if let Some(c) = children.remove(id) {
                    self.shared.retire(&c);
                    self.shared.metrics.update(|m| m.requests_finished[2] += 1);
                }
            }
            drop(children);
            self.shared.send_core(CoreRequest::Finish(self.child_ids.clone(), FinishReason::Abort));
        }
    }
}

impl Engine {
    /// Loads the model and starts the engine-core and output threads.
    pub fn new(args: EngineArgs) -> Result<Engine, EngineError> {
        let backend: Arc<dyn Backend> = Arc::new(CpuBackend::new());
        let loaded = load_model(&args.model, backend.clone())?;
        let model = loaded.model;
        let tokenizer = Arc::new(loaded.tokenizer);
        let cfg = model.config.clone();
        let max_model_len = args.max_model_len.unwrap_or(cfg.max_position_embeddings).min(cfg.max_position_embeddings);
        if let Some(spec) = &args.speculative_config {
            spec.check().map_err(EngineError::Config)?;
        }
        // A draft model has its own KV cache over the same blocks: budget both together.
        let draft = match &args.speculative_config {
            Some(SpeculativeConfig { method: SpeculativeMethod::DraftModel { model }, .. }) => Some(
                DraftModel::load(std::path::Path::new(model), backend.clone(), &cfg, max_model_len)
                    .map_err(EngineError::Config)?,
            ),
            _ => None,
        };
        let per_block = KvCache::bytes_per_block(&cfg, args.block_size)
            + draft.as_ref().map_or(0, |d| d.bytes_per_block(args.block_size));
        let num_blocks = args.kv_cache_memory / per_block;
        if num_blocks < 2 {
            return Err(EngineError::Config(format!(
                "kv-cache-memory of {} bytes holds fewer than 2 blocks of {} bytes; raise it",
                args.kv_cache_memory, per_block
            )));
        }
        let model_name = args.served_model_name.clone().unwrap_or_else(|| {
            args.model.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
        });
        let template_src = match &args.chat_template {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| EngineError::Config(format!("cannot read chat template {path}: {e}")))?,
            ),
            None => tokenizer.chat_template().map(str::to_string),
        };
        let chat_template = match template_src {
            Some(src) => Some(
                ChatTemplate::new(
                    &src,
                    tokenizer.bos_token().unwrap_or_default(),
                    tokenizer.eos_token().unwrap_or_default(),
                )
                .map_err(EngineError::Config)?,
            ),
            None => None,
        };
        let info = EngineInfo {
            model_name: model_name.clone(),
            model_description: loaded.description,
            max_model_len,
            vocab_size: cfg.vocab_size,
            num_kv_blocks: num_blocks,
            block_size: args.block_size,
            kv_capacity_tokens: num_blocks * args.block_size,
            weight_bytes: model.weight_bytes(),
        };
        tracing::info!(
            "model {} · {:.1} MB of weights · context {} tokens · KV cache {} blocks x {} = {} tokens ({} MiB; --kv-cache-memory)",
            info.model_description,
            info.weight_bytes as f64 / 1e6,
            max_model_len,
            num_blocks,
            args.block_size,
            info.kv_capacity_tokens,
            (num_blocks * per_block) >> 20
        );
        let eos_token_ids = tokenizer.eos_token_ids();
        let scheduler = Scheduler::new(SchedulerConfig {
            max_num_seqs: args.max_num_seqs,
            max_num_batched_tokens: args.max_num_batched_tokens,
            max_model_len,
            block_size: args.block_size,
            num_blocks,
            enable_prefix_caching: args.enable_prefix_caching,
            enable_chunked_prefill: args.enable_chunked_prefill,
            // Layer-skip and draft-model drafters write KV at the draft positions before they
            // are scheduled.
            num_lookahead_tokens: match &args.speculative_config {
                Some(c)
                    if matches!(
                        c.method,
                        SpeculativeMethod::LayerSkip { .. } | SpeculativeMethod::DraftModel { .. }
                    ) =>
                {
                    c.num_speculative_tokens
                }
                _ => 0,
            },
            jump_forward: args.jump_forward,
        });
        let sampleable = tokenizer.vocab_size().min(cfg.vocab_size);
        let mut runner = ModelRunner::new(model, num_blocks, args.block_size, eos_token_ids.clone(), sampleable);
        if let Some(d) = draft {
            tracing::info!(
                "draft model {} · {} layers · {:.1} MB of weights",
                d.description(),
                d.num_layers(),
                d.weight_bytes() as f64 / 1e6
            );
            runner = runner.with_draft_model(d);
        }
        if let Some(spec) = &args.speculative_config {
            runner = runner.with_speculation(spec).map_err(EngineError::Config)?;
            tracing::info!(
                "speculative decoding: {} with {} draft tokens per step",
                spec.method_name(),
                spec.num_speculative_tokens
            );
        }
        let core = EngineCore::new(scheduler, runner);

        let grammars = Arc::new(GrammarCompiler::new(tokenizer.clone(), cfg.vocab_size));
        let (core_tx, core_rx) = mpsc::channel();
        let (event_tx, event_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            tokenizer,
            metrics: Arc::new(Metrics::new(model_name)),
            core_tx: Mutex::new(core_tx),
            children: Mutex::new(HashMap::new()),
            pending: AtomicUsize::new(0),
            alive: std::sync::atomic::AtomicBool::new(true),
        });
        let core_thread = std::thread::Builder::new()
            .name("engine-core".into())
            .spawn(move || core.run(core_rx, event_tx))
            .map_err(|e| EngineError::Config(format!("cannot start engine thread: {e}")))?;
        let out_shared = shared.clone();
        let output_thread = std::thread::Builder::new()
            .name("engine-output".into())
            .spawn(move || output_loop(out_shared, event_rx))
            .map_err(|e| EngineError::Config(format!("cannot start output thread: {e}")))?;
        Ok(Engine {
            inner: Arc::new(Inner {
                shared,
                info,
                chat_template,
                grammars,
                eos_token_ids,
                max_pending: args.max_pending_requests,
                threads: Mutex::new(vec![core_thread, output_thread]),
            }),
        })
    }

    pub fn info(&self) -> &EngineInfo {
        &self.inner.info
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.shared.tokenizer
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.shared.metrics
    }

    pub fn scheduler_stats(&self) -> SchedulerStats {
        self.metrics().snapshot().scheduler
    }

    /// Whether the engine core is still running; false after a crash, when every open stream
    /// has been closed and new requests are refused.
    pub fn is_alive(&self) -> bool {
        self.inner.shared.alive.load(Ordering::Relaxed)
    }

    /// Requests admitted and not finished.
    pub fn num_pending(&self) -> usize {
        self.inner.shared.pending.load(Ordering::Relaxed)
    }

    /// Renders `messages` with the model's chat template (or the `--chat-template` override).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        let t = self.inner.chat_template.as_ref().ok_or_else(|| EngineError::InvalidRequest {
            param: Some("messages"),
            message: "the model has no chat template; pass one with --chat-template".into(),
        })?;
        t.render(messages, add_generation_prompt)
            .map_err(|m| EngineError::InvalidRequest { param: Some("messages"), message: m })
    }

    /// Tokenizes a text prompt as generation would (special tokens such as BOS added).
    pub fn tokenize(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, EngineError> {
        Ok(self.tokenizer().encode(text, add_special_tokens)?)
    }

    /// Validates and submits a request; outputs arrive on the returned stream.
    pub fn add_request(
        &self,
        request_id: impl Into<String>,
        prompt: PromptInput,
        params: SamplingParams,
    ) -> Result<RequestStream, EngineError> {
        let request_id = request_id.into();
        params.validate().map_err(|e| EngineError::InvalidRequest { param: Some(e.field), message: e.message })?;
        let info = &self.inner.info;
        let (prompt_text, prompt_ids) = match prompt {
            PromptInput::Text(t) => {
                let ids = self.tokenize(&t, true)?;
                (Some(t), ids)
            }
            PromptInput::Tokens(ids) => (None, ids),
        };
        if prompt_ids.is_empty() {
            return Err(EngineError::InvalidRequest { param: Some("prompt"), message: "the prompt is empty".into() });
        }
        if let Some(&bad) = prompt_ids.iter().find(|&&t| t as usize >= info.vocab_size) {
            return Err(EngineError::InvalidRequest {
                param: Some("prompt"),
                message: format!("token id {bad} is out of vocabulary (size {})", info.vocab_size),
            });
        }
        let max_len = info.max_model_len;
        if prompt_ids.len() >= max_len {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: prompt_ids.len(),
                max_model_len: max_len,
                max_tokens: None,
            });
        }
        let mut params = params;
        match params.max_tokens {
            Some(m) if prompt_ids.len() + m > max_len => {
                return Err(EngineError::PromptTooLong {
                    prompt_tokens: prompt_ids.len(),
                    max_model_len: max_len,
                    max_tokens: Some(m),
                });
            }
            Some(_) => {}
            None => params.max_tokens = Some(max_len - prompt_ids.len()),
        }
        let need = prompt_ids.len() + 1;
        if need > info.kv_capacity_tokens {
            return Err(EngineError::InvalidRequest {
                param: Some("prompt"),
                message: format!(
                    "the prompt needs {need} tokens of KV cache but the pool holds {}; raise --kv-cache-memory",
                    info.kv_capacity_tokens
                ),
            });
        }
        let shared = &self.inner.shared;
        if !shared.alive.load(Ordering::Relaxed) {
            return Err(EngineError::Config("the engine has stopped; see the server log".into()));
        }
        if shared.pending.load(Ordering::Relaxed) >= self.inner.max_pending {
            return Err(EngineError::Overloaded(format!(
                "{} requests are already pending; try again later",
                self.inner.max_pending
            )));
        }

        // Compiled here, in the caller's thread, so that a slow grammar never holds up the
        // engine loop; `n` completions share one compilation through the cache.
        let mut grammars = Vec::new();
        if let Some(spec) = &params.structured_outputs {
            for _ in 0..params.n {
                let g = self
                    .inner
                    .grammars
                    .compile(spec)
                    .map_err(|message| EngineError::InvalidRequest { param: Some("structured_outputs"), message })?;
                grammars.push(Box::new(g) as Box<dyn StructuredOutputGrammar>);
            }
        }
        let mut grammars = grammars.into_iter();

        let n = params.n;
        let (tx, rx) = unbounded_channel();
        let siblings_left = Arc::new(AtomicUsize::new(n));
        let arrival = Instant::now();
        let mut child_ids = Vec::with_capacity(n);
        let mut requests = Vec::with_capacity(n);
        {
            let mut children = shared.children.lock().unwrap_or_else(|e| e.into_inner());
            if children.contains_key(&request_id) || children.keys().any(|k| k.starts_with(&format!("{request_id}#"))) {
                return Err(EngineError::InvalidRequest {
                    param: Some("request_id"),
                    message: format!("request id '{request_id}' is already in use"),
                });
            }
            for i in 0..n {
                let child_id = if n == 1 { request_id.clone() } else { format!("{request_id}#{i}") };
                let mut p = params.clone();
                p.n = 1;
                if let (Some(seed), true) = (p.seed, n > 1) {
                    p.seed = Some(seed.wrapping_add(i as u64));
                }
                let p = Arc::new(p);
                children.insert(
                    child_id.clone(),
                    ChildState {
                        parent: request_id.clone(),
                        index: i,
                        detok: IncrementalDetokenizer::new(
                            &prompt_ids,
                            p.skip_special_tokens,
                            p.stop.clone(),
                            p.include_stop_str_in_output,
                        ),
                        params: p.clone(),
                        tx: tx.clone(),
                        siblings_left: siblings_left.clone(),
                        arrival,
                        last_token: None,
                        cumulative_logprob: 0.0,
                        sent_prompt_logprobs: false,
                    },
                );
                let mut req = Request::new(child_id.clone(), prompt_ids.clone(), p);
                req.eos_token_ids = self.inner.eos_token_ids.clone();
                req.max_model_len = max_len;
                child_ids.push(child_id);
                requests.push((req, grammars.next()));
            }
        }
        shared.pending.fetch_add(1, Ordering::Relaxed);
        shared.metrics.update(|m| m.prompt_tokens += (prompt_ids.len() * n) as u64);
        // The first delta carries the prompt.
        let _ = tx.send(RequestOutput {
            request_id: request_id.clone(),
            prompt: prompt_text,
            prompt_token_ids: prompt_ids,
            ..Default::default()
        });
        for (r, g) in requests {
            shared.send_core(CoreRequest::Add(Box::new(r), g));
        }
        Ok(RequestStream { rx, child_ids, shared: shared.clone(), done: false })
    }

    /// Builds the structured-output token trie in a background thread, so that the first
    /// constrained request does not wait for it (a server calls this at startup).
    pub fn warm_up_structured_outputs(&self) {
        let g = self.inner.grammars.clone();
        let _ = std::thread::Builder::new().name("grammar-warmup".into()).spawn(move || g.warm_up());
    }

    /// A fresh grammar state for `spec`, compiled as a request's would be (for benchmarks
    /// and tools that drive a grammar themselves).
    pub fn compile_grammar(
        &self,
        spec: &ferrollm_core::StructuredOutputsParams,
    ) -> Result<Box<dyn StructuredOutputGrammar>, EngineError> {
        let g = self
            .inner
            .grammars
            .compile(spec)
            .map_err(|message| EngineError::InvalidRequest { param: Some("structured_outputs"), message })?;
        Ok(Box::new(g))
    }

    /// Aborts a request by id (all of its completions).
    pub fn abort(&self, request_id: &str) {
        let shared = &self.inner.shared;
        let mut children = shared.children.lock().unwrap_or_else(|e| e.into_inner());
        let ids: Vec<RequestId> =
            children.iter().filter(|(_, c)| c.parent == request_id).map(|(k, _)| k.clone()).collect();
        for id in &ids {
            if let Some(c) = children.remove(id) {
                let finished = shared.retire(&c);
                let _ = c.tx.send(RequestOutput {
                    request_id: c.parent.clone(),
                    outputs: vec![CompletionOutput {
                        index: c.index,
                        finish_reason: Some("abort".into()),
                        ..Default::default()
                    }],
                    finished,
                    ..Default::default()
                });
            }
        }
        drop(children);
        if !ids.is_empty() {
            shared.send_core(CoreRequest::Finish(ids, FinishReason::Abort));
        }
    }
}

/// Turns core outputs into text deltas on each request's stream. When the core stops, every
/// open stream is closed (its sender dropped), so no client waits forever on a dead engine.
fn output_loop(shared: Arc<Shared>, rx: Receiver<CoreEvent>) {
    deliver_outputs(&shared, rx);
    shared.alive.store(false, Ordering::Relaxed);
    shared.children.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

fn deliver_outputs(shared: &Shared, rx: Receiver<CoreEvent>) {
    while let Ok(ev) = rx.recv() {
        match ev {
            CoreEvent::Outputs(outputs, stats) => {
                shared.metrics.update(|m| m.scheduler = stats);
                for o in outputs {
                    handle_output(shared, o);
                }
            }
            CoreEvent::Rejected(id, message) => {
                let mut children = shared.children.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(c) = children.remove(&id) {
                    let finished = shared.retire(&c);
                    let _ = c.tx.send(RequestOutput {
                        request_id: c.parent.clone(),
                        outputs: vec![CompletionOutput {
                            index: c.index,
                            text: String::new(),
                            finish_reason: Some("abort".into()),
                            stop_reason: Some(message),
                            ..Default::default()
                        }],
                        finished,
                        ..Default::default()
                    });
                }
            }
        }
    }
}

fn handle_output(shared: &Shared, o: EngineCoreOutput) {
    let mut children = shared.children.lock().unwrap_or_else(|e| e.into_inner());
    let Some(c) = children.get_mut(&o.req_id) else { return };
    let now = Instant::now();
    if !o.new_token_ids.is_empty() {
        let n = o.new_token_ids.len() as u64;
        let last = c.last_token;
        let arrival = c.arrival;
        shared.metrics.update(|m| {
            m.generation_tokens += n;
            match last {
                None => m.ttft.observe((now - arrival).as_secs_f64()),
                Some(t) => m.itl.observe((now - t).as_secs_f64() / n as f64),
            }
        });
        c.last_token = Some(now);
    }
    let mut finish = o.finish_reason;
    let mut stop_reason = None;
    if let Some(FinishReason::Stop) = finish {
        if let Some(&t) = o.new_token_ids.last() {
            if c.params.stop_token_ids.contains(&t) {
                stop_reason = Some(t.to_string());
            }
        }
    }
    let upd = c.detok.push(&shared.tokenizer, &o.new_token_ids, finish.is_some());
    if let (Some(stop), None) = (&upd.stopped, finish) {
        finish = Some(FinishReason::Stop);
        stop_reason = Some(stop.clone());
        shared.send_core(CoreRequest::Finish(vec![o.req_id.clone()], FinishReason::Stop));
    }
    let logprobs: Option<Vec<TokenLogprobs>> = o.new_logprobs.clone();
    if let Some(l) = &logprobs {
        c.cumulative_logprob += l.iter().map(|t| t.chosen.logprob as f64).sum::<f64>();
    }
    let mut prompt_logprobs = None;
    // Every completion computes the prompt; only the first reports its logprobs.
    if let Some(p) = o.new_prompt_logprobs.filter(|_| c.index == 0) {
        let mut v: Vec<Option<TokenLogprobs>> = Vec::new();
        if !c.sent_prompt_logprobs {
            v.push(None);
            c.sent_prompt_logprobs = true;
        }
        v.extend(p.into_iter().map(Some));
        prompt_logprobs = Some(v);
    }
    let finished_all = finish.is_some() && shared.retire(c);
    let delta = RequestOutput {
        request_id: c.parent.clone(),
        prompt: None,
        prompt_token_ids: Vec::new(),
        prompt_logprobs,
        outputs: vec![CompletionOutput {
            index: c.index,
            text: upd.delta,
            token_ids: o.new_token_ids,
            cumulative_logprob: c.params.logprobs.map(|_| c.cumulative_logprob),
            logprobs,
            finish_reason: finish.map(|f| f.as_str().to_string()),
            stop_reason,
        }],
        finished: finished_all,
        num_cached_tokens: o.num_cached_tokens,
    };
    let _ = c.tx.send(delta);
    if let Some(f) = finish {
        let arrival = c.arrival;
        children.remove(&o.req_id);
        let idx = match f {
            FinishReason::Stop => 0,
            FinishReason::Length => 1,
            FinishReason::Abort => 2,
        };
        shared.metrics.update(|m| {
            m.requests_finished[idx] += 1;
            m.e2e.observe((now - arrival).as_secs_f64());
        });
    }
}
