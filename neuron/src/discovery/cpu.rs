//! The CPU as a device: its name and the kernel's memory figures.

/// `/proc/meminfo`'s totals, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub available: u64,
}

impl MemInfo {
    /// Reads `/proc/meminfo`; where it is missing (not Linux), assumes
    /// 8 GiB so that a budget still resolves to something sane.
    pub fn read() -> Self {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| Self::parse(&text))
            .unwrap_or(Self {
                total: 8 << 30,
                available: 8 << 30,
            })
    }

    fn parse(text: &str) -> Option<Self> {
        let field = |name: &str| -> Option<u64> {
            let line = text.lines().find(|l| l.starts_with(name))?;
            let kib: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(kib * 1024)
        };
        let total = field("MemTotal:")?;
        let available = field("MemAvailable:").unwrap_or(total);
        Some(Self { total, available })
    }
}

/// `model name` from `/proc/cpuinfo` and the core count.
pub fn cpu_name() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{model} ({cores} cores)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parses_kernel_text() {
        let info = MemInfo::parse(
            "MemTotal:       24576000 kB\nMemFree: 1 kB\nMemAvailable:   20480000 kB\n",
        )
        .unwrap();
        assert_eq!(info.total, 24_576_000 * 1024);
        assert_eq!(info.available, 20_480_000 * 1024);
        assert!(MemInfo::read().total > 0);
        assert!(!cpu_name().is_empty());
    }
}
