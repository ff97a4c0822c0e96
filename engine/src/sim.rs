//! The simulated engine, for fleet and load tests on machines without the
//! hardware (like llm-d's inference simulator). It is a real [`ChatModel`]
//! — byte-level tokenizer, ChatML template, the same scheduler, sampling,
//! stop strings and tool parsing — whose decoder does no maths: it waits
//! out a configured time to first token and token rate, and writes
//! deterministic text. When the prompt offers tools (the Hermes `<tools>`
//! block the chat model adds for templates without tool support), it calls
//! the first one instead, with empty arguments, so tool calls can be
//! exercised end to end without a real model. It is never chosen by default; neurons run it only
//! when told `--engine sim`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use serde_json::json;

use crate::chat_model::{ChatModel, CHATML};
use crate::error::Result;
use crate::models::{CausalLm, Sequence, Step};
use crate::tokenizer::Tokenizer;

/// What the simulated model pretends to be.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Memory it claims to occupy.
    pub memory_bytes: u64,
    /// Time from start to the first token.
    pub time_to_first_token: Duration,
    /// Decode speed of each sequence.
    pub tokens_per_second: f64,
    /// Tokens in a reply before it ends on its own (then `max_tokens` rules).
    pub reply_tokens: usize,
    pub context_length: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 512 << 20,
            time_to_first_token: Duration::from_millis(50),
            tokens_per_second: 50.0,
            reply_tokens: 32,
            context_length: 8192,
        }
    }
}

