//! `models.toml`: the operator's catalogue. Each `[[model]]` table becomes
//! a `ModelProfile`; everything is checked before anything is published,
//! and an error names the line and the field.
//!
//! ```toml
//! [[model]]
//! id = "smollm2-135m"
//! aliases = ["smollm2"]
//! kind = "chat"                 # or "embedding"
//! source = "store:smollm2.gguf" # a path on the neurons, hf:org/name[@rev]:file, store:name
//! context_length = 2048
//! vram_mb = 300                 # estimated when absent
//! priority = 0                  # higher survives eviction longer
//! pinned = false                # or true, or ["neuron-a", "neuron-b"]
//! min_replicas = 0
//! max_replicas = 1
//! idle_ttl = "10m"
//! spill_after = "5s"           # saturated this long: one more replica (to max_replicas)
//! max_concurrency = 4
//! default_max_tokens = 512
//! max_tokens_over_window = "clamp" # or "refuse": a max_tokens past the window
//! [model.sampling]
//! temperature = 0.7
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use cortex_bus::subject::validate_token;
use cortex_bus::ModelToken;
use cortex_schemas::{ModelFormat, ModelKind, ModelProfile, OverWindow, Pinned, SamplingParams};
use serde::Deserialize;

/// What is wrong with a catalogue file, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct CatalogError {
    pub file: String,
    /// 1-based; 0 when the error is about the whole file.
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    model: Vec<toml::Spanned<ModelEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    id: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    kind: ModelKind,
    source: String,
    format: Option<ModelFormat>,
    context_length: Option<u32>,
    vram_mb: Option<u64>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    pinned: Pinned,
    #[serde(default)]
    min_replicas: u32,
    max_replicas: Option<u32>,
    idle_ttl: Option<String>,
    spill_after: Option<String>,
    max_concurrency: Option<u32>,
    prefix_cache_mb: Option<u64>,
    chat_template: Option<String>,
    #[serde(default)]
    sampling: SamplingParams,
    default_max_tokens: Option<u32>,
    #[serde(default)]
    max_tokens_over_window: OverWindow,
}

/// Reads and checks `path`.
pub fn read(path: &Path) -> Result<Vec<ModelProfile>, CatalogError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| CatalogError {
        file: file.clone(),
        line: 0,
        message: format!("cannot read: {e}"),
    })?;
    parse(&file, &text)
}

/// Checks catalogue `text` (named `file` in errors).
pub fn parse(file: &str, text: &str) -> Result<Vec<ModelProfile>, CatalogError> {
    let error = |line: usize, message: String| CatalogError {
        file: file.to_string(),
        line,
        message,
    };
    let parsed: CatalogFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |span| line_of(text, span.start));
        error(line, e.message().to_string())
    })?;
    let mut profiles = Vec::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut tokens: BTreeMap<ModelToken, String> = BTreeMap::new();
    for spanned in parsed.model {
        let line = line_of(text, spanned.span().start);
        let entry = spanned.into_inner();
        let profile = to_profile(entry).map_err(|message| error(line, message))?;
        let token = ModelToken::new(&profile.id).map_err(|e| error(line, format!("id: {e}")))?;
        if let Some(first) = ids.get(&profile.id) {
            return Err(error(
                line,
                format!("id: {:?} is already declared on line {first}", profile.id),
            ));
        }
        if let Some(other) = tokens.get(&token) {
            return Err(error(
                line,
                format!(
                    "id: {:?} maps to the subject token {token}, as {other:?} does; rename one",
                    profile.id
                ),
            ));
        }
        ids.insert(profile.id.clone(), line);
        tokens.insert(token, profile.id.clone());
        profiles.push((line, profile));
    }
    // Aliases may not shadow an id or another alias.
    let mut names: HashMap<&str, &str> = profiles
        .iter()
        .map(|(_, p)| (p.id.as_str(), p.id.as_str()))
        .collect();
    for (line, profile) in &profiles {
        for alias in &profile.aliases {
            if let Some(owner) = names.insert(alias, &profile.id) {
                return Err(error(
                    *line,
                    format!("aliases: {alias:?} already names {owner:?}"),
                ));
            }
        }
    }
    Ok(profiles.into_iter().map(|(_, p)| p).collect())
}

