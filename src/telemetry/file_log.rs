//! An optional JSON access log (`--access-log-file`): one line per entry the sink took,
//! with both sides resolved as the metrics have them, rotated by size (`FILE` → `FILE.1`
//! → ... → `FILE.<keep>`, the oldest dropped). Written by the telemetry worker through a
//! buffer, flushed about every second, so a slow disk slows the worker (its queue then
//! drops and counts), never a sidecar.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

pub struct FileLog {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    out: Option<BufWriter<File>>,
    written: u64,
    flushed: Instant,
    /// Lines not written (the file could not be opened or written).
    pub failed: u64,
}

impl FileLog {
    pub fn new(path: PathBuf, max_bytes: u64, keep: u32) -> std::io::Result<FileLog> {
        let mut l = FileLog {
            path,
            max_bytes: max_bytes.max(1024),
            keep: keep.max(1),
            out: None,
            written: 0,
            flushed: Instant::now(),
            failed: 0,
        };
        l.open()?;
        Ok(l)
    }

    fn open(&mut self) -> std::io::Result<()> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.written = f.metadata().map(|m| m.len()).unwrap_or(0);
        self.out = Some(BufWriter::with_capacity(64 * 1024, f));
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut o) = self.out.take() {
            let _ = o.flush();
        }
        let name = |i: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        let _ = std::fs::remove_file(name(self.keep));
        for i in (1..self.keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        std::fs::rename(&self.path, name(1))?;
        self.open()
    }

    /// Appends one JSON line.
    pub fn write(&mut self, line: &serde_json::Value) {
        let mut text = line.to_string();
        text.push('\n');
        if self.written + text.len() as u64 > self.max_bytes
            && self.written > 0
            && self.rotate().is_err()
        {
            self.failed += 1;
            return;
        }
        match self.out.as_mut().map(|o| o.write_all(text.as_bytes())) {
            Some(Ok(())) => self.written += text.len() as u64,
            _ => self.failed += 1,
        }
        if self.flushed.elapsed().as_millis() >= 1000 {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if let Some(o) = self.out.as_mut() {
            let _ = o.flush();
        }
        self.flushed = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rotates_by_size_and_keeps_n() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access.log");
        let mut l = super::FileLog::new(p.clone(), 1024, 2).unwrap();
        for i in 0..100 {
            l.write(&serde_json::json!({"i": i, "pad": "x".repeat(40)}));
        }
        l.flush();
        let read = |s: &str| std::fs::read_to_string(dir.path().join(s)).unwrap_or_default();
        assert!(!read("access.log").is_empty());
        assert!(!read("access.log.1").is_empty());
        assert!(!read("access.log.2").is_empty());
        assert!(!dir.path().join("access.log.3").exists(), "only 2 kept");
        for f in ["access.log", "access.log.1", "access.log.2"] {
            assert!(std::fs::metadata(dir.path().join(f)).unwrap().len() <= 1024);
            for line in read(f).lines() {
                serde_json::from_str::<serde_json::Value>(line).unwrap();
            }
        }
        // The newest entry is in the current file.
        assert!(read("access.log").contains("\"i\":99"));
    }
}
