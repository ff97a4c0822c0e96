//! Constrained decoding with llguidance: output that must parse is made to
//! parse, by masking the logits of every token the grammar does not allow
//! before sampling.
//!
//! - `response_format: json_object` — any JSON object;
//! - `response_format: json_schema` — JSON valid against the schema
//!   (`$ref`/`$defs` included), strict or not;
//! - a forced tool call (`tool_choice` naming a tool, or `required`) — one
//!   Hermes call, `<tool_call>\n{"name": …, "arguments": …}\n</tool_call>`,
//!   whose arguments follow the tool's parameter schema; the tool parser
//!   reads it back as any other call.
//!
//! JSON is written compactly (`", "` and `": "`, no free whitespace):
//! small models otherwise fill the freedom with blank lines. When the
//! grammar is complete only the model's end-of-turn tokens are allowed.
//! One [`Grammars`] per model (the token trie, built on first use); one
//! [`Constraint`] per generation.

use std::sync::Arc;

use cortex_schemas::chat::ToolChoice;
use cortex_schemas::infer::GenerateRequest;
use cortex_schemas::sampling::ResponseFormat;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use serde_json::{json, Value};

use crate::error::{EngineError, Result};
use crate::tokenizer::Tokenizer;

/// A model's compiled view of its vocabulary, shared by its generations.
pub struct Grammars {
    factory: Arc<ParserFactory>,
    /// Tokens that end a turn: allowed wherever the grammar allows its end.
    stop_ids: Vec<u32>,
    /// The one the trie knows as end of sequence.
    eos: u32,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars")
            .field("stop_ids", &self.stop_ids)
            .finish()
    }
}

impl Grammars {
    /// Builds the token trie of `tokenizer` (a few tens of milliseconds
    /// for a 50k vocabulary); the error says why the model cannot have
    /// structured output.
    pub fn new(tokenizer: &Tokenizer, stop_ids: &[u32]) -> std::result::Result<Self, String> {
        let eos = tokenizer
            .eos
            .as_ref()
            .map(|s| s.id)
            .filter(|id| stop_ids.contains(id))
            .or_else(|| stop_ids.first().copied())
            .ok_or("the model has no end-of-turn token")?;
        let json = tokenizer.to_json().map_err(|e| e.to_string())?;
        let document: Value = serde_json::from_str(&json).map_err(|e| format!("tokenizer: {e}"))?;
        // llguidance asserts on vocabularies it does not expect: a panic
        // here is an unsupported tokenizer, not a crashed engine.
        let bytes =
            std::panic::catch_unwind(|| llguidance::token_bytes_from_tokenizer_json(&document))
                .map_err(|_| "the tokenizer's vocabulary could not be read".to_string())?
                .map_err(|e| e.to_string())?;
        let vocab = tokenizer.vocab_size().max(bytes.len());
        let mut words = bytes;
        words.resize(vocab, Vec::new());
        let info = TokRxInfo {
            vocab_size: vocab as u32,
            tok_eos: eos,
            tok_bos: tokenizer.bos.as_ref().map(|s| s.id),
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: stop_ids.get(1).copied(),
        };
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| format!("grammar engine: {e}"))?;
        factory.quiet();
        Ok(Self {
            factory: Arc::new(factory),
            stop_ids: stop_ids.to_vec(),
            eos,
        })
    }

    /// The constraint `req` asks for, if any; a schema that does not
    /// compile is the client's error.
    pub fn constraint(&self, req: &GenerateRequest) -> Result<Option<Constraint>> {
        let Some(grammar) = grammar_for(req)? else {
            return Ok(None);
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| EngineError::InvalidRequest(format!("the output schema: {e}")))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(EngineError::InvalidRequest(format!(
                "the output schema: {error}"
            )));
        }
        Ok(Some(Constraint {
            matcher,
            stop_ids: self.stop_ids.clone(),
            eos: self.eos,
        }))
    }
}

/// Why a model cannot constrain its output, as the client reads it.
pub fn unsupported(why: &str) -> EngineError {
    EngineError::InvalidRequest(format!(
        "structured output is not available for this model: {why}"
    ))
}

