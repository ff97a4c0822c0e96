//! Prompt prefixes as chained block hashes: the one rule by which a
//! neuron says which prompts its KV cache holds and an ingress pod asks
//! which neuron holds the start of a request.
//!
//! Ingress has neither the model's template nor its tokenizer, so the
//! blocks are cut from the request itself, not from its tokens: a
//! canonical byte stream of what the template renders (tools, the
//! thinking switch, then every message: role, name, text, tool calls) is
//! cut into [`BLOCK_BYTES`]-byte blocks, and block `i`'s hash covers block
//! `i` and the hash of block `i - 1`. Two requests share their first `n`
//! hashes exactly when their streams share their first `n` whole blocks,
//! which is when their rendered prompts (and so their tokens) share that
//! start: a chat turn extends the previous turn's stream (its messages,
//! then the assistant's answer), and requests with the same system prompt
//! and tools share its blocks. Only whole blocks are hashed. The hash is
//! FNV-1a (stable across builds and machines), cut to 53 bits.

use cortex_schemas::{ChatMessage, ContentPart, GenerateInput, GenerateRequest, Role};

/// Bytes of canonical request text per block (about 16 tokens of English,
/// the block size of vLLM's prefix cache).
pub const BLOCK_BYTES: usize = 64;

/// Hashes are kept below 2^53.
const MASK: u64 = (1 << 53) - 1;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Cuts a byte stream into blocks and hashes each with its predecessor.
#[derive(Debug, Clone)]
pub struct Chain {
    previous: u64,
    state: u64,
    filled: usize,
    hashes: Vec<u64>,
}

impl Default for Chain {
    fn default() -> Self {
        Self {
            previous: 0,
            state: seed(0),
            filled: 0,
            hashes: Vec::new(),
        }
    }
}

fn seed(previous: u64) -> u64 {
    previous.to_le_bytes().iter().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    })
}

impl Chain {
    /// Appends bytes to the stream.
    pub fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (BLOCK_BYTES - self.filled).min(bytes.len());
            for b in &bytes[..take] {
                self.state = (self.state ^ u64::from(*b)).wrapping_mul(FNV_PRIME);
            }
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled == BLOCK_BYTES {
                let hash = self.state & MASK;
                self.hashes.push(hash);
                self.previous = hash;
                self.state = seed(hash);
                self.filled = 0;
            }
        }
    }

    /// A field: its length first, so that field boundaries cannot shift.
    fn field(&mut self, bytes: &[u8]) {
        self.push(&(bytes.len() as u32).to_le_bytes());
        self.push(bytes);
    }

    /// Hashes of the whole blocks so far.
    pub fn hashes(&self) -> &[u64] {
        &self.hashes
    }

    pub fn into_hashes(self) -> Vec<u64> {
        self.hashes
    }
}

/// The chain of a generation request's prompt.
pub fn request_chain(request: &GenerateRequest) -> Chain {
    let mut chain = Chain::default();
    chain.push(b"cortex-prefix-1");
    let thinking = match request.thinking {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    };
    chain.push(&[thinking]);
    let tools = serde_json::to_vec(&request.tools).unwrap_or_default();
    chain.field(&tools);
    match &request.input {
        GenerateInput::Chat { messages } => {
            chain.push(b"c");
            for message in messages {
                push_message(&mut chain, message);
            }
        }
        // A raw prompt is its own stream: its text, from the first byte.
        GenerateInput::Text { prompt } => {
            chain.push(b"t");
            chain.push(prompt.as_bytes());
        }
    }
    chain
}

/// Block hashes of `request`'s prompt.
pub fn request_blocks(request: &GenerateRequest) -> Vec<u64> {
    request_chain(request).into_hashes()
}

/// Block hashes of `request`'s prompt followed by `answer`, as the next
/// turn of the conversation sends it back (an assistant message with that
/// text; for a raw prompt, the text appended).
pub fn answered_blocks(request: &GenerateRequest, answer: &str) -> Vec<u64> {
    let mut chain = request_chain(request);
    match &request.input {
        GenerateInput::Chat { .. } => {
            push_message(&mut chain, &ChatMessage::text(Role::Assistant, answer));
        }
        GenerateInput::Text { .. } => chain.push(answer.as_bytes()),
    }
    chain.into_hashes()
}

