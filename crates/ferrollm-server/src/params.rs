//! From the API's sampling fields to the engine's `SamplingParams`.
//!
//! Everything checkable without the model is checked here, before any tokenizing, so a bad
//! request costs nothing and its error names the field as the client spelled it.

use ferrollm_core::SamplingParams;

use crate::errors::ApiError;
use crate::protocol::common::SamplingRequest;

/// Most completions per prompt. The engine allocates per completion up front, so an absurd
/// `n` must be refused here rather than tried.
pub const MAX_N: i64 = 128;

/// The sampling fields resolved for one request.
#[derive(Debug, Clone)]
pub struct SamplingSpec {
    pub params: SamplingParams,
    /// The field the client used for the output length, for error messages.
    pub max_tokens_field: &'static str,
    pub stream: bool,
    pub include_usage: bool,
    pub continuous_usage: bool,
    /// The field that carried the output constraint, if any, for error messages.
    pub constraint_field: Option<&'static str>,
}

impl SamplingSpec {
    /// Names the engine's generic fields in an error as this request spelled them.
    pub fn rename_params(&self, mut e: ApiError) -> ApiError {
        match e.param.as_deref() {
            Some("max_tokens") => e.param = Some(self.max_tokens_field.to_string()),
            Some("structured_outputs") => e.param = self.constraint_field.map(str::to_string).or(e.param),
            _ => {}
        }
        e
    }
}

/// Builds and validates the engine's parameters.
///
/// `default_max_tokens` is the endpoint's default (16 for completions, as OpenAI and vLLM;
/// `None`, the rest of the context, for chat). `logprobs` is the number of top alternatives
/// per token the endpoint asked for, already range-checked by the caller.
pub fn sampling_spec(
    req: &SamplingRequest,
    default_max_tokens: Option<usize>,
    logprobs: Option<usize>,
) -> Result<SamplingSpec, ApiError> {
    let n = req.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid_param("n", format!("`n` must be between 1 and {MAX_N}, got {n}")));
    }
    if let Some(b) = req.best_of {
        if b != n {
            return Err(ApiError::invalid_param(
                "best_of",
                format!("`best_of` is not supported unless it equals `n` ({n}), got {b}"),
            ));
        }
    }
    if req.use_beam_search == Some(true) {
        return Err(ApiError::invalid_param("use_beam_search", "beam search is not supported"));
    }
    if req.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
        return Err(ApiError::invalid_param("logit_bias", "`logit_bias` is not supported"));
    }
    let stream = req.stream.unwrap_or(false);
    if req.stream_options.is_some() && !stream {
        return Err(ApiError::invalid_param(
            "stream_options",
            "`stream_options` can only be set when `stream` is true",
        ));
    }
    let (max_tokens_field, max_tokens) = match (req.max_completion_tokens, req.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    let max_tokens = match max_tokens {
        Some(m) if m < 1 => {
            return Err(ApiError::invalid_param(
                max_tokens_field,
                format!("`{max_tokens_field}` must be at least 1, got {m}"),
            ))
        }
        Some(m) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
        None => default_max_tokens,
    };
    let min_tokens = match req.min_tokens.unwrap_or(0) {
        m if m < 0 => {
            return Err(ApiError::invalid_param("min_tokens", format!("`min_tokens` must be at least 0, got {m}")))
        }
        m => usize::try_from(m).unwrap_or(usize::MAX),
    };
    let constraint = crate::structured::resolve(req)?;
    let defaults = SamplingParams::default();
    let params = SamplingParams {
        n: n as usize,
        temperature: req.temperature.map_or(defaults.temperature, |t| t as f32),
        top_p: req.top_p.map_or(defaults.top_p, |p| p as f32),
        // Out-of-range values saturate: a huge k is "no limit", a very negative one stays invalid.
        top_k: req.top_k.map_or(defaults.top_k, |k| k.clamp(i32::MIN as i64, i32::MAX as i64) as i32),
        min_p: req.min_p.map_or(defaults.min_p, |p| p as f32),
        // OpenAI's seed is a signed 64-bit integer; every value is a distinct seed.
        seed: req.seed.map(|s| s as u64),
        max_tokens,
        min_tokens,
        stop: req.stop.clone().map(|s| s.into_vec()).unwrap_or_default(),
        stop_token_ids: req.stop_token_ids.clone().unwrap_or_default(),
        ignore_eos: req.ignore_eos.unwrap_or(false),
        presence_penalty: req.presence_penalty.map_or(defaults.presence_penalty, |p| p as f32),
        frequency_penalty: req.frequency_penalty.map_or(defaults.frequency_penalty, |p| p as f32),
        repetition_penalty: req.repetition_penalty.map_or(defaults.repetition_penalty, |p| p as f32),
        logprobs,
        prompt_logprobs: None,
        skip_special_tokens: req.skip_special_tokens.unwrap_or(true),
        include_stop_str_in_output: req.include_stop_str_in_output.unwrap_or(false),
        disable_speculation: req.disable_speculation.unwrap_or(false),
        structured_outputs: constraint.as_ref().map(|(p, _)| p.clone()),
    };
    params.validate().map_err(|e| {
        let field = if e.field == "max_tokens" { max_tokens_field } else { e.field };
        ApiError::invalid_param(field, format!("`{field}` {}", e.message))
    })?;
    let opts = req.stream_options.clone().unwrap_or_default();
    Ok(SamplingSpec {
        params,
        max_tokens_field,
        stream,
        include_usage: opts.include_usage.unwrap_or(false),
        continuous_usage: opts.continuous_usage_stats.unwrap_or(false),
        constraint_field: constraint.map(|(_, f)| f),
    })
}

