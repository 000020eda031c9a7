//! `ferrollm bench structured`: what structured outputs cost, and what jump-forward saves.
//!
//! 1. `--num-prompts` concurrent requests constrained by a JSON schema, against the same
//!    requests unconstrained (each producing as many tokens as its constrained twin).
//! 2. Mask time per step: the constrained outputs replayed through fresh grammars, timing
//!    each allowed-token computation (the work the engine loop does per constrained row).
//! 3. Jump-forward on and off, one request at a time: forward passes per request and wall time.

use std::time::Instant;

use anyhow::{anyhow, Result};
use clap::Args;
use ferrollm_engine::{ChatMessage, Engine, PromptInput, RequestOutput, SamplingParams, StructuredOutputsParams};

use crate::cli_args::EngineFlags;
use crate::fetch;

#[derive(Args)]
pub struct StructuredArgs {
    #[arg(long)]
    model: Option<String>,
    /// A JSON schema file; default: a customer record with long fixed keys.
    #[arg(long)]
    schema: Option<String>,
    #[arg(long, default_value_t = 64)]
    num_prompts: usize,
    /// Requests run one at a time for the jump-forward comparison.
    #[arg(long, default_value_t = 8)]
    num_sequential: usize,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[arg(long)]
    output_json: Option<String>,
    #[command(flatten)]
    engine: EngineFlags,
}

const DEFAULT_SCHEMA: &str = r#"{"type":"object","properties":{
 "customer_full_legal_name":{"type":"string","maxLength":24},
 "customer_primary_email_address":{"type":"string","format":"email","maxLength":32},
 "account_creation_calendar_date":{"type":"string","format":"date"},
 "subscription_tier_level_name":{"type":"string","enum":["basic_monthly_plan","premium_annual_plan","enterprise_custom_plan"]},
 "is_marketing_communication_opt_in_confirmed":{"type":"boolean"},
 "number_of_customer_support_tickets_opened":{"type":"integer","minimum":0,"maximum":99},
 "preferred_customer_contact_channel":{"type":"string","enum":["electronic_mail","telephone_call","postal_letter"]}},
 "required":["customer_full_legal_name","customer_primary_email_address","account_creation_calendar_date",
  "subscription_tier_level_name","is_marketing_communication_opt_in_confirmed",
  "number_of_customer_support_tickets_opened","preferred_customer_contact_channel"],
 "additionalProperties":false}"#;

fn prompts(engine: &Engine, n: usize) -> Result<Vec<Vec<u32>>> {
    let names = ["Ada", "Bruno", "Chen", "Dana", "Emil", "Fatima", "Gus", "Hana"];
    (0..n)
        .map(|i| {
            let msg = format!(
                "Write customer record number {i} for a customer called {} {} as JSON.",
                names[i % names.len()],
                names[(i / names.len() + 3) % names.len()]
            );
            let text = engine.apply_chat_template(&[ChatMessage::new("user", msg)], true)?;
            Ok(engine.tokenize(&text, false)?)
        })
        .collect()
}

