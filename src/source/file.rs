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

/// Read every config file under the given paths (files or directories), sorted by path.
pub fn read_tree(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files).with_context(|| format!("reading {}", p.display()))?;
    }
    files.sort();
    files.dedup();
    let mut out = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
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
