//! Tool calls in generated text. Models write calls in their family's
//! syntax; we recognise Hermes/Qwen `<tool_call>{json}</tool_call>` and
//! Mistral `[TOOL_CALLS][{json}, …]`, turn each into a structured call with
//! an id, and pass all other text through as content.
//!
//! A Hermes call written `{"name": "…", "arguments": {…}}` (the form the
//! prompt asks for) is streamed as the APIs stream calls: its id and name
//! once the name is written, then its arguments as they are generated.
//! Any other shape is held to its end and parsed whole; one whose JSON does
//! not parse is passed through as text rather than dropped.

use cortex_schemas::frame::ToolCallDelta;
use serde_json::Value as Json;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
const MISTRAL: &str = "[TOOL_CALLS]";

/// Output of one step of the parser.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolStep {
    pub text: String,
    /// Pieces of calls: the first of each carries its id and name, the
    /// rest text to append to its arguments.
    pub calls: Vec<ToolCallDelta>,
}

/// Streaming tool-call recogniser for one generation.
#[derive(Debug, Clone)]
pub struct ToolParser {
    id_prefix: String,
    held: String,
    inside: Option<&'static str>,
    /// The Hermes call whose arguments are being streamed.
    streaming: Option<Arguments>,
    count: u32,
}

/// Where the streamed arguments object stands.
#[derive(Debug, Clone, Default)]
struct Arguments {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// The object has closed; the rest of the call is skipped.
    closed: bool,
}

impl Arguments {
    /// Takes `c`; true once it closes the object.
    fn feed(&mut self, c: char) -> bool {
        if self.in_string {
            match (self.escaped, c) {
                (true, _) => self.escaped = false,
                (false, '\\') => self.escaped = true,
                (false, '"') => self.in_string = false,
                _ => {}
            }
            return false;
        }
        match c {
            '"' => self.in_string = true,
            '{' | '[' => self.depth += 1,
            '}' | ']' => {
                self.depth = self.depth.saturating_sub(1);
                return self.depth == 0;
            }
            _ => {}
        }
        false
    }
}

/// How the start of a Hermes call body reads so far.
#[derive(Debug, PartialEq)]
enum Head {
    /// It may still become `{"name": "…", "arguments": {`.
    Partial,
    /// It is not of that shape: parse it whole at its end.
    Other,
    /// The name, and the offset of the arguments' `{`.
    Streamable(String, usize),
}

/// Reads `{"name": "…", "arguments": ` at the start of `body`.
fn head(body: &str) -> Head {
    let mut at = 0;
    let skip_ws = |at: &mut usize| {
        *at += body[*at..].len() - body[*at..].trim_start().len();
    };
    let literal = |at: &mut usize, lit: &str| -> Option<Head> {
        skip_ws(at);
        let rest = &body[*at..];
        if rest.starts_with(lit) {
            *at += lit.len();
            None
        } else if lit.starts_with(rest) {
            Some(Head::Partial)
        } else {
            Some(Head::Other)
        }
    };
    for lit in ["{", "\"name\"", ":"] {
        if let Some(h) = literal(&mut at, lit) {
            return h;
        }
    }
    skip_ws(&mut at);
    let rest = &body[at..];
    if rest.is_empty() {
        return Head::Partial;
    }
    if !rest.starts_with('"') {
        return Head::Other;
    }
    // The name's string literal, to its closing quote.
    let mut escaped = false;
    let Some(end) = rest.char_indices().skip(1).find_map(|(i, c)| {
        let close = !escaped && c == '"';
        escaped = !escaped && c == '\\';
        close.then_some(i)
    }) else {
        return Head::Partial;
    };
    let Ok(name) = serde_json::from_str::<String>(&rest[..=end]) else {
        return Head::Other;
    };
    at += end + 1;
    for lit in [",", "\"arguments\"", ":"] {
        if let Some(h) = literal(&mut at, lit) {
            return h;
        }
    }
    skip_ws(&mut at);
    match body[at..].chars().next() {
        None => Head::Partial,
        Some('{') => Head::Streamable(name, at),
        Some(_) => Head::Other,
    }
}

impl ToolParser {
    /// `id_prefix` makes call ids unique (`call_<prefix>_<n>`).
    pub fn new(id_prefix: &str) -> Self {
        Self {
            id_prefix: id_prefix
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(24)
                .collect(),
            held: String::new(),
            inside: None,
            streaming: None,
            count: 0,
        }
    }

