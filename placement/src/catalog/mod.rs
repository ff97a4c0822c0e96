//! The catalogue: [`file`] reads and checks `models.toml`; [`publish`]
//! writes it to the `cortex-catalog` KV bucket and follows the file for
//! changes; [`CatalogView`] is every replica's copy, followed from KV, so a
//! replica started without the file knows the same models.

pub mod file;
pub mod publish;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use cortex_schemas::ModelProfile;

/// The catalogue as this replica last saw it, by KV key (model token).
#[derive(Debug, Clone, Default)]
pub struct CatalogView {
    by_token: Arc<RwLock<BTreeMap<String, ModelProfile>>>,
}

impl CatalogView {
    /// Follows `cortex-catalog` in a task.
    pub fn follow(js: async_nats::jetstream::Context) -> (Self, tokio::task::JoinHandle<()>) {
        use futures::StreamExt;
        let view = Self::default();
        let mut events = Box::pin(cortex_bus::kv::watch::<ModelProfile>(
            js,
            cortex_bus::buckets::CATALOG.to_string(),
            ">".to_string(),
        ));
        let writer = view.clone();
        let task = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                writer.set(&event.key, event.value);
            }
        });
        (view, task)
    }

    /// Sets the profile under KV key `token` (or removes it).
    pub fn set(&self, token: &str, profile: Option<ModelProfile>) {
        let mut profiles = self.by_token.write().unwrap_or_else(|e| e.into_inner());
        match profile {
            Some(profile) => profiles.insert(token.to_string(), profile),
            None => profiles.remove(token),
        };
    }

    /// Replaces everything with `list` (just published by this replica).
    pub fn replace(&self, list: &[ModelProfile]) {
        let mut profiles = self.by_token.write().unwrap_or_else(|e| e.into_inner());
        *profiles = list
            .iter()
            .filter_map(|p| {
                let token = cortex_bus::ModelToken::new(&p.id).ok()?;
                Some((token.to_string(), p.clone()))
            })
            .collect();
    }

    /// Every profile, by model id.
    pub fn all(&self) -> BTreeMap<String, ModelProfile> {
        let profiles = self.by_token.read().unwrap_or_else(|e| e.into_inner());
        profiles
            .values()
            .map(|p| (p.id.clone(), p.clone()))
            .collect()
    }

    /// The profile a client's name means: its id or one of its aliases.
    pub fn resolve(&self, name: &str) -> Option<ModelProfile> {
        let profiles = self.by_token.read().unwrap_or_else(|e| e.into_inner());
        profiles
            .values()
            .find(|p| p.id == name)
            .or_else(|| {
                profiles
                    .values()
                    .find(|p| p.aliases.iter().any(|a| a == name))
            })
            .cloned()
    }
}
