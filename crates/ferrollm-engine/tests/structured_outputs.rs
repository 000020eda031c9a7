//! Structured outputs on the real models: every output must parse and satisfy its
//! constraint, whatever the model would rather say, alone or mixed with free requests,
//! with jump-forward, speculative decoding, chunked prefill and preemption around it.
//!
//! Validity is checked by libraries no one here wrote: the `jsonschema` crate (formats
//! included) and the `regex` crate.

mod common;

use std::path::PathBuf;

use ferrollm_engine::{
    ChatMessage, EngineArgs, EngineError, PromptInput, RequestOutput, SamplingParams, SpeculativeConfig,
    StructuredOutputsParams, LLM,
};
use serde_json::Value;

fn schemas() -> Vec<(String, Value)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/json_schemas.json");
    let list: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    list.into_iter().map(|v| (v["name"].as_str().unwrap().to_string(), v["schema"].clone())).collect()
}

fn llm_with(model: PathBuf, f: impl FnOnce(&mut EngineArgs)) -> LLM {
    let mut a = EngineArgs::new(model);
    f(&mut a);
    LLM::new(a).unwrap()
}

fn json_params(schema: &Value, base: &SamplingParams) -> SamplingParams {
    SamplingParams {
        structured_outputs: Some(StructuredOutputsParams { json: Some(schema.clone()), ..Default::default() }),
        ..base.clone()
    }
}

/// Runs every schema as one batch (each request its own schema) and returns the outputs.
fn run_schemas(llm: &LLM, schemas: &[(String, Value)], base: &SamplingParams) -> Vec<RequestOutput> {
    let streams: Vec<_> = schemas
        .iter()
        .enumerate()
        .map(|(i, (name, schema))| {
            let msgs = vec![ChatMessage::new(
                "user",
                format!("Give an example {} as JSON matching this schema: {schema}", name.replace('_', " ")),
            )];
            let text = llm.engine().apply_chat_template(&msgs, true).unwrap();
            let ids = llm.engine().tokenize(&text, false).unwrap();
            llm.engine()
                .add_request(format!("schema-{i}"), PromptInput::Tokens(ids), json_params(schema, base))
                .unwrap()
        })
        .collect();
    streams.into_iter().map(|s| s.blocking_collect()).collect()
}

/// Every output parses and validates against its schema; failures are listed together.
fn assert_valid(schemas: &[(String, Value)], outs: &[RequestOutput], what: &str) {
    let mut failures = Vec::new();
    for ((name, schema), out) in schemas.iter().zip(outs) {
        let o = &out.outputs[0];
        let validator = jsonschema::options().should_validate_formats(true).build(schema).unwrap();
        match serde_json::from_str::<Value>(&o.text) {
            Ok(v) => {
                let errs: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
                if !errs.is_empty() {
                    failures.push(format!("{name}: {:?} violates the schema: {errs:?}", o.text));
                }
            }
            Err(e) => failures.push(format!("{name}: {:?} (finish {:?}) is not JSON: {e}", o.text, o.finish_reason)),
        }
        if o.finish_reason.as_deref() != Some("stop") {
            failures.push(format!("{name}: finish_reason {:?}", o.finish_reason));
        }
    }
    assert!(
        failures.is_empty(),
        "{what}: {} of {} outputs invalid:\n{}",
        failures.len(),
        outs.len(),
        failures.join("\n")
    );
}

fn schemas_valid_greedy_and_sampled(model: PathBuf) {
    let schemas = schemas();
    assert!(schemas.len() >= 40);
    let llm = llm_with(model, |_| {});
    let greedy = SamplingParams::greedy(400);
    assert_valid(&schemas, &run_schemas(&llm, &schemas, &greedy), "greedy");
    let sampled = SamplingParams { temperature: 0.8, seed: Some(7), max_tokens: Some(400), ..Default::default() };
    assert_valid(&schemas, &run_schemas(&llm, &schemas, &sampled), "sampled");
}

#[test]
fn json_schemas_are_satisfied_smollm2() {
    schemas_valid_greedy_and_sampled(common::smollm2());
}

#[test]
fn json_schemas_are_satisfied_qwen() {
    schemas_valid_greedy_and_sampled(common::qwen());
}

fn constrained(so: StructuredOutputsParams, max_tokens: usize) -> SamplingParams {
    SamplingParams { structured_outputs: Some(so), ..SamplingParams::greedy(max_tokens) }
}