fn run(
    engine: &Engine,
    prompts: &[Vec<u32>],
    params: &[SamplingParams],
    tag: &str,
) -> Result<(f64, Vec<RequestOutput>)> {
    let t0 = Instant::now();
    let streams = prompts
        .iter()
        .zip(params)
        .enumerate()
        .map(|(i, (p, sp))| engine.add_request(format!("{tag}-{i}"), PromptInput::Tokens(p.clone()), sp.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let outs: Vec<RequestOutput> = streams.into_iter().map(|s| s.blocking_collect()).collect();
    Ok((t0.elapsed().as_secs_f64(), outs))
}

fn num_tokens(outs: &[RequestOutput]) -> usize {
    outs.iter().map(|o| o.outputs[0].token_ids.len()).sum()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs each prompt alone, in turn; returns (seconds, forward passes) per request.
fn sequential(engine: &Engine, prompts: &[Vec<u32>], params: &SamplingParams, tag: &str) -> Result<(f64, f64, usize)> {
    let steps0 = engine.scheduler_stats().num_steps;
    let mut secs = 0.0;
    let mut tokens = 0;
    for (i, p) in prompts.iter().enumerate() {
        let (s, outs) = run(engine, std::slice::from_ref(p), std::slice::from_ref(params), &format!("{tag}{i}"))?;
        secs += s;
        tokens += num_tokens(&outs);
    }
    // The stats reach the frontend after each step; let the last one land.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let steps = engine.scheduler_stats().num_steps - steps0;
    let n = prompts.len() as f64;
    Ok((secs / n, steps as f64 / n, tokens))
}

pub fn bench(a: StructuredArgs) -> Result<()> {
    let schema_text = match &a.schema {
        Some(p) => std::fs::read_to_string(p).map_err(|e| anyhow!("cannot read {p}: {e}"))?,
        None => DEFAULT_SCHEMA.to_string(),
    };
    let schema: serde_json::Value =
        serde_json::from_str(&schema_text).map_err(|e| anyhow!("the schema is not valid JSON: {e}"))?;
    let so = StructuredOutputsParams { json: Some(schema), ..Default::default() };
    let path = fetch::resolve_model(a.model.as_deref())?;
    let mut args = a.engine.to_engine_args(path)?;
    args.jump_forward = true;
    let engine = Engine::new(args.clone())?;
    println!("model: {}", engine.info().model_description);
    let ps = prompts(&engine, a.num_prompts)?;
    let constrained = SamplingParams { structured_outputs: Some(so.clone()), ..SamplingParams::greedy(a.max_tokens) };

    // 1. Constrained vs free, all at once (a warm-up round first).
    run(&engine, &ps[..ps.len().min(4)], &vec![constrained.clone(); 4], "warm")?;
    let (t_c, outs_c) = run(&engine, &ps, &vec![constrained.clone(); ps.len()], "json")?;
    let free: Vec<SamplingParams> = outs_c
        .iter()
        .map(|o| SamplingParams { ignore_eos: true, ..SamplingParams::greedy(o.outputs[0].token_ids.len().max(1)) })
        .collect();
    let (t_f, outs_f) = run(&engine, &ps, &free, "free")?;
    let (n_c, n_f) = (num_tokens(&outs_c), num_tokens(&outs_f));
    let valid = outs_c.iter().filter(|o| serde_json::from_str::<serde_json::Value>(&o.outputs[0].text).is_ok()).count();
    println!("{} concurrent requests, greedy:", ps.len());
    println!(
        "  JSON schema:   {n_c} tokens in {t_c:.2} s = {:.1} output tok/s ({valid}/{} parse as JSON)",
        n_c as f64 / t_c,
        ps.len()
    );
    println!("  unconstrained: {n_f} tokens in {t_f:.2} s = {:.1} output tok/s", n_f as f64 / t_f);
    println!("  constrained / unconstrained speed: {:.2}", (n_c as f64 / t_c) / (n_f as f64 / t_f));

    // 2. Mask time per step, on the outputs just generated.
    let mut mask_us = Vec::new();
    for o in &outs_c {
        let mut g = engine.compile_grammar(&so)?;
        for &t in &o.outputs[0].token_ids {
            let t0 = Instant::now();
            let m = g.allowed_tokens();
            mask_us.push(t0.elapsed().as_secs_f64() * 1e6);
            if !m.is_allowed(t) || !g.accept_tokens(&[t]) {
                break;
            }
        }
    }
    mask_us.sort_by(|x, y| x.total_cmp(y));
    let (med, p99) = (percentile(&mask_us, 0.5), percentile(&mask_us, 0.99));
    println!(
        "mask time per step over {} steps (vocabulary {}): median {med:.1} us, p99 {p99:.1} us",
        mask_us.len(),
        engine.info().vocab_size
    );

    // 3. Jump-forward on and off, one request at a time.
    let seq = &ps[..a.num_sequential.min(ps.len())];
    let (s_on, f_on, tok_on) = sequential(&engine, seq, &constrained, "jf-on")?;
    let jf_tokens = engine.scheduler_stats().num_jump_forward_tokens;
    drop(engine);
    args.jump_forward = false;
    let engine_off = Engine::new(args)?;
    run(&engine_off, &ps[..1], std::slice::from_ref(&constrained), "warm-off")?;
    let (s_off, f_off, tok_off) = sequential(&engine_off, seq, &constrained, "jf-off")?;
    println!("one request at a time ({} requests):", seq.len());
    println!("  jump-forward on:  {f_on:.1} forward passes, {s_on:.2} s per request ({tok_on} tokens in all)");
    println!("  jump-forward off: {f_off:.1} forward passes, {s_off:.2} s per request ({tok_off} tokens in all)");
    println!("  speedup from jump-forward: {:.2}x wall time, {:.2}x fewer passes", s_off / s_on, f_off / f_on);
    println!("  tokens appended by jump-forward (whole run): {jf_tokens}");
    if let Some(p) = &a.output_json {
        let v = serde_json::json!({
            "num_prompts": ps.len(), "constrained_tok_s": n_c as f64 / t_c, "free_tok_s": n_f as f64 / t_f,
            "valid_json": valid, "mask_us_median": med, "mask_us_p99": p99, "mask_steps": mask_us.len(),
            "jump_forward_on": {"s_per_request": s_on, "passes_per_request": f_on, "tokens": tok_on},
            "jump_forward_off": {"s_per_request": s_off, "passes_per_request": f_off, "tokens": tok_off},
        });
        std::fs::write(p, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}
