//! The single writer of config state. Sources call `apply_file` / `remove_file` / `reset`;
//! `snapshot` builds the next `World`. A broken document never removes what was served:
//! the last good version of each object stays until a good one replaces it.

use super::*;
use crate::api::ConfigError;
use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Default)]
struct FileState {
    keys: BTreeSet<ObjectKey>,
    errors: Vec<ConfigError>,
    /// Objects refused because another file defines them; they take over if it goes.
    dups: Vec<Resource>,
}

#[derive(Default)]
pub struct Index {
    mesh: MeshConfig,
    files: BTreeMap<String, FileState>,
    /// Latest version of each object that parsed and validated.
    objects: BTreeMap<ObjectKey, Arc<Resource>>,
    /// Last version of each object that also passed cross-reference checks.
    accepted: BTreeMap<ObjectKey, Arc<Resource>>,
    /// The file each served object comes from (the one that defined it first).
    owners: HashMap<ObjectKey, String>,
    version: u64,
    /// JSON Web Key Sets fetched for RequestAuthentication `jwksUri`s.
    jwks: BTreeMap<String, Result<Arc<str>, String>>,
}

impl Index {
    pub fn new(mesh: MeshConfig) -> Index {
        Index {
            mesh,
            ..Default::default()
        }
    }

    /// Replace the fetched key sets; true when they differ from the current ones.
    pub fn set_jwks(&mut self, jwks: BTreeMap<String, Result<Arc<str>, String>>) -> bool {
        let changed = jwks != self.jwks;
        self.jwks = jwks;
        changed
    }

    /// Replace what `file` contributes with its newly parsed content.
    pub fn apply_file(
        &mut self,
        file: &str,
        resources: Vec<Resource>,
        mut errors: Vec<ConfigError>,
    ) {
        let old_keys = self
            .files
            .get(file)
            .map(|f| f.keys.clone())
            .unwrap_or_default();
        let mut keys = BTreeSet::new();
        let mut dups = Vec::new();
        for r in resources {
            let owner = self.owner_of(&r.key, file);
            if let Some(other) = owner {
                dups.push(r.clone());
                errors.push(ConfigError {
                    file: file.to_string(),
                    object: r.key.to_string(),
                    field: "metadata.name".into(),
                    reason: format!("duplicate object: already defined in {other}"),
                });
                continue;
            }
            if !keys.insert(r.key.clone()) {
                errors.push(ConfigError {
                    file: file.to_string(),
                    object: r.key.to_string(),
                    field: "metadata.name".into(),
                    reason: "duplicate object: defined twice in this file".into(),
                });
                continue;
            }
            self.owners.insert(r.key.clone(), file.to_string());
            self.objects.insert(r.key.clone(), Arc::new(r));
        }
        let removed: Vec<ObjectKey> = old_keys.difference(&keys).cloned().collect();
        for k in removed {
            if errors.is_empty() {
                self.objects.remove(&k);
                self.accepted.remove(&k);
                self.owners.remove(&k);
            } else {
                // The object may be one of the broken documents: keep serving it.
                keys.insert(k);
            }
        }
        self.files
            .insert(file.to_string(), FileState { keys, errors, dups });
    }

    /// The file was deleted: its objects go.
    pub fn remove_file(&mut self, file: &str) {
        let Some(st) = self.files.remove(file) else {
            return;
        };
        for k in &st.keys {
            self.objects.remove(k);
            self.accepted.remove(k);
            self.owners.remove(k);
        }
        // A duplicate another file was refused for now has no owner: that file takes over.
        let marker = format!("already defined in {file}");
        let taken = &mut self.owners;
        for (name, other) in self.files.iter_mut() {
            let (free, still): (Vec<Resource>, Vec<Resource>) = std::mem::take(&mut other.dups)
                .into_iter()
                .partition(|r| st.keys.contains(&r.key));
            other.dups = still;
            for r in free {
                let obj = r.key.to_string();
                other
                    .errors
                    .retain(|e| !(e.object == obj && e.reason.contains(&marker)));
                other.keys.insert(r.key.clone());
                taken.insert(r.key.clone(), name.clone());
                self.objects.insert(r.key.clone(), Arc::new(r));
            }
        }
    }

    /// A full relist: every file at once; files not named are removed.
    pub fn reset(&mut self, files: Vec<(String, Vec<Resource>, Vec<ConfigError>)>) {
        let names: BTreeSet<String> = files.iter().map(|(f, _, _)| f.clone()).collect();
        let gone: Vec<String> = self
            .files
            .keys()
            .filter(|f| !names.contains(*f))
            .cloned()
            .collect();
        for f in gone {
            self.remove_file(&f);
        }
        for (f, r, e) in files {
            self.apply_file(&f, r, e);
        }
    }

    /// The names of the files (sources' units) starting with `prefix`.
    pub fn file_names(&self, prefix: &str) -> Vec<String> {
        self.files
            .range(prefix.to_string()..)
            .take_while(|(f, _)| f.starts_with(prefix))
            .map(|(f, _)| f.clone())
            .collect()
    }

    fn owner_of(&self, key: &ObjectKey, except: &str) -> Option<String> {
        self.owners
            .get(key)
            .filter(|f| f.as_str() != except)
            .cloned()
    }

    /// Build the next snapshot. Objects failing cross-reference checks fall back to their
    /// last accepted version (or are left out), and the errors say so.
    pub fn snapshot(&mut self) -> World {
        self.version += 1;
        let (world, bad) = build_world(&self.objects, &self.mesh, self.version);
        let mut world = if bad.is_empty() {
            world
        } else {
            let mut objs = self.objects.clone();
            for (k, _) in &bad {
                match self.accepted.get(k) {
                    Some(prev) if prev != &self.objects[k] => {
                        objs.insert(k.clone(), prev.clone());
                    }
                    _ => {
                        objs.remove(k);
                    }
                }
            }
            let (mut w2, bad2) = build_world(&objs, &self.mesh, self.version);
            for (k, _) in &bad2 {
                objs.remove(k);
            }
            let mut errors = Vec::new();
            for (k, mut e) in bad {
                e.reason = if objs.contains_key(&k) {
                    format!("{} (serving the previous version)", e.reason)
                } else {
                    format!("{} (object not served)", e.reason)
                };
                errors.push(e);
            }
            if !bad2.is_empty() {
                let (w3, _) = build_world(&objs, &self.mesh, self.version);
                w2 = w3;
            }
            w2.errors = errors;
            w2.objects = objs;
            w2
        };
        self.accepted = world.objects.clone();
        world.jwks = self.jwks.clone();
        let mut errors: Vec<ConfigError> = self
            .files
            .values()
            .flat_map(|f| f.errors.iter().cloned())
            .collect();
        errors.append(&mut world.errors);
        world.errors = errors;
        world
    }
}
