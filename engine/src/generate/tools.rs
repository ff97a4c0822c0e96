//! Tool calls in generated text. Models write calls in their family's
//! syntax; we recognise Hermes/Qwen `<tool_call>{json}</tool_call>` and
//! Mistral `[TOOL_CALLS][{json}, …]`, turn each into a structured call with
//! an id, and pass all other text through as content. A call whose JSON
//! does not parse is passed through as text rather than dropped.

use serde_json::Value as Json;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
const MISTRAL: &str = "[TOOL_CALLS]";

/// A parsed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    pub index: u32,
    pub id: String,
    pub name: String,
    /// JSON text of the arguments object.
    pub arguments: String,
}

/// Output of one step of the parser.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolStep {
    pub text: String,
    pub calls: Vec<ParsedCall>,
}

/// Streaming tool-call recogniser for one generation.
#[derive(Debug, Clone)]
pub struct ToolParser {
    id_prefix: String,
    held: String,
    inside: Option<&'static str>,
    count: u32,
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
                Some(OPEN) => match self.held.find(CLOSE) {
                    Some(end) => {
                        let body = self.held[..end].to_string();
                        self.held.drain(..end + CLOSE.len());
                        self.inside = None;
                        self.emit(&body, &mut step, OPEN, CLOSE);
                    }
                    None => return step,
                },
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
                    step.calls.push(ParsedCall {
                        index: self.count,
                        id: format!("call_{}_{}", self.id_prefix, self.count),
                        name,
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
    held.char_indices()
        .map(|(i, _)| i)
        .find(|&i| {
            let tail = &held[i..];
            [OPEN, MISTRAL]
                .iter()
                .any(|m| m.len() > tail.len() && m.starts_with(tail))
        })
        .map_or(0, |i| held.len() - i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&str]) -> ToolStep {
        let mut p = ToolParser::new("req-1");
        let mut all = ToolStep::default();
        for piece in pieces {
            let s = p.push(piece);
            all.text.push_str(&s.text);
            all.calls.extend(s.calls);
        }
        let s = p.finish();
        all.text.push_str(&s.text);
        all.calls.extend(s.calls);
        all
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
            vec![ParsedCall {
                index: 0,
                id: "call_req1_0".into(),
                name: "get_weather".into(),
                arguments: "{\"city\":\"Paris\"}".into()
            }]
        );
    }

    #[test]
    fn mistral_call_list() {
        let out = run(&["[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", \"arguments\": {\"x\": 1}}]"]);
        assert_eq!(out.text, "");
        assert_eq!(out.calls.len(), 2);
        assert_eq!(out.calls[1].name, "b");
        assert_eq!(out.calls[1].index, 1);
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
