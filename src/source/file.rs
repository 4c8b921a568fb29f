//! File source: reads a directory tree of YAML/JSON and watches it for changes.
use anyhow::Context;
use std::path::{Path, PathBuf};

/// Extensions read as config.
pub fn is_config_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// A config file's path and its text, or why it could not be read (the file then reports
/// that error and keeps serving what it held).
pub type FileRead = (String, Result<String, String>);

/// Read one config file: a regular file (a FIFO would block the reader forever), at most
/// `api::MAX_FILE_BYTES` (+1, so the parser reports an oversized one), UTF-8 text.
pub fn read_config(p: &Path) -> std::io::Result<Result<String, String>> {
    use std::io::Read;
    let md = std::fs::metadata(p)?;
    if !md.is_file() {
        return Ok(Err("not a regular file".into()));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(p)?
        .take(crate::api::MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    }))
}

/// Read every config file under the given paths (files or directories), sorted by path.
/// A file that cannot be read as text comes back with the reason, not as a failure of the
/// whole read.
pub fn read_tree(paths: &[PathBuf]) -> anyhow::Result<Vec<FileRead>> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files).with_context(|| format!("reading {}", p.display()))?;
    }
    files.sort();
    files.dedup();
    let mut out = Vec::new();
    for f in files {
        let text = match read_config(&f) {
            Ok(t) => t,
            Err(e) => Err(format!("cannot read: {e}")),
        };
        out.push((f.display().to_string(), text));
    }
    Ok(out)
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let md = std::fs::metadata(p)?;
    if md.is_dir() {
        for e in std::fs::read_dir(p)? {
            let e = e?;
            let path = e.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
            {
                continue;
            }
            if e.file_type()?.is_dir() {
                collect(&path, out)?;
            } else if is_config_file(&path) {
                out.push(path);
            }
        }
    } else {
        out.push(p.to_path_buf());
    }
    Ok(())
}

/// What reading the paths a watcher reported found: files to apply (path, text) and config
/// files that are gone.
#[derive(Debug, Default, PartialEq)]
pub struct Changed {
    pub files: Vec<FileRead>,
    pub gone: Vec<String>,
}

/// Reads only the paths a watcher reported (an edit touches one file; reading the whole
/// tree of thousands of files again took longer than the rest of the reload). None when
/// the whole tree must be read again: a directory was created, renamed or removed.
pub fn read_changed(root: &Path, paths: &std::collections::BTreeSet<PathBuf>) -> Option<Changed> {
    let mut out = Changed::default();
    for p in paths {
        // Hidden files are skipped, as by `read_tree`: editors' temp files. Anything else
        // hidden (Kubernetes swaps a ConfigMap volume's `..data` link) means a full read.
        let rel = p.strip_prefix(root).ok()?;
        let hidden = rel
            .components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with('.'));
        if hidden {
            let name = p.file_name()?.to_string_lossy();
            let temp = [".tmp", ".swp", "~"].iter().any(|e| name.ends_with(e));
            if temp || is_config_file(p) {
                continue;
            }
            return None;
        }
        if !is_config_file(p) {
            // Maybe a directory (new, renamed or removed): read everything.
            return None;
        }
        match std::fs::metadata(p) {
            Ok(md) if md.is_dir() => return None,
            Ok(_) => match read_config(p) {
                Ok(text) => out.files.push((p.display().to_string(), text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    out.gone.push(p.display().to_string())
                }
                Err(_) => return None,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                out.gone.push(p.display().to_string())
            }
            Err(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn read_changed_reads_reported_files_and_falls_back_for_anything_else() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::write(root.join("a.yaml"), "a: 1").unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        let set = |ps: &[&str]| -> BTreeSet<PathBuf> { ps.iter().map(|p| root.join(p)).collect() };
        let show = |p: &str| root.join(p).display().to_string();
        // An edit through an editor's temp file, and a removed file.
        let c = read_changed(root, &set(&["a.yaml", ".a.yaml.tmp", "gone.yml"])).unwrap();
        assert_eq!(c.files, vec![(show("a.yaml"), Ok("a: 1".to_string()))]);
        assert_eq!(c.gone, vec![show("gone.yml")]);
        // Directories, a ConfigMap volume's link swap, paths outside the root: whole tree.
        assert_eq!(read_changed(root, &set(&["sub"])), None);
        assert_eq!(read_changed(root, &set(&["..data"])), None);
        assert_eq!(read_changed(root, &set(&["removed-dir"])), None);
        let outside: BTreeSet<PathBuf> = [PathBuf::from("/elsewhere/x.yaml")].into();
        assert_eq!(read_changed(root, &outside), None);
    }
}