fn push_message(chain: &mut Chain, message: &ChatMessage) {
    let role = match message.role {
        Role::System => b's',
        Role::User => b'u',
        Role::Assistant => b'a',
        Role::Tool => b'o',
    };
    chain.push(&[0x1e, role]);
    chain.field(message.name.as_deref().unwrap_or("").as_bytes());
    chain.field(message.tool_call_id.as_deref().unwrap_or("").as_bytes());
    let text: usize = message
        .content
        .iter()
        .map(|ContentPart::Text { text }| text.len())
        .sum();
    chain.push(&(text as u32).to_le_bytes());
    for ContentPart::Text { text } in &message.content {
        chain.push(text.as_bytes());
    }
    chain.push(&(message.tool_calls.len() as u32).to_le_bytes());
    for call in &message.tool_calls {
        chain.field(call.id.as_bytes());
        chain.field(call.name.as_bytes());
        chain.field(call.arguments.as_bytes());
    }
}

/// How many leading hashes of `blocks` satisfy `held` (a neuron's
/// summary): the shared prefix, in blocks.
pub fn matched(blocks: &[u64], held: impl Fn(u64) -> bool) -> usize {
    blocks.iter().take_while(|hash| held(**hash)).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chat(turns: &[(Role, &str)]) -> GenerateRequest {
        let messages = turns
            .iter()
            .map(|(role, text)| ChatMessage::text(*role, *text))
            .collect();
        GenerateRequest::new("r", "m", GenerateInput::Chat { messages })
    }

    #[test]
    fn a_next_turn_extends_the_answered_chain() {
        let system = "You are a careful assistant. ".repeat(6);
        let question = "Name three rivers of Europe and say where each one meets the sea.";
        let answer = "The Danube meets the Black Sea, the Rhine the North Sea, and the Rhone the Mediterranean.";
        let first = chat(&[(Role::System, &system), (Role::User, question)]);
        let answered = answered_blocks(&first, answer);
        let second = chat(&[
            (Role::System, &system),
            (Role::User, question),
            (Role::Assistant, answer),
            (Role::User, "And which is longest?"),
        ]);
        let next = request_blocks(&second);
        assert!(answered.len() >= 3, "{} blocks", answered.len());
        assert_eq!(&next[..answered.len()], &answered[..]);
        assert!(request_blocks(&first).len() <= answered.len());
    }

    #[test]
    fn other_tools_or_thinking_share_nothing() {
        let text = "x".repeat(600);
        let plain = chat(&[(Role::User, &text)]);
        let mut thinking = plain.clone();
        thinking.thinking = Some(false);
        let mut tooled = plain.clone();
        tooled.tools.push(cortex_schemas::ToolDefinition {
            name: "f".into(),
            description: None,
            parameters: serde_json::json!({"type": "object"}),
        });
        let a = request_blocks(&plain);
        assert_eq!(
            a.len(),
            641 / BLOCK_BYTES,
            "23 header bytes, 618 of the message"
        );
        for other in [thinking, tooled] {
            assert_eq!(matched(&request_blocks(&other), |h| a.contains(&h)), 0);
        }
    }

    #[test]
    fn hashes_are_stable_across_builds() {
        // Neurons and ingress pods of different builds must agree: this
        // value may change only with the `cortex-prefix-` version tag.
        let request = chat(&[(Role::User, &"stable ".repeat(40))]);
        assert_eq!(request_blocks(&request)[0], 0x0016_0345_9164_01d4);
    }

    proptest! {
        #[test]
        fn shared_text_gives_shared_blocks(
            common in "\\PC{0,400}", a in "\\PC{0,200}", b in "\\PC{0,200}",
        ) {
            let x = GenerateRequest::new("r", "m", GenerateInput::Text { prompt: format!("{common}{a}") });
            let y = GenerateRequest::new("r", "m", GenerateInput::Text { prompt: format!("{common}{b}") });
            let (bx, by) = (request_blocks(&x), request_blocks(&y));
            // Header (16 bytes + 4 + 2 tools bytes `[]` + 1 kind) plus the shared text.
            let shared = (15 + 1 + 4 + 2 + 1 + common.len()) / BLOCK_BYTES;
            prop_assert!(bx.len() >= shared && by.len() >= shared);
            prop_assert_eq!(&bx[..shared], &by[..shared]);
            prop_assert!(bx.iter().all(|h| *h <= MASK));
            let n = matched(&by, |h| bx.contains(&h));
            prop_assert!(n >= shared);
        }

        #[test]
        fn pushing_in_pieces_is_pushing_at_once(text in proptest::collection::vec(any::<u8>(), 0..1000), cut in 0usize..1000) {
            let cut = cut.min(text.len());
            let mut whole = Chain::default();
            whole.push(&text);
            let mut pieces = Chain::default();
            pieces.push(&text[..cut]);
            pieces.push(&text[cut..]);
            prop_assert_eq!(whole.hashes(), pieces.hashes());
        }
    }
}