    /// How many calls were made so far.
    pub fn calls(&self) -> u32 {
        self.count
    }

    pub fn push(&mut self, text: &str) -> ToolStep {
        self.held.push_str(text);
        let mut step = ToolStep::default();
        loop {
            match self.inside {
                None => {
                    let start = [OPEN, MISTRAL]
                        .iter()
                        .filter_map(|m| self.held.find(m).map(|at| (at, *m)))
                        .min();
                    match start {
                        Some((at, marker)) => {
                            step.text.push_str(&self.held[..at]);
                            self.held.drain(..at + marker.len());
                            self.inside = Some(marker);
                        }
                        None => {
                            let keep = partial_marker_len(&self.held);
                            let cut = self.held.len() - keep;
                            step.text.push_str(&self.held[..cut]);
                            self.held.drain(..cut);
                            return step;
                        }
                    }
                }
                Some(OPEN) => {
                    if self.streaming.is_none() {
                        if let Head::Streamable(name, from) = head(&self.held) {
                            self.held.drain(..from);
                            step.calls.push(ToolCallDelta {
                                index: self.count,
                                id: Some(self.call_id()),
                                name: Some(name),
                                arguments: String::new(),
                            });
                            self.streaming = Some(Arguments::default());
                        }
                    }
                    if let Some(args) = &mut self.streaming {
                        if !args.closed {
                            let found = self.held.char_indices().find(|&(_, c)| args.feed(c));
                            let cut = found.map_or(self.held.len(), |(i, c)| i + c.len_utf8());
                            args.closed = found.is_some();
                            let piece: String = self.held.drain(..cut).collect();
                            if !piece.is_empty() {
                                step.calls.push(ToolCallDelta {
                                    index: self.count,
                                    id: None,
                                    name: None,
                                    arguments: piece,
                                });
                            }
                        }
                        if !args.closed {
                            return step;
                        }
                        // The arguments are out; skip to the call's end.
                        let Some(end) = self.held.find(CLOSE) else {
                            let keep = super::partial_suffix(&self.held, CLOSE);
                            self.held.drain(..self.held.len() - keep);
                            return step;
                        };
                        self.held.drain(..end + CLOSE.len());
                        self.inside = None;
                        self.streaming = None;
                        self.count += 1;
                        continue;
                    }
                    match self.held.find(CLOSE) {
                        Some(end) => {
                            let body = self.held[..end].to_string();
                            self.held.drain(..end + CLOSE.len());
                            self.inside = None;
                            self.emit(&body, &mut step, OPEN, CLOSE);
                        }
                        None => return step,
                    }
                }
                // Mistral's calls run to the end of the output.
                Some(_) => return step,
            }
        }
    }

    /// End of generation: completes a Mistral call list or releases an
    /// unterminated call as text.
    pub fn finish(&mut self) -> ToolStep {
        let mut step = ToolStep::default();
        let held = std::mem::take(&mut self.held);
        if self.streaming.take().is_some() {
            // A streamed call cut short: its arguments stay as far as they
            // got (the finish reason says why).
            self.inside = None;
            self.count += 1;
            return step;
        }
        match self.inside.take() {
            None => step.text = held,
            Some(MISTRAL) => self.emit(&held, &mut step, MISTRAL, ""),
            Some(marker) => {
                step.text.push_str(marker);
                step.text.push_str(&held);
            }
        }
        step
    }

    fn call_id(&self) -> String {
        format!("call_{}_{}", self.id_prefix, self.count)
    }

    fn emit(&mut self, body: &str, step: &mut ToolStep, open: &str, close: &str) {
        let parsed: Option<Vec<Json>> = match serde_json::from_str::<Json>(body.trim()) {
            Ok(Json::Array(items)) => Some(items),
            Ok(obj @ Json::Object(_)) => Some(vec![obj]),
            _ => None,
        };
        let calls: Option<Vec<(String, String)>> = parsed.and_then(|items| {
            items
                .iter()
                .map(|item| {
                    let name = item.get("name")?.as_str()?.to_string();
                    let args = item
                        .get("arguments")
                        .or_else(|| item.get("parameters"))
                        .cloned()
                        .unwrap_or(Json::Object(Default::default()));
                    let args = match args {
                        Json::String(s) => s,
                        other => other.to_string(),
                    };
                    Some((name, args))
                })
                .collect()
        });
        match calls {
            Some(calls) => {
                for (name, arguments) in calls {
                    step.calls.push(ToolCallDelta {
                        index: self.count,
                        id: Some(self.call_id()),
                        name: Some(name),
                        arguments,
                    });
                    self.count += 1;
                }
            }
            None => {
                step.text.push_str(open);
                step.text.push_str(body);
                step.text.push_str(close);
            }
        }
    }
}