/// The words the simulated model writes, in turn.
pub const WORDS: &[&str] = &[
    "simulated",
    "tokens",
    "flow",
    "through",
    "the",
    "mesh",
    "while",
    "neurons",
    "answer",
    "requests",
    "quickly",
    "and",
    "placement",
    "keeps",
    "models",
    "warm",
    "for",
    "every",
    "client",
    "that",
    "asks",
];
const SPECIALS: &[&str] = &["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// GPT-2's byte-to-character map, so every byte has a printable token.
fn byte_alphabet() -> Vec<char> {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut map: Vec<Option<char>> = vec![None; 256];
    for &b in &printable {
        map[b as usize] = char::from_u32(b);
    }
    let mut extra = 0;
    for (b, slot) in map.iter_mut().enumerate() {
        if slot.is_none() {
            *slot = char::from_u32(256 + extra);
            printable.push(b as u32);
            extra += 1;
        }
    }
    map.into_iter().map(|c| c.unwrap_or('?')).collect()
}

fn sim_tokenizer() -> Result<Tokenizer> {
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, special) in SPECIALS.iter().enumerate() {
        vocab.insert(special.to_string(), json!(id));
        added.push(
            json!({"id": id, "content": special, "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}),
        );
    }
    for c in byte_alphabet() {
        let id = vocab.len();
        vocab.entry(c.to_string()).or_insert(json!(id));
    }
    for word in WORDS {
        let id = vocab.len();
        vocab.insert(format!("Ġ{word}"), json!(id));
    }
    let doc = json!({
        "version": "1.0",
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": []},
    });
    let mut tokenizer = Tokenizer::from_json(&doc)?;
    tokenizer.set_specials(None, Some("<|im_end|>"), false);
    Ok(tokenizer)
}

#[derive(Debug)]
struct SimLm {
    cfg: SimConfig,
    vocab: usize,
    first_word: u32,
    eos: u32,
    device: Device,
}

impl CausalLm for SimLm {
    fn start(&self) -> Box<dyn Sequence> {
        Box::new(SimSequence {
            vocab: self.vocab,
            first_word: self.first_word,
            eos: self.eos,
            cfg: self.cfg.clone(),
            due: Instant::now() + self.cfg.time_to_first_token,
            position: 0,
            generated: 0,
            salt: 0,
            prompt: Vec::new(),
            last: None,
            script: Vec::new(),
        })
    }

    fn context_length(&self) -> usize {
        self.cfg.context_length
    }

    fn device(&self) -> &Device {
        &self.device
    }

    /// Every waiting prompt in one step: reading a prompt costs the
    /// simulator nothing but its time to first token, as on an engine with
    /// prefill to spare (a fleet test's prompts would otherwise queue
    /// behind a CPU engine's chunk size, one step per decode interval).
    fn prompt_tokens_per_step(&self) -> usize {
        usize::MAX
    }

    /// As the default, but each sequence is told whether it got a prompt
    /// chunk or a decode step: the token fed back may not be the one it
    /// chose (a grammar masked that one out).
    fn forward_batch(&self, steps: &mut [Step<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        steps
            .iter_mut()
            .map(|step| {
                let decoding = !step.prompt;
                let logits = match step.seq.as_any_mut().downcast_mut::<SimSequence>() {
                    Some(seq) => seq.step(step.tokens, decoding)?,
                    None => step.seq.forward(step.tokens)?,
                };
                Ok(step.logits.then_some(logits))
            })
            .collect()
    }
}

struct SimSequence {
    vocab: usize,
    first_word: u32,
    eos: u32,
    cfg: SimConfig,
    /// When the next token may be produced; sequences keep their own
    /// clocks, so concurrent ones overlap as on a batching engine.
    due: Instant,
    position: usize,
    generated: usize,
    salt: u64,
    /// The prompt so far (it may arrive in several chunks).
    prompt: Vec<u32>,
    /// The token this sequence chose last; fed back, it marks a decode step.
    last: Option<u32>,
    /// Tokens to write instead of words (a tool call), then end of turn.
    script: Vec<u32>,
}

/// Id of the byte-level token for byte `b` (after the special tokens).
fn byte_token(b: u8) -> u32 {
    (SPECIALS.len() + usize::from(b)) as u32
}

/// The prompt's bytes, from its byte-level tokens.
fn prompt_bytes(tokens: &[u32]) -> Vec<u8> {
    let first = SPECIALS.len() as u32;
    tokens
        .iter()
        .filter(|&&t| t >= first && t < first + 256)
        .map(|&t| (t - first) as u8)
        .collect()
}

/// A Hermes tool call, as tokens: of the function the prompt says must be
/// called, else of the first one it offers.
fn tool_call_script(tokens: &[u32]) -> Vec<u32> {
    if answers_a_tool_result(tokens) {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&prompt_bytes(tokens)).into_owned();
    let Some((_, tools)) = text.split_once("<tools>\n") else {
        return Vec::new();
    };
    let forced = tools
        .split_once("You must call the function ")
        .and_then(|(_, rest)| rest.split_once('.'))
        .map(|(name, _)| name.to_string());
    let first = ["\"name\":\"", "\"name\": \""].iter().find_map(|key| {
        tools
            .split_once(key)
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(name, _)| name.to_string())
    });
    let Some(name) = forced.or(first) else {
        return Vec::new();
    };
    let call = format!("<tool_call>\n{{\"name\": \"{name}\", \"arguments\": {{}}}}\n</tool_call>");
    call.bytes().map(byte_token).collect()
}

/// Whether the turn before the generation prompt is a tool result: then
/// the simulated model answers in words, so a client's tool loop ends.
fn answers_a_tool_result(tokens: &[u32]) -> bool {
    let im_start = SPECIALS
        .iter()
        .position(|s| *s == "<|im_start|>")
        .unwrap_or(1) as u32;
    let mut turns = tokens.iter().enumerate().filter(|&(_, &t)| t == im_start);
    let Some((last_turn, _)) = turns.by_ref().nth_back(1) else {
        return false;
    };
    prompt_bytes(&tokens[last_turn + 1..]).starts_with(b"tool")
}

impl Sequence for SimSequence {
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        // Called alone, a decode step is the token chosen last fed back;
        // anything else is (a chunk of) the prompt.
        let decoding = tokens.len() == 1 && self.last == Some(tokens[0]);
        self.step(tokens, decoding)
    }

    fn position(&self) -> usize {
        self.position
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl SimSequence {
    fn step(&mut self, tokens: &[u32], decoding: bool) -> Result<Vec<f32>> {
        if decoding {
            // Several at once: a resumed generation replaying its tokens.
            self.generated += tokens.len();
        } else {
            self.prompt.extend_from_slice(tokens);
            self.script = tool_call_script(&self.prompt);
            self.salt = self.prompt.iter().fold(self.prompt.len() as u64, |h, &t| {
                h.wrapping_mul(0x100_0000_01B3).wrapping_add(u64::from(t))
            });
        }
        self.position += tokens.len();
        let now = Instant::now();
        if self.due > now {
            std::thread::sleep(self.due - now);
        }
        let step = Duration::from_secs_f64(1.0 / self.cfg.tokens_per_second.max(1e-3));
        self.due = self.due.max(now) + step;
        let next = if !self.script.is_empty() {
            match self.script.get(self.generated) {
                Some(&token) => token,
                None => self.eos,
            }
        } else if self.generated >= self.cfg.reply_tokens {
            self.eos
        } else {
            let words = WORDS.len() as u64;
            self.first_word + ((self.salt + self.generated as u64 * 7) % words) as u32
        };
        self.last = Some(next);
        let mut logits = vec![0f32; self.vocab];
        logits[next as usize] = 30.0;
        Ok(logits)
    }
}

/// A simulated chat model.
pub fn sim_model(cfg: SimConfig) -> Result<ChatModel> {
    let tokenizer = sim_tokenizer()?;
    let vocab = tokenizer.vocab_size();
    let first_word = tokenizer
        .token_to_id(&format!("Ġ{}", WORDS[0]))
        .unwrap_or_default();
    let eos = tokenizer.eos.as_ref().map_or(0, |s| s.id);
    let memory = cfg.memory_bytes;
    let lm = Arc::new(SimLm {
        cfg,
        vocab,
        first_word,
        eos,
        device: Device::Cpu,
    });
    ChatModel::new(lm, tokenizer, Some(CHATML), &[], memory, "sim".to_string())
}
