//! Sampling parameters and output format constraints.

use serde::{Deserialize, Serialize};

/// How the next token is drawn. Every field is optional: absent means the
/// model profile's default, then the engine's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SamplingParams {
    /// 0 means greedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, proptest(strategy = "crate::testing::opt_f64()"))]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, proptest(strategy = "crate::testing::opt_f64()"))]
    pub top_p: Option<f64>,
    /// Keep only the k most likely tokens (0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Drop tokens below this fraction of the top token's probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, proptest(strategy = "crate::testing::opt_f64()"))]
    pub min_p: Option<f64>,
    /// Makes sampling reproducible on the same engine and model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Multiplicative penalty on tokens already present (1.0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, proptest(strategy = "crate::testing::opt_f64()"))]
    pub repetition_penalty: Option<f64>,
    /// OpenAI-style additive penalty for any earlier occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, proptest(strategy = "crate::testing::opt_f64()"))]
    pub presence_penalty: Option<f64>,
    /// OpenAI-style additive penalty per earlier occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, proptest(strategy = "crate::testing::opt_f64()"))]
    pub frequency_penalty: Option<f64>,
}

/// Constraint on the shape of the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Free text (the default).
    Text,
    /// Any syntactically valid JSON object.
    JsonObject,
    /// JSON matching a schema.
    JsonSchema {
        name: String,
        #[cfg_attr(test, proptest(strategy = "crate::testing::json_value()"))]
        schema: serde_json::Value,
        #[serde(default)]
        strict: bool,
    },
}