fn partial_marker_len(held: &str) -> usize {
    [OPEN, MISTRAL]
        .iter()
        .map(|m| super::partial_suffix(held, m))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client assembles: text, and per call its id, name and
    /// arguments joined from the pieces.
    #[derive(Debug, Default, PartialEq)]
    struct Out {
        text: String,
        calls: Vec<(String, String, String)>,
        pieces: usize,
    }

    fn run(pieces: &[&str]) -> Out {
        let mut p = ToolParser::new("req-1");
        let mut out = Out::default();
        let take = |step: ToolStep, out: &mut Out| {
            out.text.push_str(&step.text);
            for d in step.calls {
                out.pieces += 1;
                let i = d.index as usize;
                if out.calls.len() <= i {
                    out.calls.resize(i + 1, Default::default());
                }
                let call = &mut out.calls[i];
                if let Some(id) = d.id {
                    call.0 = id;
                }
                if let Some(name) = d.name {
                    call.1 = name;
                }
                call.2.push_str(&d.arguments);
            }
        };
        for piece in pieces {
            let step = p.push(piece);
            take(step, &mut out);
        }
        let step = p.finish();
        take(step, &mut out);
        out
    }

    fn call(id: &str, name: &str, arguments: &str) -> (String, String, String) {
        (id.into(), name.into(), arguments.into())
    }

    #[test]
    fn hermes_calls_across_pieces() {
        let out = run(&[
            "Let me check.<tool",
            "_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_",
            "call>",
        ]);
        assert_eq!(out.text, "Let me check.");
        assert_eq!(
            out.calls,
            vec![call("call_req1_0", "get_weather", "{\"city\": \"Paris\"}")]
        );
    }

    #[test]
    fn hermes_arguments_stream_as_they_are_written() {
        let text = "<tool_call>\n{\"name\": \"run\", \"arguments\": {\"cmd\": \"echo }{\\\" [x]\", \"n\": [1, {\"a\": 2}]}}\n</tool_call>then<tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call>";
        // One character at a time, as a tokenizer might hand it out.
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        let out = run(&pieces);
        assert_eq!(out.text, "then");
        assert_eq!(
            out.calls,
            vec![
                call(
                    "call_req1_0",
                    "run",
                    "{\"cmd\": \"echo }{\\\" [x]\", \"n\": [1, {\"a\": 2}]}"
                ),
                call("call_req1_1", "b", "{}"),
            ]
        );
        // The arguments came out in many pieces, not at the call's end.
        assert!(out.pieces > 20, "{out:?}");
        let parsed: Json = serde_json::from_str(&out.calls[0].2).unwrap();
        assert_eq!(parsed["n"][1]["a"], 2);
    }

    #[test]
    fn other_shapes_are_parsed_whole() {
        let out = run(&["<tool_call>{\"arguments\": {\"x\": 1}, \"name\": \"f\"}</tool_call>"]);
        assert_eq!(out.calls, vec![call("call_req1_0", "f", "{\"x\":1}")]);
        assert_eq!(out.pieces, 1);
        let out = run(&["<tool_call>{\"name\": \"g\", \"arguments\": \"{}\"}</tool_call>"]);
        assert_eq!(out.calls, vec![call("call_req1_0", "g", "{}")]);
    }

    #[test]
    fn a_streamed_call_cut_short_keeps_what_was_written() {
        let out = run(&["<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": \"ab"]);
        assert_eq!(out.calls, vec![call("call_req1_0", "f", "{\"x\": \"ab")]);
        assert_eq!(out.text, "");
    }

    #[test]
    fn mistral_call_list() {
        let out = run(&["[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", \"arguments\": {\"x\": 1}}]"]);
        assert_eq!(out.text, "");
        assert_eq!(out.calls.len(), 2);
        assert_eq!(out.calls[1].1, "b");
        assert_eq!(out.calls[1].0, "call_req1_1");
    }

    #[test]
    fn bad_json_and_plain_text_pass_through() {
        let out = run(&["<tool_call>not json</tool_call> ok"]);
        assert_eq!(out.text, "<tool_call>not json</tool_call> ok");
        assert!(out.calls.is_empty());
        let out = run(&["a < b and <tool"]);
        assert_eq!(out.text, "a < b and <tool");
    }
}
