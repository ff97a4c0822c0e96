//! The catalogue: [`file`] reads and checks `models.toml`; [`publish`]
//! writes it to the `cortex-catalog` KV bucket and follows the file for
//! changes; [`CatalogView`] is every replica's copy, followed from KV, so a
//! replica started without the file knows the same models.

pub mod file;
pub mod publish;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use cortex_schemas::ModelProfile;

/// The catalogue as this replica last saw it, by model id.
#[derive(Debug, Clone, Default)]
pub struct CatalogView {
    profiles: Arc<RwLock<BTreeMap<String, ModelProfile>>>,
}

impl CatalogView {
    /// Sets the profile under `id` (or removes it).
    pub fn set(&self, id: &str, profile: Option<ModelProfile>) {
        let mut profiles = self.profiles.write().unwrap_or_else(|e| e.into_inner());
        match profile {
            Some(profile) => profiles.insert(id.to_string(), profile),
            None => profiles.remove(id),
        };
    }

    /// Replaces everything with `list`.
    pub fn replace(&self, list: &[ModelProfile]) {
        let mut profiles = self.profiles.write().unwrap_or_else(|e| e.into_inner());
        *profiles = list.iter().map(|p| (p.id.clone(), p.clone())).collect();
    }

    pub fn all(&self) -> BTreeMap<String, ModelProfile> {
        self.profiles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The profile a client's name means: its id or one of its aliases.
    pub fn resolve(&self, name: &str) -> Option<ModelProfile> {
        let profiles = self.profiles.read().unwrap_or_else(|e| e.into_inner());
        profiles.get(name).cloned().or_else(|| {
            profiles
                .values()
                .find(|p| p.aliases.iter().any(|a| a == name))
                .cloned()
        })
    }
}