fn to_profile(entry: ModelEntry) -> Result<ModelProfile, String> {
    ModelToken::new(&entry.id).map_err(|e| format!("id: {e}"))?;
    for alias in &entry.aliases {
        ModelToken::new(alias).map_err(|e| format!("aliases: {e}"))?;
    }
    let source = entry.source.trim().to_string();
    if source.is_empty() {
        return Err("source: empty".into());
    }
    if let Some(name) = source.strip_prefix("store:") {
        cortex_bus::objects::validate_name(name).map_err(|e| format!("source: {e}"))?;
    }
    if let Pinned::Neurons(neurons) = &entry.pinned {
        for neuron in neurons {
            validate_token("neuron id", neuron).map_err(|e| format!("pinned: {e}"))?;
        }
    }
    let max_replicas = entry.max_replicas.unwrap_or(entry.min_replicas.max(1));
    if max_replicas == 0 {
        return Err("max_replicas: must be at least 1".into());
    }
    if entry.min_replicas > max_replicas {
        return Err(format!(
            "min_replicas: {} is more than max_replicas ({max_replicas})",
            entry.min_replicas
        ));
    }
    if entry.max_concurrency == Some(0) {
        return Err("max_concurrency: must be at least 1".into());
    }
    if entry.context_length == Some(0) {
        return Err("context_length: must be at least 1".into());
    }
    let idle_ttl_ms = match &entry.idle_ttl {
        None => None,
        Some(text) => {
            let ttl: Duration = humantime::parse_duration(text)
                .map_err(|e| format!("idle_ttl: {text:?} is not a duration ({e})"))?;
            if ttl < Duration::from_secs(1) {
                return Err(format!("idle_ttl: {text:?} is under one second"));
            }
            Some(ttl.as_millis() as u64)
        }
    };
    let spill_after_ms = match &entry.spill_after {
        None => None,
        Some(text) => {
            let after: Duration = humantime::parse_duration(text)
                .map_err(|e| format!("spill_after: {text:?} is not a duration ({e})"))?;
            Some(after.as_millis() as u64)
        }
    };
    Ok(ModelProfile {
        id: entry.id,
        aliases: entry.aliases,
        kind: entry.kind,
        source,
        format: entry.format,
        context_length: entry.context_length,
        vram_mb: entry.vram_mb,
        priority: entry.priority,
        pinned: entry.pinned,
        min_replicas: entry.min_replicas,
        max_replicas,
        idle_ttl_ms,
        spill_after_ms,
        max_concurrency: entry.max_concurrency,
        prefix_cache_mb: entry.prefix_cache_mb,
        chat_template: entry.chat_template,
        sampling: entry.sampling,
        default_max_tokens: entry.default_max_tokens,
        max_tokens_over_window: entry.max_tokens_over_window,
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[model]]
id = "smollm2-135m"
aliases = ["smollm2"]
source = "store:smollm2.gguf"
idle_ttl = "10m"
pinned = ["n1"]
[model.sampling]
temperature = 0.5

[[model]]
id = "minilm"
kind = "embedding"
source = "/models/minilm"
min_replicas = 2
"#;

    fn fails(text: &str) -> CatalogError {
        parse("models.toml", text).expect_err("should be refused")
    }

    #[test]
    fn a_good_file_gives_profiles() {
        let profiles = parse("models.toml", GOOD).unwrap();
        assert_eq!(profiles.len(), 2);
        assert_eq!(profiles[0].idle_ttl_ms, Some(600_000));
        assert_eq!(profiles[0].sampling.temperature, Some(0.5));
        assert_eq!(profiles[0].pinned, Pinned::Neurons(vec!["n1".into()]));
        assert_eq!(profiles[1].kind, ModelKind::Embedding);
        assert_eq!((profiles[1].min_replicas, profiles[1].max_replicas), (2, 2));
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = fails("[[model]]\nid = \"a\"\nsource = \"x\"\nidle_ttl = \"soon\"\n");
        assert_eq!(e.line, 1);
        assert!(e.message.starts_with("idle_ttl:"), "{e}");
        let e = fails("[[model]]\nid = \"a\"\nsource = \"x\"\nvram = 3\n");
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("vram"), "{e}");
        let e = fails("[[model]]\nid = \"a\"\nsource = \"x\"\npriority = \"high\"\n");
        assert_eq!(e.line, 4, "{e}");
        let e = fails("[[model]]\nid = \"a b\"\nsource = \"x\"\n");
        assert!(e.message.starts_with("id:"), "{e}");
        let e =
            fails("[[model]]\nid = \"a\"\nsource = \"x\"\nmin_replicas = 3\nmax_replicas = 2\n");
        assert!(e.message.starts_with("min_replicas:"), "{e}");
        let e = fails("[[model]]\nid = \"a\"\n");
        assert!(e.message.contains("source"), "{e}");
    }

    #[test]
    fn duplicate_ids_tokens_and_aliases_are_refused() {
        let e = fails(
            "[[model]]\nid = \"a\"\nsource = \"x\"\n\n[[model]]\nid = \"a\"\nsource = \"y\"\n",
        );
        assert_eq!(e.line, 5);
        assert!(e.message.contains("line 1"), "{e}");
        let e = fails(
            "[[model]]\nid = \"a.b\"\nsource = \"x\"\n[[model]]\nid = \"a_b\"\nsource = \"y\"\n",
        );
        assert!(e.message.contains("subject token"), "{e}");
        let e = fails("[[model]]\nid = \"a\"\nsource = \"x\"\n[[model]]\nid = \"b\"\naliases = [\"a\"]\nsource = \"y\"\n");
        assert!(e.message.starts_with("aliases:"), "{e}");
        let e = fails("[[model]]\nid = \"a\"\nsource = \"store:../etc\"\n");
        assert!(e.message.starts_with("source:"), "{e}");
    }
}
