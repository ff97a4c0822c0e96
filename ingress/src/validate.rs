//! Checks both dialects share: each failure names its field.

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
