//! What each connected proxy was sent and what it acknowledged: the data behind
//! `/debug/syncz` and `/debug/adsz`. Written by the stream tasks, read by the debug pages.

use crate::model::Proxy;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeStatus {
    pub sent_version: String,
    pub sent_nonce: String,
    pub sent_resources: usize,
    pub acked_version: String,
    pub nacked_version: String,
    pub nack_error: String,
    pub pushes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnStatus {
    pub conn_id: String,
    pub proxy: Proxy,
    pub peer: String,
    pub delta: bool,
    pub connected_at: u64,
    pub world_version: u64,
    pub types: BTreeMap<String, TypeStatus>,
}

#[derive(Default)]
pub struct Connections {
    next: AtomicU64,
    conns: Mutex<BTreeMap<String, Arc<Mutex<ConnStatus>>>>,
}

impl Connections {
    pub fn add(&self, proxy: Proxy, peer: String, delta: bool) -> (String, Arc<Mutex<ConnStatus>>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("{}-{n}", proxy.id);
        let st = Arc::new(Mutex::new(ConnStatus {
            conn_id: id.clone(),
            proxy,
            peer,
            delta,
            connected_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            world_version: 0,
            types: BTreeMap::new(),
        }));
        self.conns.lock().unwrap().insert(id.clone(), st.clone());
        (id, st)
    }
    pub fn remove(&self, id: &str) {
        self.conns.lock().unwrap().remove(id);
    }
    pub fn snapshot(&self) -> Vec<ConnStatus> {
        self.conns
            .lock()
            .unwrap()
            .values()
            .map(|c| c.lock().unwrap().clone())
            .collect()
    }
    pub fn len(&self) -> usize {
        self.conns.lock().unwrap().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The proxy of the newest connection whose proxy id matches.
    pub fn find_proxy(&self, id: &str) -> Option<Proxy> {
        self.conns
            .lock()
            .unwrap()
            .values()
            .rev()
            .map(|c| c.lock().unwrap().proxy.clone())
            .find(|p| p.id == id || p.id.contains(id))
    }
}
