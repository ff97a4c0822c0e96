//! A loaded chat model: the decoder, its tokenizer, its chat template and
//! the tokens that end a turn; and how a request becomes prompt tokens.

use std::sync::{Arc, OnceLock};

use cortex_schemas::chat::{merge_system, ChatMessage, Role, ToolChoice, ToolDefinition};
use cortex_schemas::infer::{GenerateInput, GenerateRequest};

use crate::error::{EngineError, Result};
use crate::generate::constraint::{self, Constraint, Grammars};
use crate::models::CausalLm;
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;

/// Used when a model ships no template (llama.cpp makes the same choice).
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Texts that end a turn in the common chat formats; those present in a
/// model's vocabulary stop generation like its EOS token.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
];

/// Everything needed to serve chat and completion requests for one model.
#[derive(Debug)]
pub struct ChatModel {
    pub lm: Arc<dyn CausalLm>,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// Tokens that end generation.
    pub stop_ids: Vec<u32>,
    /// Bytes the weights take in memory (file size, plus any repacking),
    /// for memory accounting.
    pub weight_bytes: u64,
    /// The model's architecture as its files name it.
    pub architecture: String,
    /// The token trie for structured output, built on first use.
    grammars: OnceLock<std::result::Result<Grammars, String>>,
}

impl ChatModel {
    /// Assembles a model; `extra_eos` come from `generation_config.json`.
    pub fn new(
        lm: Arc<dyn CausalLm>,
        tokenizer: Tokenizer,
        template_source: Option<&str>,
        extra_eos: &[u32],
        weight_bytes: u64,
        architecture: String,
    ) -> Result<Self> {
        let template = ChatTemplate::new(
            template_source.unwrap_or(CHATML),
            tokenizer.bos.as_ref().map(|s| s.text.as_str()),
            tokenizer.eos.as_ref().map(|s| s.text.as_str()),
        )?;
        let mut stop_ids: Vec<u32> = tokenizer.eos.iter().map(|s| s.id).collect();
        stop_ids.extend_from_slice(extra_eos);
        stop_ids.extend(END_OF_TURN.iter().filter_map(|t| tokenizer.token_to_id(t)));
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let weight_bytes = weight_bytes + lm.extra_bytes();
        Ok(Self {
            lm,
            tokenizer,
            template,
            stop_ids,
            weight_bytes,
            architecture,
            grammars: OnceLock::new(),
        })
    }

    /// The output constraint `req` asks for (JSON mode, a schema, a forced
    /// tool call), or `None`.
    pub fn constraint(&self, req: &GenerateRequest) -> Result<Option<Constraint>> {
        if !constraint::wanted(req) {
            return Ok(None);
        }
        let grammars = self
            .grammars
            .get_or_init(|| Grammars::new(&self.tokenizer, &self.stop_ids));
        match grammars {
            Ok(grammars) => grammars.constraint(req),
            Err(why) => Err(constraint::unsupported(why)),
        }
    }

    pub fn context_length(&self) -> usize {
        self.lm.context_length()
    }

    /// The prompt a request renders to, and its tokens.
    pub fn prompt(&self, req: &GenerateRequest) -> Result<(String, Vec<u32>)> {
        match &req.input {
            GenerateInput::Text { prompt } => {
                Ok((prompt.clone(), self.tokenizer.encode_prompt(prompt)?))
            }
            GenerateInput::Chat { messages } => {
                if messages.is_empty() {
                    return Err(EngineError::InvalidRequest(
                        "messages must not be empty".into(),
                    ));
                }
                let text = match self.render(req, messages) {
                    // Many templates refuse a system turn after the first
                    // message (Claude Code sends reminders that way): they
                    // get every system text merged into the leading one.
                    Err(EngineError::Template(_)) if has_late_system(messages) => {
                        self.render(req, &merge_system(messages.to_vec()))?
                    }
                    rendered => rendered?,
                };
                let tokens = self.tokenizer.encode(&text)?;
                Ok((text, tokens))
            }
        }
    }
}

impl ChatModel {
    /// Whether the model thinks in `<think>` blocks before it answers.
    pub fn reasons(&self) -> bool {
        self.template.reasons()
    }

    fn render(&self, req: &GenerateRequest, messages: &[ChatMessage]) -> Result<String> {
        let tools = active_tools(req);
        if !tools.is_empty() && !self.template.handles_tools() {
            let messages = with_tool_instructions(messages, tools, req.tool_choice.as_ref());
            self.template.render(&messages, &[], true, req.thinking)
        } else {
            self.template.render(messages, tools, true, req.thinking)
        }
    }
}

/// Whether a system message comes after the first message.
fn has_late_system(messages: &[ChatMessage]) -> bool {
    messages.iter().skip(1).any(|m| m.role == Role::System)
}

/// The tools the model may call under the request's `tool_choice`.
pub fn active_tools(req: &GenerateRequest) -> &[ToolDefinition] {
    match &req.tool_choice {
        Some(ToolChoice::None) => &[],
        _ => &req.tools,
    }
}

/// For templates that know nothing of tools: describe them in the system
/// message, in the Hermes format our parser reads back.
fn with_tool_instructions(
    messages: &[ChatMessage],
    tools: &[ToolDefinition],
    choice: Option<&ToolChoice>,
) -> Vec<ChatMessage> {
    let mut text = String::from(
        "You can call functions. The available functions, as JSON schemas:\n<tools>\n",
    );
    for tool in tools {
        let mut function = serde_json::json!({"name": tool.name, "parameters": tool.parameters});
        if let Some(d) = &tool.description {
            function["description"] = serde_json::json!(d);
        }
        text.push_str(&serde_json::json!({"type": "function", "function": function}).to_string());
        text.push('\n');
    }
    text.push_str("</tools>\nTo call a function, reply with one object per call:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <arguments-object>}\n</tool_call>");
    match choice {
        Some(ToolChoice::Required) => text.push_str("\nYou must call at least one function."),
        Some(ToolChoice::Function { name }) => {
            text.push_str(&format!("\nYou must call the function {name}."))
        }
        _ => {}
    }
    let mut out = Vec::with_capacity(messages.len() + 1);
    match messages.first() {
        Some(first) if first.role == Role::System => {
            let merged = format!("{}\n\n{text}", first.joined_text());
            out.push(ChatMessage::text(Role::System, merged));
            out.extend_from_slice(&messages[1..]);
        }
        _ => {
            out.push(ChatMessage::text(Role::System, text));
            out.extend_from_slice(messages);
        }
    }
    out
}
