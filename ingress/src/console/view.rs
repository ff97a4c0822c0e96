//! What `GET /ui/api/status` answers: the fleet as the page draws it,
//! built from this pod's heartbeat view, its catalogue, and placement's
//! status when it answered.

use std::collections::BTreeMap;

use cortex_schemas::{ModelKind, ModelState, NeuronStatus, PlacementStatus};
use serde::Serialize;

use crate::recent::Finished;
use crate::state::AppState;

/// The console's whole view.
#[derive(Debug, Serialize)]
pub struct Console {
    /// Whether the caller may load, unload and pin.
    pub operator: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Why placement's part is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement_error: Option<String>,
    /// Live neurons, by id.
    pub neurons: Vec<NeuronStatus>,
    /// Catalogue models and any others the fleet serves, by id.
    pub models: Vec<Model>,
    /// This pod's last finished requests, newest first.
    pub recent: Vec<Finished>,
}

/// Which placement replica answered, and who leads.
#[derive(Debug, Serialize)]
pub struct Placement {
    pub replica: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

/// One model across the fleet.
#[derive(Debug, Serialize)]
pub struct Model {
    pub id: String,
    pub kind: ModelKind,
    pub pinned: bool,
    pub replicas: Vec<Replica>,
    pub slots_busy: u32,
    pub slots_total: u32,
    pub queue_depth: u32,
    pub tokens_per_second: f64,
}

/// One neuron's copy of a model.
#[derive(Debug, Serialize)]
pub struct Replica {
    pub neuron: String,
    pub state: ModelState,
    /// While loading: how far, 0..=1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
}

impl Console {
    pub fn build(
        state: &AppState,
        operator: bool,
        placement: Option<PlacementStatus>,
        placement_error: Option<String>,
    ) -> Self {
        let mut neurons = state.fleet.neurons();
        neurons.sort_by(|a, b| a.neuron_id.cmp(&b.neuron_id));
        let mut models: BTreeMap<String, Model> = BTreeMap::new();
        for profile in state.catalog.profiles() {
            let mut model = Model::new(&profile.id, profile.kind);
            model.pinned = profile.pinned.is_pinned();
            models.insert(profile.id.clone(), model);
        }
        for neuron in &neurons {
            for status in &neuron.models {
                let model = models
                    .entry(status.model_id.clone())
                    .or_insert_with(|| Model::new(&status.model_id, ModelKind::Chat));
                model.replicas.push(Replica {
                    neuron: neuron.neuron_id.clone(),
                    state: status.state,
                    progress: status.load_progress,
                });
                model.slots_busy += status.slots_busy;
                model.slots_total += status.slots_total;
                model.queue_depth += status.queue_depth;
                model.tokens_per_second += status.tokens_per_second;
            }
        }
        // An operator's pin lives in placement's assignments.
        if let Some(status) = &placement {
            for assignment in &status.assignments {
                if let Some(model) = models.get_mut(&assignment.model_id) {
                    model.pinned |= assignment.pinned.is_pinned();
                }
            }
        }
        Self {
            operator,
            placement: placement.map(|p| Placement {
                replica: p.replica,
                leader: p.leader,
            }),
            placement_error,
            neurons,
            models: models.into_values().collect(),
            recent: state.recent.list(),
        }
    }
}

impl Model {
    fn new(id: &str, kind: ModelKind) -> Self {
        Self {
            id: id.to_string(),
            kind,
            pinned: false,
            replicas: Vec::new(),
            slots_busy: 0,
            slots_total: 0,
            queue_depth: 0,
            tokens_per_second: 0.0,
        }
    }
}
