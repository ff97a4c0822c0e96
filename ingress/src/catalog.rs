//! The catalogue placement publishes in the `cortex-catalog` KV bucket
//! (model token → `ModelProfile`), followed when present: it names models
//! no neuron holds yet, their context length and aliases. Until placement
//! creates the bucket, the watch waits for it; the model list then shows
//! only what neurons hold.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_nats::Client;
use cortex_bus::buckets;
use cortex_schemas::ModelProfile;
use futures::StreamExt;
use tokio::task::JoinHandle;

/// The latest catalogue, by KV key.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    profiles: Arc<RwLock<BTreeMap<String, ModelProfile>>>,
}

impl Catalog {
    /// Follows `cortex-catalog` in a task (from its current content on).
    pub fn follow(client: &Client) -> (Self, JoinHandle<()>) {
        let catalog = Self::default();
        let js = async_nats::jetstream::new(client.clone());
        let mut events = Box::pin(cortex_bus::kv::watch::<ModelProfile>(
            js,
            buckets::CATALOG.to_string(),
            ">".to_string(),
        ));
        let writer = catalog.clone();
        let task = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let mut profiles = writer.profiles.write().unwrap_or_else(|e| e.into_inner());
                match event.value {
                    Some(profile) => profiles.insert(event.key, profile),
                    None => profiles.remove(&event.key),
                };
            }
        });
        (catalog, task)
    }

    pub fn profiles(&self) -> Vec<ModelProfile> {
        let profiles = self.profiles.read().unwrap_or_else(|e| e.into_inner());
        profiles.values().cloned().collect()
    }

    /// Whether the catalogue lists `id`.
    pub fn knows(&self, id: &str) -> bool {
        let profiles = self.profiles.read().unwrap_or_else(|e| e.into_inner());
        profiles.values().any(|p| p.id == id)
    }

    /// The catalogue id a client's name means: an id, or an alias of one;
    /// names the catalogue does not know pass through unchanged.
    pub fn resolve(&self, name: &str) -> String {
        let profiles = self.profiles.read().unwrap_or_else(|e| e.into_inner());
        profiles
            .values()
            .find(|p| p.aliases.iter().any(|a| a == name))
            .map_or_else(|| name.to_string(), |p| p.id.clone())
    }
}
