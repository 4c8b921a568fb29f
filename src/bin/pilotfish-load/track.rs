//! Convergence bookkeeping: every config change is an event (slot, seq) written at a known
//! instant and expected on a known set of streams; a stream reaches it when it ACKs (or
//! NACKs) a response whose content shows that seq or a later one for that slot.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// What an event changes: the marker of service k's routes, or its churned endpoint.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    Route(u32),
    Ep(u32),
}

/// A fixed-size bit set of stream indices.
#[derive(Clone, Debug, Default)]
pub struct Bits(Vec<u64>);

impl Bits {
    pub fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    pub fn set(&mut self, i: usize) {
        if i / 64 >= self.0.len() {
            self.0.resize(i / 64 + 1, 0);
        }
        self.0[i / 64] |= 1 << (i % 64);
    }
    pub fn clear(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w &= !(1 << (i % 64));
        }
    }
    pub fn has(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    /// Clears i; whether it was set.
    pub fn take(&mut self, i: usize) -> bool {
        let had = self.has(i);
        self.clear(i);
        had
    }
    pub fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(wi, w)| {
            (0..64)
                .filter(move |b| w & (1 << b) != 0)
                .map(move |b| wi * 64 + b)
        })
    }
}

struct Ev {
    at: Instant,
    pending: Bits,
    outstanding: usize,
    last: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    events: HashMap<(Slot, u32), Ev>,
    /// Events of the current scenario, in registration order.
    current: Vec<(Slot, u32)>,
    open: usize,
    /// Per (event, stream): ms from the write to the stream's ACK.
    lat_ms: Vec<f32>,
    acked: u64,
    nacked: u64,
}

#[derive(Default)]
pub struct Tracker {
    inner: Mutex<Inner>,
}

/// What a finished scenario's events looked like.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub events: usize,
    /// Per (event, stream) latencies in ms, sorted.
    pub lat_ms: Vec<f32>,
    /// Per event: ms from the write to the last stream's ACK (only converged events).
    pub last_ms: Vec<f32>,
    pub unconverged_events: usize,
}

/// A stream's view of which seq it has reached per slot (seq + 1; 0 = not seen yet).
pub struct Seen {
    pub route: Vec<u32>,
    pub ep: Vec<u32>,
    pub routes_seen: usize,
}

impl Seen {
    pub fn new(slots: usize) -> Seen {
        Seen {
            route: vec![0; slots],
            ep: vec![0; slots],
            routes_seen: 0,
        }
    }
    pub fn get(&self, s: Slot) -> Option<u32> {
        let v = match s {
            Slot::Route(k) => self.route.get(k as usize),
            Slot::Ep(k) => self.ep.get(k as usize),
        };
        v.copied().filter(|v| *v > 0).map(|v| v - 1)
    }
    fn set(&mut self, s: Slot, seq: u32) {
        let (v, k) = match s {
            Slot::Route(k) => (&mut self.route, k),
            Slot::Ep(k) => (&mut self.ep, k),
        };
        let i = k as usize;
        if i >= v.len() {
            v.resize(i + 1, 0);
        }
        let first = v[i] == 0;
        v[i] = seq + 1;
        if first && matches!(s, Slot::Route(_)) {
            self.routes_seen += 1;
        }
    }
}

impl Tracker {
    /// A change written at `at`, expected on every stream in `streams`.
    pub fn register(&self, slot: Slot, seq: u32, at: Instant, streams: &Bits) {
        let mut g = self.inner.lock().unwrap();
        let outstanding = streams.count();
        if outstanding > 0 {
            g.open += 1;
        }
        g.events.insert(
            (slot, seq),
            Ev {
                at,
                pending: streams.clone(),
                outstanding,
                last: None,
            },
        );
        g.current.push((slot, seq));
    }

    /// Moves the write time of events registered before a multi-file write completed.
    pub fn set_time(&self, events: &[(Slot, u32)], at: Instant) {
        let mut g = self.inner.lock().unwrap();
        for e in events {
            if let Some(ev) = g.events.get_mut(e) {
                ev.at = at;
            }
        }
    }

    /// A stream ACKed (or NACKed) a response showing `obs` (slot, seq) at `now`.
    pub fn observe(
        &self,
        stream: usize,
        seen: &mut Seen,
        obs: &[(Slot, u32)],
        now: Instant,
        acked: bool,
    ) {
        let advanced: Vec<(Slot, u32, u32)> = obs
            .iter()
            .filter_map(|&(s, q)| match seen.get(s) {
                Some(old) if old >= q => None,
                Some(old) => Some((s, old + 1, q)),
                None => Some((s, 0, q)),
            })
            .collect();
        if advanced.is_empty() {
            return;
        }
        let mut g = self.inner.lock().unwrap();
        let g = &mut *g;
        for &(s, from, to) in &advanced {
            seen.set(s, to);
            for q in from.max(1)..=to {
                let Some(ev) = g.events.get_mut(&(s, q)) else {
                    continue;
                };
                if !ev.pending.take(stream) {
                    continue;
                }
                ev.outstanding -= 1;
                ev.last = Some(now);
                if ev.outstanding == 0 {
                    g.open -= 1;
                }
                g.lat_ms
                    .push(now.saturating_duration_since(ev.at).as_secs_f32() * 1e3);
                if acked {
                    g.acked += 1;
                } else {
                    g.nacked += 1;
                }
            }
        }
    }

    /// Events still waiting for some stream.
    pub fn open(&self) -> usize {
        self.inner.lock().unwrap().open
    }

    /// Streams some open event still waits for.
    pub fn laggards(&self) -> Vec<usize> {
        let g = self.inner.lock().unwrap();
        let mut b = Bits::default();
        for ev in g.events.values().filter(|e| e.outstanding > 0) {
            for i in ev.pending.iter() {
                b.set(i);
            }
        }
        b.iter().collect()
    }

    /// Ends the current scenario: its figures; open events stop being waited for.
    pub fn finish(&self) -> Outcome {
        let mut g = self.inner.lock().unwrap();
        let current = std::mem::take(&mut g.current);
        let mut last_ms = Vec::new();
        let mut unconverged = 0;
        for e in &current {
            if let Some(ev) = g.events.get_mut(e) {
                if ev.outstanding > 0 {
                    unconverged += 1;
                    ev.outstanding = 0;
                    ev.pending = Bits::default();
                } else if let Some(l) = ev.last {
                    last_ms.push(l.saturating_duration_since(ev.at).as_secs_f32() * 1e3);
                }
            }
        }
        g.open = 0;
        let mut lat_ms = std::mem::take(&mut g.lat_ms);
        lat_ms.sort_by(f32::total_cmp);
        last_ms.sort_by(f32::total_cmp);
        let out = Outcome {
            events: current.len(),
            lat_ms,
            last_ms,
            unconverged_events: unconverged,
        };
        g.acked = 0;
        g.nacked = 0;
        out
    }
}

/// The q-quantile (0..=1) of sorted values (nearest rank).
pub fn quantile(sorted: &[f32], q: f64) -> Option<f32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}
