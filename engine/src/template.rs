//! Chat templates: the model's own Jinja template rendered the way
//! Hugging Face `transformers` renders it (jinja2 with `trim_blocks` and
//! `lstrip_blocks`, Python string methods, `raise_exception`,
//! `strftime_now`, and `tojson` writing JSON as Python's `json.dumps` does).

use cortex_schemas::chat::{ChatMessage, Role, ToolDefinition};
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::{json, Value as Json};

use crate::error::{EngineError, Result};

const NAME: &str = "chat";

/// A compiled chat template with the special tokens it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    source: String,
}

impl ChatTemplate {
    /// Compiles `source`; syntax errors are reported here, at load.
    pub fn new(source: &str, bos: Option<&str>, eos: Option<&str>) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| EngineError::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| EngineError::Template(format!("does not compile: {e:#}")))?;
        Ok(Self {
            env,
            bos: bos.unwrap_or_default().to_string(),
            eos: eos.unwrap_or_default().to_string(),
            source: source.to_string(),
        })
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template renders tool definitions itself.
    /// Whether this is a reasoning model's template (it writes or expects
    /// `<think>` blocks).
    pub fn reasons(&self) -> bool {
        self.source().contains("<think>")
    }

    pub fn handles_tools(&self) -> bool {
        self.source.contains("tools")
    }

    /// Renders a conversation, ending with the assistant's turn opener when
    /// `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: &[ToolDefinition],
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| EngineError::Template(e.to_string()))?;
        let messages: Vec<Json> = messages.iter().map(message_json).collect();
        let tools: Option<Vec<Json>> =
            (!tools.is_empty()).then(|| tools.iter().map(tool_json).collect());
        let ctx = minijinja::context! {
            messages => Value::from(minijinja::value::Serde(&messages)),
            tools => Value::from(minijinja::value::Serde(&tools)),
            add_generation_prompt => add_generation_prompt,
            // Qwen3's switch; absent (undefined) leaves the default.
            enable_thinking => enable_thinking.map_or(Value::UNDEFINED, Value::from),
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        };
        template.render(ctx).map_err(|e| {
            // raise_exception carries the template author's message.
            let detail = match e.kind() {
                ErrorKind::InvalidOperation => e.detail().unwrap_or_default().to_string(),
                _ => format!("{e:#}"),
            };
            EngineError::Template(detail)
        })
    }
}

/// A message as Hugging Face templates expect it.
fn message_json(message: &ChatMessage) -> Json {
    let role = match message.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let mut out = json!({"role": role, "content": message.joined_text()});
    if !message.tool_calls.is_empty() {
        out["tool_calls"] = message
            .tool_calls
            .iter()
            .map(|call| {
                let arguments = serde_json::from_str::<Json>(&call.arguments)
                    .unwrap_or_else(|_| Json::String(call.arguments.clone()));
                json!({"id": call.id, "type": "function",
                       "function": {"name": call.name, "arguments": arguments}})
            })
            .collect();
    }
    if let Some(id) = &message.tool_call_id {
        out["tool_call_id"] = json!(id);
    }
    if let Some(name) = &message.name {
        out["name"] = json!(name);
    }
    out
}

fn tool_json(tool: &ToolDefinition) -> Json {
    let mut function = json!({"name": tool.name, "parameters": tool.parameters});
    if let Some(description) = &tool.description {
        function["description"] = json!(description);
    }
    json!({"type": "function", "function": function})
}

fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

fn strftime_now(format: String) -> std::result::Result<Value, Error> {
    let now = jiff::Zoned::now();
    let mut out = String::new();
    jiff::fmt::strtime::format(format.as_str(), &now)
        .map(|s| out.push_str(&s))
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("strftime_now: {e}")))?;
    Ok(Value::from(out))
}

/// `tojson` as `transformers` defines it: `json.dumps(x, ensure_ascii=False,
/// indent=indent)`, so `", "` and `": "` separators and no HTML escaping.
fn tojson(
    value: Value,
    indent: Option<usize>,
    kwargs: Kwargs,
) -> std::result::Result<Value, Error> {
    let indent = match indent {
        Some(n) => Some(n),
        None => kwargs.get::<Option<usize>>("indent")?,
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    write_python_json(&mut out, &json, indent, sort_keys, 0);
    Ok(Value::from_safe_string(out))
}

fn write_python_json(out: &mut String, v: &Json, indent: Option<usize>, sort: bool, depth: usize) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_python_json(out, item, indent, sort, depth + 1);
            }
            newline(out, depth);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            let mut entries: Vec<(&String, &Json)> = map.iter().collect();
            if sort {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&Json::String(key.clone()).to_string());
                out.push_str(": ");
                write_python_json(out, value, indent, sort, depth + 1);
            }
            newline(out, depth);
            out.push('}');
        }
        Json::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or_default();
            if f.fract() == 0.0 && f.abs() < 1e16 {
                out.push_str(&format!("{f:.1}"));
            } else {
                out.push_str(&n.to_string());
            }
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, messages: &[ChatMessage]) -> Result<String> {
        ChatTemplate::new(source, Some("<s>"), Some("</s>"))?.render(messages, &[], true, None)
    }

    #[test]
    fn trims_blocks_and_uses_python_methods() {
        let source = "{% for m in messages %}\n  {{ m.role.upper() }}: {{ m.content.strip() }}\n{% endfor %}\n{% if add_generation_prompt %}{{ bos_token }}{% endif %}";
        let out = render(source, &[ChatMessage::text(Role::User, "  hi  ")]).unwrap();
        // As jinja2 renders it (checked with jinja2 3.1).
        assert_eq!(out, "  USER: hi\n<s>");
    }

    #[test]
    fn raise_exception_reports_the_template_message() {
        let source = "{{ raise_exception('Conversation roles must alternate') }}";
        let err = render(source, &[]).unwrap_err().to_string();
        assert!(err.contains("Conversation roles must alternate"), "{err}");
    }

    #[test]
    fn tojson_writes_like_python() {
        let env_source =
            "{{ {'b': 1, 'a': [1.0, 'é<'], 'c': {}} | tojson }}|{{ [1, 2] | tojson(indent=2) }}";
        let out = render(env_source, &[]).unwrap();
        assert_eq!(
            out,
            "{\"b\": 1, \"a\": [1.0, \"é<\"], \"c\": {}}|[\n  1,\n  2\n]"
        );
    }

    #[test]
    fn strftime_now_formats_today() {
        let out = render("{{ strftime_now('%Y') }}", &[]).unwrap();
        assert_eq!(out.len(), 4);
        assert!(out.starts_with('2'));
    }

    #[test]
    fn syntax_errors_fail_at_load() {
        assert!(ChatTemplate::new("{% for %}", None, None).is_err());
    }
}
