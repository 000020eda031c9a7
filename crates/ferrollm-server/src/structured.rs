//! The ways a client asks for structured output, resolved to one constraint: OpenAI's
//! `response_format`, vLLM's `structured_outputs`, and vLLM's older `guided_*` fields.

use ferrollm_core::StructuredOutputsParams;
use serde_json::Value;

use crate::errors::ApiError;
use crate::protocol::common::SamplingRequest;

/// The constraint and the field it came from (for error messages), if the request set one.
pub fn resolve(req: &SamplingRequest) -> Result<Option<(StructuredOutputsParams, &'static str)>, ApiError> {
    let mut found: Vec<(StructuredOutputsParams, &'static str)> = Vec::new();
    if let Some(rf) = &req.response_format {
        if let Some(p) = response_format(rf)? {
            found.push((p, "response_format"));
        }
    }
    if let Some(so) = &req.structured_outputs {
        if !so.is_null() {
            let p: StructuredOutputsParams = serde_json::from_value(so.clone()).map_err(|e| {
                ApiError::invalid_param("structured_outputs", format!("`structured_outputs` is malformed: {e}"))
            })?;
            found.push((p, "structured_outputs"));
        }
    }
    let guided = [
        (
            req.guided_json.clone().map(|j| StructuredOutputsParams { json: Some(j), ..Default::default() }),
            "guided_json",
        ),
        (
            req.guided_regex.clone().map(|r| StructuredOutputsParams { regex: Some(r), ..Default::default() }),
            "guided_regex",
        ),
        (
            req.guided_choice.clone().map(|c| StructuredOutputsParams { choice: Some(c), ..Default::default() }),
            "guided_choice",
        ),
        (
            req.guided_grammar.clone().map(|g| StructuredOutputsParams { grammar: Some(g), ..Default::default() }),
            "guided_grammar",
        ),
    ];
    found.extend(guided.into_iter().filter_map(|(p, f)| p.map(|p| (p, f))));
    if found.len() > 1 {
        let fields: Vec<&str> = found.iter().map(|(_, f)| *f).collect();
        return Err(ApiError::invalid_param(
            fields[1],
            format!("only one structured-output constraint may be given, got {}", fields.join(" and ")),
        ));
    }
    let Some((p, field)) = found.pop() else { return Ok(None) };
    p.check().map_err(|m| ApiError::invalid_param(field, format!("`{field}`: {m}")))?;
    Ok(Some((p, field)))
}

/// OpenAI's `response_format`: `text` (no constraint), `json_object`, or `json_schema`.
fn response_format(rf: &Value) -> Result<Option<StructuredOutputsParams>, ApiError> {
    let bad = |m: String| ApiError::invalid_param("response_format", m);
    if rf.is_null() {
        return Ok(None);
    }
    let kind =
        rf.get("type").and_then(Value::as_str).ok_or_else(|| bad("`response_format.type` is required".into()))?;
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(StructuredOutputsParams { json_object: true, ..Default::default() })),
        "json_schema" => {
            let js = rf
                .get("json_schema")
                .ok_or_else(|| bad("`response_format.json_schema` is required for type `json_schema`".into()))?;
            let schema =
                js.get("schema").filter(|s| !s.is_null()).cloned().ok_or_else(|| {
                    bad("`response_format.json_schema.schema` is required for type `json_schema`".into())
                })?;
            // Every output follows the schema whether or not `strict` is set.
            Ok(Some(StructuredOutputsParams { json: Some(schema), ..Default::default() }))
        }
        other => Err(bad(format!(
            "response_format of type `{other}` is not supported; use `text`, `json_object` or `json_schema`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::from_value;
    use serde_json::json;

    fn resolve_json(v: Value) -> Result<Option<(StructuredOutputsParams, &'static str)>, ApiError> {
        let req: SamplingRequest = from_value(&v).unwrap();
        resolve(&req)
    }

    #[test]
    fn every_spelling_resolves() {
        let schema = json!({"type": "object"});
        let cases = [
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}}}),
                "response_format",
            ),
            (json!({"structured_outputs": {"json": schema}}), "structured_outputs"),
            (json!({"guided_json": schema}), "guided_json"),
        ];
        for (body, field) in cases {
            let (p, f) = resolve_json(body).unwrap().unwrap();
            assert_eq!((p.json, f), (Some(json!({"type": "object"})), field));
        }
        let (p, _) = resolve_json(json!({"response_format": {"type": "json_object"}})).unwrap().unwrap();
        assert!(p.json_object);
        let (p, _) = resolve_json(json!({"guided_choice": ["a", "b"]})).unwrap().unwrap();
        assert_eq!(p.choice, Some(vec!["a".to_string(), "b".to_string()]));
        let (p, _) = resolve_json(json!({"structured_outputs": {"regex": "[0-9]+"}})).unwrap().unwrap();
        assert_eq!(p.regex.as_deref(), Some("[0-9]+"));
        let (p, _) = resolve_json(json!({"guided_grammar": "start: \"x\""})).unwrap().unwrap();
        assert!(p.grammar.is_some());
        assert!(resolve_json(json!({"response_format": {"type": "text"}})).unwrap().is_none());
        assert!(resolve_json(json!({})).unwrap().is_none());
    }

    #[test]
    fn bad_requests_name_the_field() {
        let param = |v: Value| resolve_json(v).unwrap_err().param.unwrap();
        assert_eq!(param(json!({"response_format": {"type": "yaml"}})), "response_format");
        assert_eq!(param(json!({"response_format": {"type": "json_schema"}})), "response_format");
        assert_eq!(
            param(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}})),
            "response_format"
        );
        assert_eq!(param(json!({"structured_outputs": {"choice": []}})), "structured_outputs");
        assert_eq!(param(json!({"structured_outputs": {}})), "structured_outputs");
        assert_eq!(param(json!({"structured_outputs": {"regex": 5}})), "structured_outputs");
        assert_eq!(param(json!({"guided_json": {"type": "object"}, "guided_regex": "a"})), "guided_regex");
    }
}
