//! Stop sequences over streamed text: a stop string may span several
//! tokens, so text that could be the start of one is held back until it
//! either completes the stop (generation ends, nothing of it is emitted)
//! or turns out to be ordinary text.

/// What to do with newly generated text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopStep {
    /// Emit this text (possibly empty) and go on.
    Emit(String),
    /// Emit this text, then stop: `stop` was matched.
    Stop { text: String, stop: String },
}

/// Watches generated text for stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Feeds new text.
    pub fn push(&mut self, text: &str) -> StopStep {
        if self.stops.is_empty() {
            return StopStep::Emit(text.to_string());
        }
        self.held.push_str(text);
        // The earliest stop wins; on a tie, the longest.
        let found = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s)))
            .min_by(|a, b| a.0.cmp(&b.0).then(b.1.len().cmp(&a.1.len())));
        if let Some((at, stop)) = found {
            let text = self.held[..at].to_string();
            let stop = stop.clone();
            self.held.clear();
            return StopStep::Stop { text, stop };
        }
        let keep = self.partial_suffix_len();
        let emit_to = self.held.len() - keep;
        let text = self.held[..emit_to].to_string();
        self.held.drain(..emit_to);
        StopStep::Emit(text)
    }

    /// Text held back at the end of generation (no stop completed).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of the held text that is a proper
    /// prefix of some stop string.
    fn partial_suffix_len(&self) -> usize {
        self.stops
            .iter()
            .map(|s| super::partial_suffix(&self.held, s))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for piece in pieces {
            match m.push(piece) {
                StopStep::Emit(t) => out.push_str(&t),
                StopStep::Stop { text, stop } => {
                    out.push_str(&text);
                    return (out, Some(stop));
                }
            }
        }
        out.push_str(&m.finish());
        (out, None)
    }

    #[test]
    fn stop_spanning_pieces_is_caught_and_not_emitted() {
        assert_eq!(
            run(&["END"], &["Hello E", "N", "D and more"]),
            ("Hello ".to_string(), Some("END".to_string()))
        );
    }

    #[test]
    fn false_starts_are_released() {
        assert_eq!(run(&["END"], &["E", "N", "x"]), ("ENx".to_string(), None));
        assert_eq!(run(&["END"], &["abc", "EN"]), ("abcEN".to_string(), None));
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_is_safe() {
        assert_eq!(
            run(&["world", "lo"], &["hello world"]),
            ("hel".to_string(), Some("lo".to_string()))
        );
        assert_eq!(
            run(&["é!"], &["café", "!"]),
            ("caf".to_string(), Some("é!".to_string()))
        );
        assert_eq!(run(&["é!"], &["café", "?"]), ("café?".to_string(), None));
    }
}