#[test]
fn regex_choice_grammar_and_json_object_outputs_match() {
    let llm = llm_with(common::smollm2(), |_| {});
    let e = llm.engine();
    type Check = Box<dyn Fn(&str) -> bool>;
    let cases: Vec<(&str, StructuredOutputsParams, Check)> = vec![
        (
            "My phone number is",
            StructuredOutputsParams { regex: Some(r"\+1-[0-9]{3}-[0-9]{3}-[0-9]{4}".into()), ..Default::default() },
            Box::new(|t| regex::Regex::new(r"^\+1-[0-9]{3}-[0-9]{3}-[0-9]{4}$").unwrap().is_match(t)),
        ),
        (
            "The date today, in ISO format:",
            StructuredOutputsParams {
                regex: Some(r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]".into()),
                ..Default::default()
            },
            Box::new(|t| regex::Regex::new(r"^20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]$").unwrap().is_match(t)),
        ),
        (
            "Is the sky green? Answer:",
            StructuredOutputsParams {
                choice: Some(vec!["yes".into(), "no".into(), "maybe".into()]),
                ..Default::default()
            },
            Box::new(|t| ["yes", "no", "maybe"].contains(&t)),
        ),
        (
            "Pick a colour:",
            StructuredOutputsParams {
                choice: Some(vec!["deep \"blue\"".into(), "red\nwine".into()]),
                ..Default::default()
            },
            Box::new(|t| t == "deep \"blue\"" || t == "red\nwine"),
        ),
        (
            "Write some arithmetic:",
            StructuredOutputsParams {
                grammar: Some("start: expr\nexpr: term ((\"+\" | \"-\") term){1,3}\nterm: /[0-9]{1,3}/\n".into()),
                ..Default::default()
            },
            Box::new(|t| regex::Regex::new(r"^[0-9]{1,3}([+-][0-9]{1,3}){1,3}$").unwrap().is_match(t)),
        ),
        (
            "A greeting:",
            StructuredOutputsParams {
                grammar: Some(
                    "root ::= greeting \", \" name\ngreeting ::= \"Hello\" | \"Hi\"\nname ::= [A-Z] [a-z]{1,8}\n"
                        .into(),
                ),
                ..Default::default()
            },
            Box::new(|t| regex::Regex::new(r"^(Hello|Hi), [A-Z][a-z]{1,8}$").unwrap().is_match(t)),
        ),
        (
            "Describe a cat in JSON:",
            StructuredOutputsParams { json_object: true, ..Default::default() },
            Box::new(|t| serde_json::from_str::<Value>(t).is_ok_and(|v| v.is_object())),
        ),
    ];
    for (i, (prompt, so, ok)) in cases.into_iter().enumerate() {
        let out = e
            .add_request(format!("case-{i}"), prompt.to_string().into(), constrained(so.clone(), 200))
            .unwrap()
            .blocking_collect();
        let o = &out.outputs[0];
        assert!(ok(&o.text), "{so:?}: output {:?} (finish {:?}) does not match", o.text, o.finish_reason);
        assert_eq!(o.finish_reason.as_deref(), Some("stop"), "{so:?}: {:?}", o.text);
    }
}

#[test]
fn bad_constraints_are_clear_errors() {
    let llm = llm_with(common::smollm2(), |_| {});
    let cases = [
        (StructuredOutputsParams { json: Some(serde_json::json!({"type": "no-such-type"})), ..Default::default() }, ""),
        (
            StructuredOutputsParams {
                json: Some(serde_json::json!({"type": "array", "items": {"type": "integer"}, "uniqueItems": true})),
                ..Default::default()
            },
            "uniqueItems",
        ),
        (
            StructuredOutputsParams { json: Some(Value::String("{not json".into())), ..Default::default() },
            "not valid JSON",
        ),
        (StructuredOutputsParams { regex: Some("a(b".into()), ..Default::default() }, "regex"),
        (StructuredOutputsParams { grammar: Some("start: undefined_rule\n".into()), ..Default::default() }, ""),
        (StructuredOutputsParams { grammar: Some("root ::= \"open".into()), ..Default::default() }, "unterminated"),
        (StructuredOutputsParams { choice: Some(vec![]), ..Default::default() }, "choice"),
        (
            StructuredOutputsParams { regex: Some("a".into()), choice: Some(vec!["b".into()]), ..Default::default() },
            "only one",
        ),
    ];
    for (so, needle) in cases {
        match llm.engine().add_request("bad", "Hi".to_string().into(), constrained(so.clone(), 8)) {
            Err(EngineError::InvalidRequest { param, message }) => {
                assert_eq!(param, Some("structured_outputs"), "{so:?}");
                assert!(message.contains(needle), "{so:?}: message {message:?} lacks {needle:?}");
            }
            Err(e) => panic!("{so:?}: wrong error {e:?}"),
            Ok(_) => panic!("{so:?} was accepted"),
        }
    }
}

#[test]
fn a_grammar_that_cannot_finish_ends_with_length() {
    let llm = llm_with(common::smollm2(), |_| {});
    let so = StructuredOutputsParams { regex: Some("(ab){50}".into()), ..Default::default() };
    let out = llm.generate(&["Letters:"], &constrained(so, 10)).unwrap().remove(0);
    let o = &out.outputs[0];
    assert_eq!(o.finish_reason.as_deref(), Some("length"));
    assert!(o.text.starts_with("abab") && o.text.len() <= 100, "{:?}", o.text);
}

/// Greedy token ids of the first `n` schemas, each request constrained by its schema.
fn schema_tokens(llm: &LLM, schemas: &[(String, Value)]) -> Vec<Vec<u32>> {
    let outs = run_schemas(llm, schemas, &SamplingParams::greedy(400));
    assert_valid(schemas, &outs, "greedy");
    outs.iter().map(|o| o.outputs[0].token_ids.clone()).collect()
}