/// Range-checks a logprobs count (`logprobs` for completions, `top_logprobs` for chat).
pub fn logprobs_count(field: &'static str, value: Option<i64>) -> Result<Option<usize>, ApiError> {
    match value {
        None => Ok(None),
        Some(k) if (0..=ferrollm_core::sampling_params::MAX_LOGPROBS as i64).contains(&k) => Ok(Some(k as usize)),
        Some(k) => Err(ApiError::invalid_param(
            field,
            format!("`{field}` must be between 0 and {}, got {k}", ferrollm_core::sampling_params::MAX_LOGPROBS),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::from_value;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> Result<SamplingSpec, ApiError> {
        let req: SamplingRequest = from_value(&v)?;
        sampling_spec(&req, Some(16), None)
    }

    fn param_of(v: serde_json::Value) -> String {
        spec(v).unwrap_err().param.unwrap_or_default()
    }

    #[test]
    fn defaults_follow_vllm() {
        let s = spec(json!({})).unwrap();
        assert_eq!(s.params.n, 1);
        assert_eq!(s.params.max_tokens, Some(16));
        assert_eq!(s.params.temperature, 1.0);
        assert!(s.params.skip_special_tokens);
        assert!(!s.stream && !s.include_usage);
        let req: SamplingRequest = from_value(&json!({})).unwrap();
        assert_eq!(sampling_spec(&req, None, None).unwrap().params.max_tokens, None);
    }

    #[test]
    fn fields_carry_over() {
        let s = spec(json!({
            "n": 2, "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.1,
            "seed": -1, "stop": "\n", "stop_token_ids": [2], "presence_penalty": 0.5,
            "frequency_penalty": -0.5, "repetition_penalty": 1.1, "ignore_eos": true, "min_tokens": 2,
            "skip_special_tokens": false, "include_stop_str_in_output": true,
            "stream": true, "stream_options": {"include_usage": true}, "user": "u1", "unknown_field": 1
        }))
        .unwrap();
        let p = &s.params;
        assert_eq!((p.n, p.max_tokens, p.top_k, p.min_tokens), (2, Some(5), 40, 2));
        assert_eq!(p.seed, Some(u64::MAX));
        assert_eq!(p.stop, vec!["\n"]);
        assert_eq!(p.stop_token_ids, vec![2]);
        assert!(p.ignore_eos && !p.skip_special_tokens && p.include_stop_str_in_output);
        assert!(s.stream && s.include_usage);
    }

    #[test]
    fn max_completion_tokens_wins_and_is_named() {
        let s = spec(json!({"max_tokens": 5, "max_completion_tokens": 7})).unwrap();
        assert_eq!(s.params.max_tokens, Some(7));
        assert_eq!(s.max_tokens_field, "max_completion_tokens");
        assert_eq!(param_of(json!({"max_completion_tokens": 0})), "max_completion_tokens");
        assert_eq!(param_of(json!({"max_completion_tokens": 3, "min_tokens": 5})), "min_tokens");
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(param_of(json!({"n": 0})), "n");
        assert_eq!(param_of(json!({"n": 1000000})), "n");
        assert_eq!(param_of(json!({"max_tokens": -3})), "max_tokens");
        assert_eq!(param_of(json!({"max_tokens": "ten"})), "max_tokens");
        assert_eq!(param_of(json!({"temperature": -1})), "temperature");
        assert_eq!(param_of(json!({"temperature": "hot"})), "temperature");
        assert_eq!(param_of(json!({"top_p": 0})), "top_p");
        assert_eq!(param_of(json!({"top_p": 1.5})), "top_p");
        assert_eq!(param_of(json!({"top_k": -2})), "top_k");
        assert_eq!(param_of(json!({"min_p": 2})), "min_p");
        assert_eq!(param_of(json!({"presence_penalty": 3})), "presence_penalty");
        assert_eq!(param_of(json!({"frequency_penalty": -3})), "frequency_penalty");
        assert_eq!(param_of(json!({"repetition_penalty": 0})), "repetition_penalty");
        assert_eq!(param_of(json!({"min_tokens": -1})), "min_tokens");
        assert_eq!(param_of(json!({"stop": [""]})), "stop");
        assert_eq!(param_of(json!({"stop": 5})), "stop");
        assert_eq!(param_of(json!({"stop_token_ids": [-1]})), "stop_token_ids[0]");
        assert_eq!(param_of(json!({"seed": "x"})), "seed");
        assert_eq!(param_of(json!({"best_of": 3})), "best_of");
        assert_eq!(param_of(json!({"logit_bias": {"50256": -100}})), "logit_bias");
        assert_eq!(param_of(json!({"stream_options": {"include_usage": true}})), "stream_options");
        assert_eq!(param_of(json!({"use_beam_search": true})), "use_beam_search");
    }

    #[test]
    fn nulls_mean_defaults() {
        let s = spec(json!({"max_tokens": null, "stop": null, "temperature": null, "logit_bias": {}})).unwrap();
        assert_eq!(s.params.max_tokens, Some(16));
        assert!(s.params.stop.is_empty());
    }

    #[test]
    fn logprob_counts() {
        assert_eq!(logprobs_count("logprobs", None).unwrap(), None);
        assert_eq!(logprobs_count("logprobs", Some(0)).unwrap(), Some(0));
        assert_eq!(logprobs_count("logprobs", Some(20)).unwrap(), Some(20));
        assert_eq!(logprobs_count("top_logprobs", Some(21)).unwrap_err().param.as_deref(), Some("top_logprobs"));
        assert_eq!(logprobs_count("logprobs", Some(-1)).unwrap_err().param.as_deref(), Some("logprobs"));
    }
}
