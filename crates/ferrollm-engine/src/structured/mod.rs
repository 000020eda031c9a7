//! Structured outputs: compiling a request's constraint into an llguidance matcher.
//!
//! Compilation runs in the caller's thread (the server submits requests from a blocking
//! pool), never on the engine-core loop, so a slow grammar stalls no other request. Compiled
//! grammars are cached by their text; each request gets a fresh copy of the cached matcher.
//! The engine core then drives each copy through `ferrollm_core::StructuredOutputGrammar`.

mod gbnf;
mod grammar;
mod tok_env;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use ferrollm_core::StructuredOutputsParams;
use ferrollm_models::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};

pub use grammar::LlgGrammar;

/// Compiled grammars kept for reuse.
const CACHE_CAPACITY: usize = 256;

pub struct GrammarCompiler {
    tokenizer: Arc<Tokenizer>,
    vocab_size: usize,
    /// Built on first use: the token trie of a 152k vocabulary takes a moment.
    factory: OnceLock<Result<ParserFactory, String>>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    /// Fresh (never advanced) matchers by grammar key.
    map: HashMap<String, Matcher>,
    order: VecDeque<String>,
}

impl GrammarCompiler {
    pub fn new(tokenizer: Arc<Tokenizer>, vocab_size: usize) -> GrammarCompiler {
        GrammarCompiler { tokenizer, vocab_size, factory: OnceLock::new(), cache: Mutex::new(Cache::default()) }
    }

    fn factory(&self) -> Result<&ParserFactory, String> {
        self.factory
            .get_or_init(|| {
                let env = tok_env::build_tok_env(self.tokenizer.clone(), self.vocab_size)?;
                let mut f = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
                f.quiet();
                Ok(f)
            })
            .as_ref()
            .map_err(|e| format!("structured outputs are unavailable for this model: {e}"))
    }

    /// Builds the token trie and parser factory now (they are otherwise built by the first
    /// constrained request); errors surface again on that request.
    pub fn warm_up(&self) {
        let _ = self.factory();
    }

    /// A fresh grammar state for `spec`, or a message saying why it cannot be compiled.
    pub fn compile(&self, spec: &StructuredOutputsParams) -> Result<LlgGrammar, String> {
        spec.check()?;
        let (key, grammar) = to_grammar(spec)?;
        let eos = self.tokenizer.eos_token_ids();
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = cache.map.get(&key) {
                return Ok(LlgGrammar::new(m.deep_clone(), self.vocab_size, eos));
            }
        }
        let factory = self.factory()?;
        let parser = factory.create_parser(grammar).map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(e);
        }
        let fresh = matcher.deep_clone();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if !cache.map.contains_key(&key) {
            if cache.order.len() >= CACHE_CAPACITY {
                if let Some(old) = cache.order.pop_front() {
                    cache.map.remove(&old);
                }
            }
            cache.order.push_back(key.clone());
            cache.map.insert(key, matcher);
        }
        Ok(LlgGrammar::new(fresh, self.vocab_size, eos))
    }

    /// Grammars compiled and kept.
    pub fn cache_len(&self) -> usize {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).map.len()
    }
}

/// The cache key and llguidance grammar for a constraint.
fn to_grammar(spec: &StructuredOutputsParams) -> Result<(String, TopLevelGrammar), String> {
    if let Some(schema) = &spec.json {
        // vLLM accepts the schema as an object or as a JSON string.
        let schema = match schema {
            serde_json::Value::String(s) => {
                serde_json::from_str(s).map_err(|e| format!("json: the schema is not valid JSON: {e}"))?
            }
            v => v.clone(),
        };
        if !schema.is_object() && !schema.is_boolean() {
            return Err("json: a JSON schema must be an object".into());
        }
        let schema = compact_json(schema);
        let key = format!("json:{schema}");
        return Ok((key, TopLevelGrammar::from_json_schema(schema)));
    }
    if spec.json_object {
        let schema = compact_json(serde_json::json!({"type": "object"}));
        return Ok(("json_object".into(), TopLevelGrammar::from_json_schema(schema)));
    }
    if let Some(rx) = &spec.regex {
        // llguidance accepts some patterns the regex crate refuses and vice versa; check
        // with the syntax it documents so that a typo is a clear error, not a dead grammar.
        regex_syntax::Parser::new().parse(rx).map_err(|e| format!("regex: invalid regular expression: {e}"))?;
        return Ok((format!("regex:{rx}"), TopLevelGrammar::from_regex(rx)));
    }
    if let Some(choices) = &spec.choice {
        let alts: Vec<String> = choices.iter().map(|c| serde_json::to_string(c).expect("strings serialize")).collect();
        let lark = format!("start: {}", alts.join(" | "));
        return Ok((format!("choice:{lark}"), TopLevelGrammar::from_lark(lark)));
    }
    if let Some(g) = &spec.grammar {
        let lark = if gbnf::looks_like_gbnf(g) { gbnf::to_lark(g)? } else { g.clone() };
        return Ok((format!("grammar:{lark}"), TopLevelGrammar::from_lark(lark)));
    }
    Err("no constraint given".into())
}

/// The schema with llguidance told to emit JSON without optional whitespace, unless the
/// schema says otherwise (`x-guidance`): small models given free whitespace can pad forever,
/// and compact JSON lets jump-forward cover keys with their punctuation.
fn compact_json(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(
            || serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}
