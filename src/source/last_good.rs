//! The last good text of each config file, kept in the state directory, so a file found
//! broken when pilotfish starts (truncated mid-document by a crash, a half-finished copy)
//! brings back the objects it held rather than an empty set.
//!
//! A file is saved whenever it parses and validates without an error; at start, a file
//! with errors takes, for every object its broken text no longer yields, that object from
//! its last good text. While running, the index already keeps serving the last good
//! version of a broken object (see `model::index`).

use crate::api::{ConfigError, Resource};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub struct LastGood {
    dir: PathBuf,
}

impl LastGood {
    /// `<state dir>/last-good`, created when missing.
    pub fn new(state_dir: &Path) -> std::io::Result<LastGood> {
        let dir = state_dir.join("last-good");
        std::fs::create_dir_all(&dir)?;
        Ok(LastGood { dir })
    }

    fn path(&self, file: &str) -> PathBuf {
        let h = Sha256::digest(file.as_bytes());
        self.dir.join(format!("{}.yaml", hex::encode(&h[..12])))
    }

    /// Remember `text` as `file`'s last good content (atomically: a crash mid-write leaves
    /// the previous copy). Errors are the caller's to log; nothing else depends on them.
    pub fn save(&self, file: &str, text: &str) -> std::io::Result<()> {
        let p = self.path(file);
        if std::fs::read_to_string(&p).is_ok_and(|old| old == text) {
            return Ok(());
        }
        // Owner-only: a config file can hold Secrets.
        write_owner_only(&p, text.as_bytes())
    }

    pub fn load(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.path(file)).ok()
    }

    /// After parsing `file`: remember a clean text; or, for a file first seen broken (at
    /// start), add back from its last good text every object the broken one no longer
    /// yields, and say so in its errors.
    pub fn keep_or_mend(
        &self,
        file: &str,
        text: &str,
        first: bool,
        resources: &mut Vec<Resource>,
        errors: &mut [ConfigError],
    ) {
        if errors.is_empty() {
            if let Err(err) = self.save(file, text) {
                tracing::warn!(file = %file, error = %err, "cannot keep the last good copy of a config file");
            }
            return;
        }
        let Some(old) = first.then(|| self.load(file)).flatten() else {
            return;
        };
        let have: std::collections::HashSet<_> = resources.iter().map(|x| x.key.clone()).collect();
        let (old_r, _) = crate::api::parse_file(file, &old);
        let back: Vec<Resource> = old_r
            .into_iter()
            .filter(|x| !have.contains(&x.key))
            .collect();
        if back.is_empty() {
            return;
        }
        tracing::warn!(file = %file, objects = back.len(), "file is broken at start: serving its last good objects from the state directory");
        for e in errors.iter_mut() {
            e.reason
                .push_str(" (the file's last good objects are served from the state directory)");
        }
        resources.extend(back);
    }

    pub fn forget(&self, file: &str) {
        let _ = std::fs::remove_file(self.path(file));
    }
}

/// Writes `bytes` to `path` readable by its owner only, atomically (a temporary file
/// renamed over it: a crash mid-write leaves the previous content).
pub fn write_owner_only(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
