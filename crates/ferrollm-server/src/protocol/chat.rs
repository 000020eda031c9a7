//! `/v1/chat/completions`: messages, the request's own fields, and response/chunk shapes.

use ferrollm_engine::ChatMessage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{StopReason, Usage};
use crate::errors::ApiError;

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// `content`: a string, or a list of typed parts of which we take the text ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a string or a list of content parts")]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessageIn {
    pub role: String,
    /// `null` for assistant messages that only carried tool calls.
    pub content: Option<MessageContent>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessageIn>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub add_generation_prompt: Option<bool>,
    pub continue_final_message: Option<bool>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub chat_template: Option<String>,
}

/// Turns the API's messages into the template's, joining text parts with newlines as vLLM
/// does, and refusing parts we cannot show the model (images, audio).
pub fn to_chat_messages(messages: Vec<ChatMessageIn>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_param("messages", "`messages` must contain at least one message"));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let content = match m.content {
                None => String::new(),
                Some(MessageContent::Text(t)) => t,
                Some(MessageContent::Parts(parts)) => {
                    let mut texts = Vec::with_capacity(parts.len());
                    for (j, p) in parts.into_iter().enumerate() {
                        if p.kind != "text" {
                            return Err(ApiError::invalid_param(
                                format!("messages[{i}].content[{j}].type"),
                                format!("content parts of type `{}` are not supported; only `text` is", p.kind),
                            ));
                        }
                        let text = p.text.ok_or_else(|| {
                            ApiError::invalid_param(
                                format!("messages[{i}].content[{j}].text"),
                                "a text content part needs a `text` field",
                            )
                        })?;
                        texts.push(text);
                    }
                    texts.join("\n")
                }
            };
            Ok(ChatMessage::new(m.role, content))
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
    pub stop_reason: Option<StopReason>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
    pub stop_reason: Option<StopReason>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::from_value;
    use serde_json::json;

    fn parse(v: Value) -> Result<Vec<ChatMessage>, ApiError> {
        let req: ChatCompletionRequest = from_value(&v)?;
        to_chat_messages(req.messages)
    }

    #[test]
    fn string_and_part_contents() {
        let msgs = parse(json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null},
        ]}))
        .unwrap();
        assert_eq!(msgs[0], ChatMessage::new("system", "be brief"));
        assert_eq!(msgs[1], ChatMessage::new("user", "a\nb"));
        assert_eq!(msgs[2], ChatMessage::new("assistant", ""));
    }

    #[test]
    fn bad_messages_name_the_field() {
        let e = parse(json!({"messages": []})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = parse(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
        let e = parse(json!({"messages": [{"content": "hi"}]})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = parse(json!({"messages": [{"role": "user", "content": 5}]})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        let e = parse(json!({"messages": "hi"})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = parse(json!({})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
    }

    #[test]
    fn delta_omits_absent_fields() {
        let d = Delta { role: Some("assistant"), content: None };
        assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"role":"assistant"}"#);
    }
}