/// How JSON is written under a constraint.
fn compact() -> Value {
    let options = JsonCompileOptions {
        item_separator: ", ".into(),
        key_separator: ": ".into(),
        whitespace_flexible: false,
        ..JsonCompileOptions::default()
    };
    serde_json::to_value(&options).unwrap_or_default()
}

/// `schema` with the compact writing options attached.
fn with_options(schema: &Value) -> Result<Value> {
    let mut schema = match schema {
        Value::Object(_) => schema.clone(),
        // `true` (anything) and `{}` alike: any JSON value.
        Value::Bool(true) => json!({}),
        _ => {
            return Err(EngineError::InvalidRequest(
                "the output schema must be a JSON Schema object".into(),
            ))
        }
    };
    if let Some(object) = schema.as_object_mut() {
        object.insert("x-guidance".into(), compact());
    }
    Ok(schema)
}

/// Whether `req` asks for constrained output at all.
pub fn wanted(req: &GenerateRequest) -> bool {
    let forced = match &req.tool_choice {
        Some(ToolChoice::Function { .. }) | Some(ToolChoice::Required) => !req.tools.is_empty(),
        _ => false,
    };
    let format = matches!(
        req.response_format,
        Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. })
    );
    forced || format
}

/// The grammar of a request: a forced tool call wins over a response format.
fn grammar_for(req: &GenerateRequest) -> Result<Option<TopLevelGrammar>> {
    let forced: Vec<_> = match &req.tool_choice {
        Some(ToolChoice::Function { name }) => {
            req.tools.iter().filter(|t| &t.name == name).collect()
        }
        Some(ToolChoice::Required) => req.tools.iter().collect(),
        _ => Vec::new(),
    };
    if !forced.is_empty() {
        let calls: Vec<Value> = forced
            .iter()
            .map(|tool| {
                let arguments = match &tool.parameters {
                    Value::Object(_) => tool.parameters.clone(),
                    _ => json!({"type": "object"}),
                };
                json!({
                    "type": "object",
                    "properties": {"name": {"const": tool.name}, "arguments": arguments},
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        let call = if calls.len() == 1 {
            calls.into_iter().next().unwrap_or_default()
        } else {
            json!({"anyOf": calls})
        };
        let call = with_options(&call)?;
        let lark =
            format!("start: \"<tool_call>\\n\" call \"\\n</tool_call>\"\ncall: %json {call}\n");
        return Ok(Some(TopLevelGrammar::from_lark(lark)));
    }
    let schema = match &req.response_format {
        None | Some(ResponseFormat::Text) => return Ok(None),
        Some(ResponseFormat::JsonObject) => json!({"type": "object"}),
        Some(ResponseFormat::JsonSchema { schema, .. }) => schema.clone(),
    };
    Ok(Some(TopLevelGrammar::from_json_schema(with_options(
        &schema,
    )?)))
}

/// One generation's grammar state.
pub struct Constraint {
    matcher: Matcher,
    stop_ids: Vec<u32>,
    eos: u32,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").finish_non_exhaustive()
    }
}

impl Constraint {
    /// Sets the logits of every token the grammar forbids next to -inf.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        // Once the grammar is complete, only the end is allowed.
        let mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| EngineError::Internal(format!("grammar: {e}")))?;
        let end_allowed = mask.is_allowed(self.eos);
        for (id, logit) in logits.iter_mut().enumerate() {
            let id = id as u32;
            let allowed = if self.stop_ids.contains(&id) {
                end_allowed
            } else {
                id < mask.len() as u32 && mask.is_allowed(id)
            };
            if !allowed {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Moves the grammar past the sampled token. An end-of-turn token
    /// (allowed only where the grammar is complete) ends the generation:
    /// nothing to move.
    pub fn commit(&mut self, token: u32) -> Result<()> {
        if self.stop_ids.contains(&token) {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| EngineError::Internal(format!("grammar: {e}")))
    }
}
