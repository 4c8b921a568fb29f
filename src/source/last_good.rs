//! The last good text of each config file, kept in the state directory, so a file found
//! broken when pilotfish starts (truncated mid-document by a crash, a half-finished copy)
//! brings back the objects it held rather than an empty set.
//!
//! A file is saved whenever it parses and validates without an error; at start, a file
//! with errors takes, for every object its broken text no longer yields, that object from
//! its last good text. While running, the index already keeps serving the last good
//! version of a broken object (see `model::index`).

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
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = p.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p)
    }

    pub fn load(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.path(file)).ok()
    }

    pub fn forget(&self, file: &str) {
        let _ = std::fs::remove_file(self.path(file));
    }
}
