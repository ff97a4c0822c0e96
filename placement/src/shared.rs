//! What every part of a placement replica shares: the connection, the
//! buckets, the followed views (catalogue, assignments, fleet), the lease,
//! and the per-model locks that make `ensure` single-flight within the
//! replica (across replicas, the compare-and-swap claim does it).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::kv::Store;
use async_nats::Client;
use cortex_bus::Subjects;
use cortex_schemas::{EventDetail, ModelProfile};

use crate::assignments::AssignmentsView;
use crate::catalog::CatalogView;
use crate::config::PlacementConfig;
use crate::decide::{ModelSpec, NeuronView, Settings, Snapshot};
use crate::fleet::Fleet;
use crate::lease::Leadership;
use crate::metrics::Metrics;

/// A replica's shared state.
#[derive(Debug)]
pub struct Shared {
    pub id: String,
    pub client: Client,
    pub subjects: Subjects,
    pub config: PlacementConfig,
    pub settings: Settings,
    pub catalog: CatalogView,
    pub catalog_store: Store,
    pub assignments: AssignmentsView,
    pub placements: Store,
    pub fleet: Fleet,
    pub leadership: Leadership,
    pub metrics: Metrics,
    /// Evictions since the last consolidation pass.
    pub evictions_since_defrag: AtomicU32,
    /// When this replica started.
    pub started: std::time::Instant,
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    needs: Mutex<HashMap<(String, String), u64>>,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        client: Client,
        subjects: Subjects,
        config: PlacementConfig,
        settings: Settings,
        catalog: CatalogView,
        catalog_store: Store,
        assignments: AssignmentsView,
        placements: Store,
        fleet: Fleet,
        leadership: Leadership,
    ) -> Self {
        Self {
            metrics: Metrics::new(&id),
            id,
            client,
            subjects,
            config,
            settings,
            catalog,
            catalog_store,
            assignments,
            placements,
            fleet,
            leadership,
            evictions_since_defrag: AtomicU32::new(0),
            started: std::time::Instant::now(),
            flights: Mutex::default(),
            needs: Mutex::default(),
        }
    }

    /// The lock that serialises this replica's cold starts of `model`.
    pub fn flight(&self, model: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        // An entry nobody else holds (no caller waiting or loading) is dropped.
        flights.retain(|_, lock| Arc::strong_count(lock) > 1);
        flights.entry(model.to_string()).or_default().clone()
    }

    pub fn count_eviction(&self) {
        self.evictions_since_defrag.fetch_add(1, Ordering::Relaxed);
        self.metrics.evictions.inc();
    }

    /// The world now, for decisions.
    pub fn snapshot(&self) -> Snapshot {
        let neurons: BTreeMap<String, NeuronView> = self
            .fleet
            .live()
            .iter()
            .map(|s| (s.neuron_id.clone(), NeuronView::from_status(s)))
            .collect();
        let models = self
            .catalog
            .all()
            .into_values()
            .map(|profile| {
                let need = self.need(&profile);
                (profile.id.clone(), ModelSpec { profile, need })
            })
            .collect();
        Snapshot {
            now_ms: cortex_bus::headers::unix_ms(),
            neurons,
            models,
            assignments: self.assignments.all(),
        }
    }

    /// Bytes `profile` needs: `vram_mb`, else an estimate from its files
    /// when this host can see them (weights plus one context of KV
    /// cache), else the object size for a `store:` source once
    /// [`Self::refresh_need`] learned it, else 0 (unknown: decisions then
    /// use what a neuron that loaded it reports, and the neuron's own fit
    /// check has the last word).
    pub fn need(&self, profile: &ModelProfile) -> u64 {
        if let Some(bytes) = profile.vram_bytes() {
            return bytes;
        }
        let key = (profile.id.clone(), profile.source.clone());
        if let Some(known) = self
            .needs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return *known;
        }
        let path = Path::new(&profile.source);
        if !(path.is_absolute() && path.exists()) {
            // Unknown for now; `refresh_need` may learn it for store sources.
            return 0;
        }
        let need = cortex_footprint::estimate(path, profile);
        self.needs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, need);
        need
    }

    /// Whether this replica may not know the whole fleet yet: it started
    /// less than 3 heartbeat intervals ago (2 s each until one is heard).
    pub fn fleet_unknown(&self) -> bool {
        let interval = self
            .fleet
            .longest_interval()
            .unwrap_or(std::time::Duration::from_secs(2));
        self.started.elapsed() < interval * crate::fleet::LOST_AFTER_INTERVALS
    }

    /// For a `store:` source without `vram_mb`: the object's size (all of a
    /// folder's files) plus a fifth for the KV cache, from the object
    /// store's metadata, remembered once known.
    pub async fn refresh_need(&self, profile: &ModelProfile) {
        let Some(name) = profile.source.strip_prefix("store:") else {
            return;
        };
        if profile.vram_mb.is_some() || self.need(profile) > 0 {
            return;
        }
        let js = async_nats::jetstream::new(self.client.clone());
        let Ok(store) = js.get_object_store(cortex_bus::buckets::MODELS).await else {
            return;
        };
        let mut size = match store.info(name).await {
            Ok(info) => info.size as u64,
            Err(_) => 0,
        };
        if size == 0 {
            if let Ok(mut list) = store.list().await {
                use futures::StreamExt;
                let prefix = format!("{name}/");
                while let Some(Ok(info)) = list.next().await {
                    if info.name.starts_with(&prefix) && !info.deleted {
                        size += info.size as u64;
                    }
                }
            }
        }
        if size > 0 {
            self.needs.lock().unwrap_or_else(|e| e.into_inner()).insert(
                (profile.id.clone(), profile.source.clone()),
                size + size / 5,
            );
        }
    }

    /// Publishes a lifecycle event.
    pub async fn event(&self, detail: EventDetail) {
        cortex_bus::events::publish(&self.client, &self.subjects, &self.id, detail).await;
    }
}
