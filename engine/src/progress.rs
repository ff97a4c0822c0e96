//! Load progress: bytes of model files read so far, shared with whoever
//! shows it (the neuron's heartbeat, `cortex up`'s progress bar).

use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes read of the bytes to read; cheap to clone and read from any thread.
#[derive(Debug, Clone, Default)]
pub struct LoadProgress {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    read: AtomicU64,
    total: AtomicU64,
}

impl LoadProgress {
    pub fn new() -> Self {
        Self::default()
    }

    /// (bytes read, bytes in total); total is 0 until known.
    pub fn get(&self) -> (u64, u64) {
        (
            self.inner.read.load(Ordering::Relaxed),
            self.inner.total.load(Ordering::Relaxed),
        )
    }

    /// Fraction done in [0, 1]; 0 while the total is unknown.
    pub fn fraction(&self) -> f64 {
        let (read, total) = self.get();
        if total == 0 {
            0.0
        } else {
            (read as f64 / total as f64).min(1.0)
        }
    }

    pub fn add_total(&self, bytes: u64) {
        self.inner.total.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_read(&self, bytes: u64) {
        self.inner.read.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A reader that counts what passes through it into a [`LoadProgress`].
#[derive(Debug)]
pub(crate) struct CountingReader<R> {
    inner: R,
    progress: LoadProgress,
}

impl<R> CountingReader<R> {
    pub(crate) fn new(inner: R, progress: LoadProgress) -> Self {
        Self { inner, progress }
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add_read(n as u64);
        Ok(n)
    }
}

impl<R: Seek> Seek for CountingReader<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes_read() {
        let progress = LoadProgress::new();
        progress.add_total(10);
        let mut reader = CountingReader::new(std::io::Cursor::new(vec![0u8; 10]), progress.clone());
        let mut buf = [0u8; 4];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(progress.get(), (4, 10));
        assert!((progress.fraction() - 0.4).abs() < 1e-9);
    }
}
