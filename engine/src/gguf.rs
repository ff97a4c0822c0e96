//! Reading GGUF files: metadata with typed errors, tensors with progress.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;
use cortex_footprint::gguf_header::Value as HeaderValue;

use crate::error::{without_backtrace, EngineError, Result};
use crate::progress::{CountingReader, LoadProgress};

/// An open GGUF file: its metadata and a reader for its tensors.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    pub(crate) reader: CountingReader<BufReader<File>>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

/// Refuses a tensor table that candle's tensor reader would trust: a shape
/// with no elements (candle then views an empty buffer as blocks through an
/// unaligned pointer) or whose element count overflows, a size that is not
/// whole blocks, or bytes past the end of the file. Found by
/// `engine/tests/fuzz_gguf.rs`.
fn check_tensors(content: &Content, file_size: u64) -> std::result::Result<(), String> {
    for (name, info) in &content.tensor_infos {
        let dims = info.shape.dims();
        let elements = dims
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(*d))
            .ok_or_else(|| format!("tensor {name}: shape {dims:?} overflows"))?;
        if elements == 0 {
            return Err(format!("tensor {name}: shape {dims:?} has no elements"));
        }
        let block = info.ggml_dtype.block_size();
        if elements % block != 0 {
            return Err(format!(
                "tensor {name}: {elements} elements are not whole blocks of {block}"
            ));
        }
        let bytes = (elements / block)
            .checked_mul(info.ggml_dtype.type_size())
            .and_then(|b| u64::try_from(b).ok());
        let end = content
            .tensor_data_offset
            .checked_add(info.offset)
            .zip(bytes)
            .and_then(|(start, bytes)| start.checked_add(bytes));
        match end {
            Some(end) if end <= file_size => {}
            _ => {
                return Err(format!(
                    "tensor {name}: its data lies past the end of the file ({file_size} bytes)"
                ))
            }
        }
    }
    Ok(())
}

impl GgufFile {
    /// Opens and parses the header; tensor bytes are read on demand and
    /// counted into `progress`.
    pub fn open(path: &Path, progress: &LoadProgress) -> Result<Self> {
        let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
        let size = file.metadata().map_err(|e| EngineError::io(path, e))?.len();
        progress.add_total(size);
        let mut reader = CountingReader::new(BufReader::new(file), progress.clone());
        let unreadable = |e: String| {
            EngineError::InvalidModel(format!("{}: not a readable GGUF file: {e}", path.display()))
        };
        // The metadata first through the bounded reader (every length
        // checked against the file), and an alignment of 0 refused by name:
        // candle divides by it, and its panic would print (with
        // RUST_BACKTRACE set, symbolise: tens of megabytes) a backtrace.
        let header =
            cortex_footprint::gguf_header::read(path).map_err(|e| unreadable(e.to_string()))?;
        if let Some(HeaderValue::Uint(0) | HeaderValue::Int(0)) = header.get("general.alignment") {
            return Err(unreadable("general.alignment is 0".into()));
        }
        // Still caught: a bad file must be an error, not a crash.
        let content =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(&mut reader)))
                .map_err(|_| unreadable("the GGUF header is malformed".into()))?
                .map_err(|e| unreadable(without_backtrace(e).to_string()))?;
        check_tensors(&content, size).map_err(unreadable)?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<String> {
        self.string("general.architecture")
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn string(&self, key: &str) -> Result<String> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.bad(key, "a string")),
            None => Err(self.missing(key)),
        }
    }

    pub fn u32(&self, key: &str) -> Result<u32> {
        self.get(key)
            .ok_or_else(|| self.missing(key))?
            .to_u32()
            .or_else(|_| {
                self.get(key)
                    .and_then(|v| v.to_u64().ok())
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| self.bad(key, "an unsigned integer"))
            })
    }

    pub fn f32(&self, key: &str) -> Result<f32> {
        self.get(key)
            .ok_or_else(|| self.missing(key))?
            .to_f32()
            .map_err(|_| self.bad(key, "a float"))
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Reads one tensor onto `device`.
    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        if !self.has_tensor(name) {
            return Err(EngineError::InvalidModel(format!(
                "{}: tensor {name} is missing",
                self.path.display()
            )));
        }
        Ok(self.content.tensor(&mut self.reader, name, device)?)
    }

    fn missing(&self, key: &str) -> EngineError {
        EngineError::InvalidModel(format!(
            "{}: metadata {key} is missing",
            self.path.display()
        ))
    }

    fn bad(&self, key: &str, what: &str) -> EngineError {
        EngineError::InvalidModel(format!(
            "{}: metadata {key} is not {what}",
            self.path.display()
        ))
    }
}
