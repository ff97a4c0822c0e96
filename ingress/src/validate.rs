//! Checks the APIs share: each failure names its field.

use cortex_schemas::{ResponseFormat, ToolChoice, ToolDefinition};
use serde_json::Value;

use crate::error::ApiError;

/// A token count that must be at least 1 (and fit the wire's `u32`).
pub fn max_tokens(param: &str, value: Option<i64>) -> Result<Option<u32>, ApiError> {
    match value {
        None => Ok(None),
        Some(n) if n >= 1 => u32::try_from(n)
            .map(Some)
            .map_err(|_| ApiError::invalid(param, format!("{param}: {n} is too large"))),
        Some(n) => Err(ApiError::invalid(
            param,
            format!("{param}: must be at least 1, got {n}"),
        )),
    }
}

/// A number within `[min, max]`.
pub fn range(param: &str, value: Option<f64>, min: f64, max: f64) -> Result<Option<f64>, ApiError> {
    match value {
        Some(v) if !(min..=max).contains(&v) || !v.is_finite() => Err(ApiError::invalid(
            param,
            format!("{param}: must be between {min} and {max}, got {v}"),
        )),
        other => Ok(other),
    }
}

/// `top_p` in (0, 1].
pub fn top_p(value: Option<f64>) -> Result<Option<f64>, ApiError> {
    match value {
        Some(v) if !(v > 0.0 && v <= 1.0) => Err(ApiError::invalid(
            "top_p",
            format!("top_p: must be greater than 0 and at most 1, got {v}"),
        )),
        other => Ok(other),
    }
}

/// The model name: present and non-empty.
pub fn model(model: &str) -> Result<(), ApiError> {
    if model.trim().is_empty() {
        return Err(ApiError::invalid("model", "model: must name a model"));
    }
    cortex_bus::ModelToken::new(model)
        .map_err(|e| ApiError::invalid("model", format!("model: {e}")))?;
    Ok(())
}

/// Stop sequences: at most 16 (the wire takes any number; this bounds the
/// work a request can ask of the stop matcher), none empty.
pub fn stops(param: &str, stops: Vec<String>) -> Result<Vec<String>, ApiError> {
    if stops.len() > 16 {
        return Err(ApiError::invalid(
            param,
            format!("{param}: at most 16 sequences, got {}", stops.len()),
        ));
    }
    if stops.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            param,
            format!("{param}: sequences must not be empty"),
        ));
    }
    Ok(stops)
}

/// A `tool_choice` that names one tool (`param` is where the name is):
/// it must be one of `tools`. `required` / `any` needs tools at all.
pub fn tool_choice(
    param: &str,
    choice: ToolChoice,
    tools: &[ToolDefinition],
) -> Result<ToolChoice, ApiError> {
    match &choice {
        ToolChoice::Function { name } if !tools.iter().any(|t| &t.name == name) => Err(
            ApiError::invalid(param, format!("{param}: no tool named {name:?}")),
        ),
        ToolChoice::Required if tools.is_empty() => Err(ApiError::invalid(
            "tool_choice",
            "tool_choice: asking for a tool call needs tools",
        )),
        _ => Ok(choice),
    }
}

/// A response format by its `type` (`param`); `json_schema` reads its
/// `(name, schema, strict)` from `schema`, or names `schema_param` missing.
pub fn response_format(
    param: &str,
    kind: &str,
    schema_param: &str,
    schema: impl FnOnce() -> Option<(String, Value, bool)>,
) -> Result<ResponseFormat, ApiError> {
    match kind {
        "text" => Ok(ResponseFormat::Text),
        "json_object" => Ok(ResponseFormat::JsonObject),
        "json_schema" => {
            let (name, schema, strict) = schema().ok_or_else(|| {
                ApiError::invalid(schema_param, format!("{schema_param}: missing"))
            })?;
            Ok(ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            })
        }
        other => Err(ApiError::invalid(
            param,
            format!("{param}: unknown {other:?} (text, json_object, json_schema)"),
        )),
    }
}
