//! The metadata of a GGUF file (format versions 1 to 3), read from its
//! header alone: the key-value table that precedes the tensor table.
//! Only numbers and strings are kept; arrays (the tokenizer's vocabulary,
//! arrays of arrays) are skipped without being read into memory. Every
//! length is checked against the file's size, so a corrupt or hostile
//! header is refused with an error rather than an allocation. The engine
//! reads a header with this before it hands the file to candle.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// One metadata value that the footprint needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Uint(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
    /// An array, skipped: its element count.
    Array(u64),
}

/// Why a header cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("reading the GGUF header: {0}")]
    Io(#[from] std::io::Error),
    /// Not GGUF, or a version this reader does not know.
    #[error("not a GGUF header this reader knows: {0}")]
    Format(String),
}

/// The longest key or string value read (longer ones are a corrupt file;
/// candle's limit, and a string is read only once the file is known to
/// hold it).
const MAX_STRING: u64 = 1 << 30;
/// The most metadata entries a header may claim.
const MAX_ENTRIES: u64 = 1 << 20;
/// How deep arrays of arrays may nest.
const MAX_DEPTH: usize = 64;

/// Reads the metadata table of the GGUF file at `path`.
pub fn read(path: &Path) -> Result<HashMap<String, Value>, HeaderError> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut reader = Header {
        inner: BufReader::new(file),
        left: size,
        short_lengths: false,
    };
    let magic = reader.bytes::<4>()?;
    if &magic != b"GGUF" {
        return Err(HeaderError::Format("no GGUF magic".into()));
    }
    let version = reader.u32()?;
    if !(1..=3).contains(&version) {
        return Err(HeaderError::Format(format!("version {version}")));
    }
    // Version 1 wrote counts and lengths in 32 bits.
    reader.short_lengths = version == 1;
    let _tensors = reader.length()?;
    let entries = reader.length()?;
    if entries > MAX_ENTRIES {
        return Err(HeaderError::Format(format!("{entries} metadata entries")));
    }
    let mut table = HashMap::new();
    for _ in 0..entries {
        let key = reader.string()?;
        let kind = reader.u32()?;
        let value = reader.value(kind)?;
        table.insert(key, value);
    }
    Ok(table)
}

struct Header {
    inner: BufReader<File>,
    /// Bytes of the file not read yet.
    left: u64,
    /// Counts and lengths are `u32` (version 1), not `u64`.
    short_lengths: bool,
}

impl Header {
    fn take(&mut self, n: u64) -> Result<(), HeaderError> {
        self.left = self
            .left
            .checked_sub(n)
            .ok_or_else(|| HeaderError::Format("a length past the end of the file".into()))?;
        Ok(())
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], HeaderError> {
        self.take(N as u64)?;
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32, HeaderError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, HeaderError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    /// A count or a length.
    fn length(&mut self) -> Result<u64, HeaderError> {
        if self.short_lengths {
            Ok(u64::from(self.u32()?))
        } else {
            self.u64()
        }
    }

    fn skip(&mut self, n: u64) -> Result<(), HeaderError> {
        self.take(n)?;
        let n = i64::try_from(n).map_err(|_| HeaderError::Format("a huge skip".into()))?;
        self.inner.seek_relative(n)?;
        Ok(())
    }

    fn string(&mut self) -> Result<String, HeaderError> {
        let len = self.length()?;
        if len > MAX_STRING {
            return Err(HeaderError::Format(format!("a string of {len} bytes")));
        }
        self.take(len)?;
        let mut buf = vec![0u8; len as usize];
        self.inner.read_exact(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// The size of one element of a fixed-size type.
    fn width(kind: u32) -> Option<u64> {
        match kind {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        }
    }

    /// Skips an array's elements (its element type and count first);
    /// returns the count.
    fn skip_array(&mut self, depth: usize) -> Result<u64, HeaderError> {
        if depth >= MAX_DEPTH {
            return Err(HeaderError::Format(format!(
                "arrays nested more than {MAX_DEPTH} deep"
            )));
        }
        let element = self.u32()?;
        let count = self.length()?;
        match (Self::width(element), element) {
            (Some(width), _) => self.skip(count.saturating_mul(width))?,
            (None, 8) => {
                for _ in 0..count {
                    let len = self.length()?;
                    self.skip(len)?;
                }
            }
            (None, 9) => {
                for _ in 0..count {
                    self.skip_array(depth + 1)?;
                }
            }
            (None, _) => return Err(HeaderError::Format(format!("an array of type {element}"))),
        }
        Ok(count)
    }

    fn value(&mut self, kind: u32) -> Result<Value, HeaderError> {
        Ok(match kind {
            0 => Value::Uint(u64::from(self.bytes::<1>()?[0])),
            1 => Value::Int(i64::from(self.bytes::<1>()?[0] as i8)),
            2 => Value::Uint(u64::from(u16::from_le_bytes(self.bytes()?))),
            3 => Value::Int(i64::from(i16::from_le_bytes(self.bytes()?))),
            4 => Value::Uint(u64::from(self.u32()?)),
            5 => Value::Int(i64::from(i32::from_le_bytes(self.bytes()?))),
            6 => Value::Float(f64::from(f32::from_le_bytes(self.bytes()?))),
            7 => Value::Bool(self.bytes::<1>()?[0] != 0),
            8 => Value::Text(self.string()?),
            9 => Value::Array(self.skip_array(0)?),
            10 => Value::Uint(self.u64()?),
            11 => Value::Int(i64::from_le_bytes(self.bytes()?)),
            12 => Value::Float(f64::from_le_bytes(self.bytes()?)),
            other => return Err(HeaderError::Format(format!("value type {other}"))),
        })
    }
}
