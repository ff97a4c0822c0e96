//! Memory sizes as operators write them: `512MiB`, `24GiB`, `1.5GB`,
//! `1073741824`, or a share of the machine's RAM: `75%`.

use std::fmt;
use std::str::FromStr;

/// A memory amount: absolute, or a percentage of something (system RAM).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemorySize {
    Bytes(u64),
    Percent(f64),
}

impl MemorySize {
    /// Bytes, resolving a percentage against `whole`.
    pub fn resolve(self, whole: u64) -> u64 {
        match self {
            Self::Bytes(bytes) => bytes,
            Self::Percent(pct) => (whole as f64 * pct / 100.0) as u64,
        }
    }
}

impl FromStr for MemorySize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(pct) = text.strip_suffix('%') {
            let pct: f64 = pct
                .trim()
                .parse()
                .map_err(|_| format!("{text:?} is not a percentage"))?;
            if !(pct > 0.0 && pct <= 100.0) {
                return Err(format!("{text:?}: a share must be within 0% and 100%"));
            }
            return Ok(Self::Percent(pct));
        }
        parse_bytes(text).map(Self::Bytes)
    }
}

impl fmt::Display for MemorySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(bytes) => f.write_str(&format_bytes(*bytes)),
            Self::Percent(pct) => write!(f, "{pct}%"),
        }
    }
}

/// Parses `123`, `512MiB`, `1.5 GB`, `24GiB`, `10k` (binary and decimal units).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (like 512MiB or 24GiB)"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "ti" | "tib" => 1 << 40,
        other => return Err(format!("{text:?}: unknown unit {other:?}")),
    };
    Ok((number * multiplier as f64) as u64)
}

/// `1.5 GiB`, `98.0 MiB`, `512 B`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_both_unit_systems() {
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("24 GiB").unwrap(), 24 << 30);
        assert_eq!(parse_bytes("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
        assert_eq!("75%".parse::<MemorySize>().unwrap().resolve(1000), 750);
        assert!("0%".parse::<MemorySize>().is_err());
        assert!("150%".parse::<MemorySize>().is_err());
        assert_eq!(format_bytes(98 << 20), "98.0 MiB");
    }
}