#[test]
fn speculation_chunked_prefill_preemption_and_prefix_caching_leave_outputs_unchanged() {
    let schemas: Vec<_> = schemas().into_iter().step_by(4).collect();
    let base = llm_with(common::smollm2(), |_| {});
    let want = schema_tokens(&base, &schemas);
    // Again on the same engine: the prompts now come from the prefix cache.
    assert_eq!(schema_tokens(&base, &schemas), want, "prefix cache hit changed outputs");
    let per_block = ferrollm_engine::args::DEFAULT_KV_CACHE_MEMORY / base.engine().info().num_kv_blocks;
    drop(base);

    for spec in [
        r#"{"method":"ngram","num_speculative_tokens":4,"prompt_lookup_min":1,"prompt_lookup_max":3}"#,
        r#"{"method":"layer_skip","draft_layers":10,"num_speculative_tokens":3}"#,
    ] {
        let llm = llm_with(common::smollm2(), |a| a.speculative_config = Some(SpeculativeConfig::parse(spec).unwrap()));
        assert_eq!(schema_tokens(&llm, &schemas), want, "speculation {spec} changed constrained outputs");
        assert!(llm.engine().scheduler_stats().spec_num_accepted_tokens > 0, "{spec}: no draft accepted");
    }

    // 40 blocks (640 tokens) for 11 requests of 100-250 prompt tokens plus output: preemption
    // is certain; a 32-token budget chunks every prompt.
    let small = llm_with(common::smollm2(), |a| {
        a.kv_cache_memory = 40 * per_block;
        a.max_num_batched_tokens = 32;
    });
    assert_eq!(schema_tokens(&small, &schemas), want, "chunked prefill or preemption changed outputs");
    assert!(small.engine().scheduler_stats().num_preemptions > 0, "the small pool was meant to preempt");
}

#[test]
fn constrained_and_free_requests_share_a_batch() {
    let llm = llm_with(common::smollm2(), |_| {});
    let free_prompts = ["The capital of France is", "Once upon a time", "def fibonacci(n):"];
    let free = SamplingParams::greedy(24);
    let alone: Vec<Vec<u32>> =
        llm.generate(&free_prompts, &free).unwrap().iter().map(|o| o.outputs[0].token_ids.clone()).collect();
    let schemas: Vec<_> = schemas().into_iter().take(6).collect();
    let e = llm.engine();
    let mut streams = Vec::new();
    for (i, (name, schema)) in schemas.iter().enumerate() {
        let p = format!("A {name} in JSON:");
        streams
            .push(e.add_request(format!("c{i}"), p.into(), json_params(schema, &SamplingParams::greedy(300))).unwrap());
        if let Some(fp) = free_prompts.get(i) {
            streams.push(e.add_request(format!("f{i}"), fp.to_string().into(), free.clone()).unwrap());
        }
    }
    let outs: Vec<RequestOutput> = streams.into_iter().map(|s| s.blocking_collect()).collect();
    let (mut constrained, mut mixed_free) = (Vec::new(), Vec::new());
    for o in outs {
        if o.request_id.starts_with('c') {
            constrained.push(o);
        } else {
            mixed_free.push(o.outputs[0].token_ids.clone());
        }
    }
    assert_valid(&schemas, &constrained, "mixed batch");
    assert_eq!(mixed_free, alone, "free requests changed by constrained neighbours");
}

#[test]
fn n_completions_with_seeds_are_valid_and_reproducible_and_jump_forward_saves_steps() {
    let (name, schema) = schemas().into_iter().find(|(n, _)| n == "employee").unwrap();
    let prompt = format!("An example {name} as JSON:");
    let sampled =
        SamplingParams { n: 3, temperature: 1.0, seed: Some(3), ..json_params(&schema, &SamplingParams::greedy(300)) };
    let validator = jsonschema::options().should_validate_formats(true).build(&schema).unwrap();
    let mut steps = Vec::new();
    for jump_forward in [true, false] {
        let llm = llm_with(common::smollm2(), |a| a.jump_forward = jump_forward);
        let out = llm.generate(&[prompt.as_str()], &sampled).unwrap().remove(0);
        let again = llm.generate(&[prompt.as_str()], &sampled).unwrap().remove(0);
        assert_eq!(out.outputs.len(), 3);
        for (o, a) in out.outputs.iter().zip(&again.outputs) {
            let v: Value = serde_json::from_str(&o.text).unwrap_or_else(|e| panic!("{:?}: {e}", o.text));
            assert!(validator.is_valid(&v), "{:?}", o.text);
            assert_eq!(o.text, a.text, "seeded sampling not reproducible");
        }
        // Steps for one greedy request alone.
        let before = llm.engine().scheduler_stats().num_steps;
        llm.generate(&[prompt.as_str()], &json_params(&schema, &SamplingParams::greedy(300))).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        steps.push(llm.engine().scheduler_stats().num_steps - before);
    }
    assert!(steps[0] * 3 <= steps[1] * 2, "jump-forward should need far fewer forward passes: {steps:?}");
}
