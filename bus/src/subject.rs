//! Subject builders. Every subject is `<prefix>.v1.<...>`; the prefix is
//! configurable (default `cortex`) so several meshes can share a server.
//!
//! A model id enters subjects and KV keys as a [`ModelToken`]: the id with
//! every character outside `[A-Za-z0-9_-/=]` replaced by `_` (so `.` and `:`
//! become `_`). The replacement covers more than `.` because the same token is
//! the key in JetStream KV buckets, whose keys allow only that alphabet. Ids
//! with whitespace, control characters, `*` or `>` are refused outright; two
//! ids mapping to one token are refused by the catalogue.

use std::fmt;

use cortex_schemas::WIRE_VERSION;

/// Default subject prefix.
pub const DEFAULT_PREFIX: &str = "cortex";

/// Longest accepted model id, in bytes.
pub const MAX_MODEL_ID_LEN: usize = 200;

/// Why a name cannot become a subject token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("empty {what}")]
    Empty { what: &'static str },
    #[error("{what} {value:?} contains {found:?}, which is not allowed in a subject")]
    ForbiddenChar {
        what: &'static str,
        value: String,
        found: char,
    },
    #[error("{what} is {len} bytes long; the limit is {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

/// A model id made safe for subjects and KV keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelToken(String);

impl ModelToken {
    /// Maps a model id to its token, refusing ids that cannot be one.
    pub fn new(model_id: &str) -> Result<Self, SubjectError> {
        const WHAT: &str = "model id";
        if model_id.is_empty() {
            return Err(SubjectError::Empty { what: WHAT });
        }
        if model_id.len() > MAX_MODEL_ID_LEN {
            return Err(SubjectError::TooLong {
                what: WHAT,
                len: model_id.len(),
                max: MAX_MODEL_ID_LEN,
            });
        }
        if let Some(found) = model_id
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == '*' || *c == '>')
        {
            return Err(SubjectError::ForbiddenChar {
                what: WHAT,
                value: model_id.to_string(),
                found,
            });
        }
        let token = model_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/' | '=') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Ok(Self(token))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a single subject token chosen by an operator (neuron id, prefix part).
pub fn validate_token(what: &'static str, value: &str) -> Result<(), SubjectError> {
    if value.is_empty() {
        return Err(SubjectError::Empty { what });
    }
    if let Some(found) = value
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '>' | '.'))
    {
        return Err(SubjectError::ForbiddenChar {
            what,
            value: value.to_string(),
            found,
        });
    }
    Ok(())
}

/// Control endpoints of a neuron.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeuronOp {
    Infer,
    Cancel,
    Load,
    Unload,
    Drain,
    Status,
}

impl NeuronOp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Infer => "infer",
            Self::Cancel => "cancel",
            Self::Load => "load",
            Self::Unload => "unload",
            Self::Drain => "drain",
            Self::Status => "status",
        }
    }
}

/// Endpoints of the placement service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementOp {
    Ensure,
    Status,
    Pin,
    Unpin,
    Load,
    Unload,
    /// Re-read `models.toml` and publish it.
    Reload,
}

impl PlacementOp {
    /// Every endpoint, in the order the service registers them.
    pub const ALL: [PlacementOp; 7] = [
        Self::Ensure,
        Self::Status,
        Self::Pin,
        Self::Unpin,
        Self::Load,
        Self::Unload,
        Self::Reload,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ensure => "ensure",
            Self::Status => "status",
            Self::Pin => "pin",
            Self::Unpin => "unpin",
            Self::Load => "load",
            Self::Unload => "unload",
            Self::Reload => "reload",
        }
    }
}

/// Builds every subject (ARCHITECTURE.md, "Subjects") under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    root: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX).expect("default prefix is valid")
    }
}

impl Subjects {
    /// `prefix` may have several dot-separated tokens (`acme.cortex`).
    pub fn new(prefix: &str) -> Result<Self, SubjectError> {
        if prefix.is_empty() {
            return Err(SubjectError::Empty {
                what: "subject prefix",
            });
        }
        for part in prefix.split('.') {
            validate_token("subject prefix part", part)?;
        }
        Ok(Self {
            root: format!("{prefix}.{WIRE_VERSION}"),
        })
    }

