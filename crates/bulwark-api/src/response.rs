//! Response bodies and streaming chunks, as the OpenAI SDKs expect them.

use serde::Serialize;

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model emitted an end-of-generation token or a stop sequence matched.
    Stop,
    /// `max_tokens` or the context window was reached.
    Length,
    /// The model called tools; the answer is in `tool_calls`.
    ToolCalls,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    /// `null` when the model only called tools.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

/// A call of a function, as OpenAI returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON text.
    pub arguments: String,
}

impl ToolCall {
    /// A function call with a fresh id (`call_` and 24 hex digits, as OpenAI's look).
    pub fn function(name: String, arguments: String) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        ToolCall {
            id: format!("call_{}", &id[..24]),
            kind: "function",
            function: FunctionCall { name, arguments },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub finish_reason: FinishReason,
    pub logprobs: Option<()>,
}

#[derive(Debug, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

impl ChatCompletion {
    pub fn new(
        id: String,
        created: u64,
        model: String,
        content: String,
        finish: FinishReason,
        usage: Usage,
    ) -> Self {
        ChatCompletion {
            id,
            object: "chat.completion",
            created,
            model,
            choices: vec![ChatChoice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content: Some(content),
                    tool_calls: Vec::new(),
                },
                finish_reason: finish,
                logprobs: None,
            }],
            usage,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

impl<'a> Delta<'a> {
    /// A choice's first chunk: its role, and empty text.
    pub fn role() -> Self {
        Delta {
            role: Some("assistant"),
            content: Some(""),
            tool_calls: None,
        }
    }

    /// More text.
    pub fn text(text: &'a str) -> Self {
        Delta {
            role: None,
            content: Some(text),
            tool_calls: None,
        }
    }

    /// Nothing new (the chunk that carries a finish reason).
    pub fn empty() -> Self {
        Delta {
            role: None,
            content: None,
            tool_calls: None,
        }
    }
}

/// A piece of a streamed tool call: the first carries its id and name, later ones more
/// of its arguments.
#[derive(Debug, Serialize)]
pub struct ToolCallDelta<'a> {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta<'a>,
}

#[derive(Debug, Serialize)]
pub struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub arguments: &'a str,
}

#[derive(Debug, Serialize)]
pub struct ChunkChoice<'a> {
    pub index: u32,
    pub delta: Delta<'a>,
    pub finish_reason: Option<FinishReason>,
    pub logprobs: Option<()>,
}

/// One `chat.completion.chunk` event.
#[derive(Debug, Serialize)]
pub struct ChatChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Serialize)]
pub struct TextChoice<'a> {
    pub index: u32,
    pub text: &'a str,
    pub finish_reason: Option<FinishReason>,
    pub logprobs: Option<()>,
}

/// A `text_completion` body, or one streamed chunk of it.
#[derive(Debug, Serialize)]
pub struct TextCompletion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<TextChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Serialize)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: String,
    /// Where requests for this model go: `local` (in-process) or the upstream's name.
    pub served_by: String,
    /// Whether the model's weights matched their pinned digest (local models only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// `ready`, `loading` or `failed` (local models only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    /// How the weights were vouched for before loading (local models only):
    /// `registry+signature`, `registry`, `pinned-digest`, or `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<&'static str>,
    /// Whether everything it writes is watermarked (local models only; a key can ask
    /// for the mark on any local model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watermark: Option<bool>,
    /// What the model is for, where the gateway knows: `chat` (local models, which
    /// serve completions too) or `embedding`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}
