//! Chat templates: the Jinja template shipped in the GGUF (`tokenizer.chat_template`),
//! rendered with minijinja the way the Hugging Face tokenizer renders it.
//!
//! llama.cpp's built-in template matcher approximates known templates and was seen to
//! drop SmolLM2's default system prompt; rendering the model's own template keeps the
//! prompt byte-identical to what the model was trained on.

use minijinja::{Environment, ErrorKind as JinjaErrorKind, Value};
use serde::Serialize;

/// Used when a GGUF carries no template: ChatML, the most common convention.
pub const CHATML_FALLBACK: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A message as a template sees it (the fields Hugging Face templates read).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TemplateMessage {
    pub role: String,
    pub content: String,
    /// An assistant's calls: `{"type": "function", "function": {"name", "arguments"}}`,
    /// the arguments as an object (templates write them with `tojson`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<serde_json::Value>,
    /// A tool result's call id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A tool result's function name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl TemplateMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        TemplateMessage {
            role: role.into(),
            content: content.into(),
            ..TemplateMessage::default()
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("chat template: {0}")]
pub struct TemplateError(String);

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(JinjaErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| TemplateError(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
            source: source.to_owned(),
        })
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the conversation with the generation prompt appended.
    pub fn render(&self, messages: &[TemplateMessage]) -> Result<String, TemplateError> {
        self.render_with_tools(messages, None)
    }

    /// Renders the conversation with `tools` (OpenAI's `{"type": "function", ...}`
    /// objects) in the template's `tools` variable, as Hugging Face's
    /// `apply_chat_template(tools=...)` does.
    pub fn render_with_tools(
        &self,
        messages: &[TemplateMessage],
        tools: Option<&[serde_json::Value]>,
    ) -> Result<String, TemplateError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => true,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| TemplateError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    /// SmolLM2-135M-Instruct's template, as shipped in its GGUF.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn msg(role: &str, content: &str) -> TemplateMessage {
        TemplateMessage::new(role, content)
    }

    #[test]
    fn smollm2_keeps_default_system_prompt() {
        let t = ChatTemplate::new(SMOLLM2, "", "<|im_end|>").map_err(|e| e.to_string());
        let out = t.and_then(|t| t.render(&[msg("user", "Hi")]).map_err(|e| e.to_string()));
        expect![[r#"
            Ok(
                "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            )
        "#]]
        .assert_debug_eq(&out);
    }

    #[test]
    fn python_string_methods_work() {
        let t = ChatTemplate::new("{{ messages[0]['content'].strip().upper() }}", "", "");
        let out = t.and_then(|t| t.render(&[msg("user", "  hi ")]));
        assert_eq!(out.map_err(|e| e.to_string()), Ok("HI".to_owned()));
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "");
        let out = t.and_then(|t| t.render(&[msg("user", "x")]));
        assert!(out.is_err_and(|e| e.to_string().contains("roles must alternate")));
    }
}
