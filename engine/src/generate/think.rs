//! Reasoning in generated text. Reasoning models (DeepSeek-R1 distills,
//! Qwen3) think between `<think>` and `</think>` before they answer; that
//! part goes out as reasoning (OpenAI `reasoning_content`, Anthropic
//! `thinking` blocks), the rest as content. Some templates open the block
//! in the prompt (`…<|Assistant|><think>\n`), so the parser can start
//! inside it; otherwise a block counts only at the very start of the
//! answer, and the markers elsewhere are plain text.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// What one piece of output splits into.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ThinkStep {
    pub reasoning: String,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the answer's first non-blank text: a block may open.
    Start,
    /// Inside the block; `begun` once reasoning other than blanks is out.
    Inside { begun: bool },
    /// Just after `</think>`: blanks before the answer are dropped.
    After,
    /// The answer.
    Outside,
}

/// Streaming splitter for one generation.
#[derive(Debug)]
pub struct ThinkParser {
    state: State,
    held: String,
}

impl ThinkParser {
    /// `open`: the prompt already opened the block.
    pub fn new(open: bool) -> Self {
        Self {
            state: if open {
                State::Inside { begun: false }
            } else {
                State::Start
            },
            held: String::new(),
        }
    }

    /// Whether the model is inside its think block (output there is not
    /// the answer, so no answer format applies to it).
    pub fn thinking(&self) -> bool {
        matches!(self.state, State::Inside { .. })
    }

    /// Whether a rendered prompt leaves a think block open.
    pub fn opened_by(prompt: &str) -> bool {
        prompt.trim_end().ends_with(OPEN)
    }

    pub fn push(&mut self, text: &str) -> ThinkStep {
        let mut step = ThinkStep::default();
        self.held.push_str(text);
        loop {
            match self.state {
                State::Outside => {
                    step.text.push_str(&self.held);
                    self.held.clear();
                    return step;
                }
                State::Start => {
                    let rest = self.held.trim_start();
                    if let Some(after) = rest.strip_prefix(OPEN) {
                        self.held = after.to_string();
                        self.state = State::Inside { begun: false };
                    } else if OPEN.starts_with(rest) {
                        return step;
                    } else {
                        self.state = State::Outside;
                    }
                }
                State::After => {
                    let rest = self.held.trim_start();
                    if rest.is_empty() {
                        self.held.clear();
                        return step;
                    }
                    self.held = rest.to_string();
                    self.state = State::Outside;
                }
                State::Inside { begun } => {
                    if !begun {
                        let rest = self.held.trim_start();
                        if rest.len() < self.held.len() {
                            self.held = rest.to_string();
                        }
                    }
                    if let Some(at) = self.held.find(CLOSE) {
                        step.reasoning.push_str(self.held[..at].trim_end());
                        self.held.drain(..at + CLOSE.len());
                        self.state = State::After;
                        continue;
                    }
                    // Keep what may begin `</think>`, and trailing blanks
                    // (dropped if the block ends right after them).
                    let keep = super::partial_suffix(&self.held, CLOSE);
                    let body = &self.held[..self.held.len() - keep];
                    let cut = body.trim_end().len();
                    step.reasoning.push_str(&self.held[..cut]);
                    self.held.drain(..cut);
                    self.state = State::Inside {
                        begun: begun || cut > 0,
                    };
                    return step;
                }
            }
        }
    }

    /// End of generation: what is held goes out where it was heading.
    pub fn finish(&mut self) -> ThinkStep {
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Inside { .. } => ThinkStep {
                reasoning: held.trim_end().to_string(),
                text: String::new(),
            },
            State::After => ThinkStep::default(),
            State::Start | State::Outside => ThinkStep {
                reasoning: String::new(),
                text: held,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(open: bool, pieces: &[&str]) -> (String, String) {
        let mut p = ThinkParser::new(open);
        let (mut reasoning, mut text) = (String::new(), String::new());
        for piece in pieces {
            let s = p.push(piece);
            reasoning.push_str(&s.reasoning);
            text.push_str(&s.text);
        }
        let s = p.finish();
        reasoning.push_str(&s.reasoning);
        text.push_str(&s.text);
        (reasoning, text)
    }

    fn chars(text: &str) -> Vec<String> {
        text.chars().map(String::from).collect()
    }

    #[test]
    fn a_block_the_model_opens_is_reasoning_in_any_cut() {
        let text =
            "<think>\nLet me see: 2 < 3 and </thi is not the end.\n</think>\n\nThe answer is 3.";
        let expected = (
            "Let me see: 2 < 3 and </thi is not the end.".to_string(),
            "The answer is 3.".to_string(),
        );
        assert_eq!(run(false, &[text]), expected);
        let pieces = chars(text);
        let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
        assert_eq!(run(false, &pieces), expected);
    }

    #[test]
    fn a_block_the_prompt_opened_starts_inside() {
        assert_eq!(
            run(true, &["\nhmm", "m\n</th", "ink>\n\nParis"]),
            ("hmmm".to_string(), "Paris".to_string())
        );
        // Cut short while thinking: all of it is reasoning.
        assert_eq!(
            run(true, &["still thinking  "]),
            ("still thinking".to_string(), String::new())
        );
    }

    #[test]
    fn without_a_leading_block_everything_is_text() {
        assert_eq!(
            run(false, &["Paris. <think>x</think>"]),
            (String::new(), "Paris. <think>x</think>".to_string())
        );
        assert_eq!(run(false, &["<thi"]), (String::new(), "<thi".to_string()));
        assert_eq!(
            run(false, &[" ", "<", "b>"]),
            (String::new(), " <b>".to_string())
        );
    }
}