    /// `<prefix>.v1`
    pub fn root(&self) -> &str {
        &self.root
    }

    /// `<prefix>.v1.heartbeat.<neuron>`
    pub fn heartbeat(&self, neuron: &str) -> String {
        format!("{}.heartbeat.{neuron}", self.root)
    }

    /// `<prefix>.v1.heartbeat.*`: every neuron's heartbeats.
    pub fn heartbeats(&self) -> String {
        format!("{}.heartbeat.*", self.root)
    }

    /// `<prefix>.v1.prefix.<neuron>`: the neuron's prefix summaries.
    pub fn prefix(&self, neuron: &str) -> String {
        format!("{}.prefix.{neuron}", self.root)
    }

    /// `<prefix>.v1.prefix.*`: every neuron's prefix summaries.
    pub fn prefixes(&self) -> String {
        format!("{}.prefix.*", self.root)
    }

    /// `<prefix>.v1.infer.<model-token>`: served by queue group [`crate::QUEUE_GROUP`].
    pub fn infer(&self, model: &ModelToken) -> String {
        format!("{}.infer.{model}", self.root)
    }

    /// `<prefix>.v1.neuron.<neuron>.<op>`
    pub fn neuron(&self, neuron: &str, op: NeuronOp) -> String {
        format!("{}.neuron.{neuron}.{}", self.root, op.as_str())
    }

    /// `<prefix>.v1.placement.<op>`
    pub fn placement(&self, op: PlacementOp) -> String {
        format!("{}.placement.{}", self.root, op.as_str())
    }

    /// `<prefix>.v1.events.<kind>` (kind like `model.ready`).
    pub fn event(&self, kind: &str) -> String {
        format!("{}.events.{kind}", self.root)
    }

    /// `<prefix>.v1.events.>`: every event.
    pub fn events(&self) -> String {
        format!("{}.events.>", self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tokens_replace_dots_and_colons() {
        assert_eq!(
            ModelToken::new("smollm2-135m").unwrap().as_str(),
            "smollm2-135m"
        );
        assert_eq!(
            ModelToken::new("llama3.1:8b").unwrap().as_str(),
            "llama3_1_8b"
        );
        assert_eq!(
            ModelToken::new("Qwen/Qwen2.5-7B").unwrap().as_str(),
            "Qwen/Qwen2_5-7B"
        );
    }

    #[test]
    fn forbidden_ids_are_refused() {
        assert_eq!(
            ModelToken::new(""),
            Err(SubjectError::Empty { what: "model id" })
        );
        for bad in ["a b", "a*", "a>", "tab\there", "nl\n"] {
            assert!(
                matches!(
                    ModelToken::new(bad),
                    Err(SubjectError::ForbiddenChar { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            ModelToken::new(&"x".repeat(MAX_MODEL_ID_LEN + 1)),
            Err(SubjectError::TooLong { .. })
        ));
    }

    #[test]
    fn subjects_follow_the_design() {
        let s = Subjects::default();
        let token = ModelToken::new("m.1").unwrap();
        assert_eq!(s.heartbeat("n1"), "cortex.v1.heartbeat.n1");
        assert_eq!(s.infer(&token), "cortex.v1.infer.m_1");
        assert_eq!(
            s.neuron("n1", NeuronOp::Cancel),
            "cortex.v1.neuron.n1.cancel"
        );
        assert_eq!(
            s.placement(PlacementOp::Ensure),
            "cortex.v1.placement.ensure"
        );
        assert_eq!(s.event("model.ready"), "cortex.v1.events.model.ready");
        assert_eq!(
            Subjects::new("acme.cortex").unwrap().root(),
            "acme.cortex.v1"
        );
        assert!(Subjects::new("a..b").is_err());
        assert!(Subjects::new("a*").is_err());
    }

    proptest! {
        /// Any accepted id gives a token that is one subject token and a valid KV key.
        #[test]
        fn accepted_ids_give_safe_tokens(id in "\\PC{1,40}") {
            if let Ok(token) = ModelToken::new(&id) {
                let t = token.as_str();
                prop_assert!(!t.is_empty());
                prop_assert!(t.chars().all(|c| c.is_ascii_alphanumeric() || "_-/=".contains(c)));
            }
        }
    }
}
