//! The operator's verbs, served on `cortex.v1.placement.<verb>` and used by
//! the CLI: `status` (fleet, catalogue, assignments), `load` (one more copy,
//! on a given neuron or where placement chooses), `unload` (one neuron's
//! copy or all; refused for pinned copies), `pin` / `unpin` (an operator
//! pin kept in the assignment, on top of the catalogue's), and `reload`
//! (re-read `models.toml`).

use std::collections::BTreeSet;

use cortex_schemas::{
    Assignment, EnsureRequest, ErrorClass, ModelProfile, PinRequest, Pinned, PlaceRequest,
    PlacementStatus, UnpinRequest, WireError,
};
use serde::{Deserialize, Serialize};

use crate::actions::{carry_out, unload_copy};
use crate::assignments;
use crate::decide::place;
use crate::fleet::Holders;
use crate::shared::Shared;

/// `reload` reply: what changed in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReply {
    pub written: Vec<String>,
    pub deleted: Vec<String>,
    pub unchanged: usize,
}

/// `reload` takes no fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReloadRequest {}

/// `status` takes no fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusRequest {}

pub async fn status(shared: &Shared, _: StatusRequest) -> Result<PlacementStatus, WireError> {
    let mut neurons = shared.fleet.live();
    neurons.sort_by(|a, b| a.neuron_id.cmp(&b.neuron_id));
    Ok(PlacementStatus {
        replica: shared.id.clone(),
        leader: shared.leadership.holder(),
        neurons,
        catalog: shared.catalog.all().into_values().collect(),
        assignments: shared.assignments.all().into_values().collect(),
    })
}

fn known(shared: &Shared, name: &str) -> Result<ModelProfile, WireError> {
    shared.catalog.resolve(name).ok_or_else(|| {
        WireError::new(
            ErrorClass::ModelNotFound,
            format!("model {name:?} is not in the catalogue"),
        )
    })
}

fn live_neuron(shared: &Shared, neuron: &str) -> Result<(), WireError> {
    if shared.fleet.is_live(neuron) {
        Ok(())
    } else {
        Err(WireError::new(
            ErrorClass::InvalidRequest,
            format!("neuron {neuron:?} is not live"),
        ))
    }
}

fn kv(error: impl std::fmt::Display) -> WireError {
    WireError::new(ErrorClass::Unavailable, format!("placement state: {error}"))
}

fn current(shared: &Shared, model: &str) -> Assignment {
    shared
        .assignments
        .get(model)
        .unwrap_or_else(|| assignments::fresh(model))
}

pub async fn load(shared: &Shared, request: PlaceRequest) -> Result<Assignment, WireError> {
    let profile = known(shared, &request.model)?;
    if let Some(neuron) = &request.neuron {
        live_neuron(shared, neuron)?;
        if shared.fleet.ready_on(&profile.id).contains(neuron) {
            return Ok(current(shared, &profile.id));
        }
    }
    let snap = shared.snapshot();
    let plan = place(
        &snap,
        &profile.id,
        shared.settings.strategy,
        request.neuron.as_deref(),
        &BTreeSet::new(),
        true,
    )
    .map_err(|e| WireError::new(ErrorClass::Unavailable, e.to_string()))?;
    carry_out(shared, &plan, u32::MAX, shared.config.load_timeout)
        .await
        .map_err(WireError::from)?;
    Ok(current(shared, &profile.id))
}

pub async fn unload(shared: &Shared, request: PlaceRequest) -> Result<Assignment, WireError> {
    let profile = known(shared, &request.model)?;
    let model = profile.id.clone();
    let snap = shared.snapshot();
    let holders: Vec<String> = match &request.neuron {
        Some(neuron) => {
            live_neuron(shared, neuron)?;
            vec![neuron.clone()]
        }
        None => snap
            .neurons
            .values()
            .filter(|n| n.holding(&model).is_some())
            .map(|n| n.id.clone())
            .collect(),
    };
    if let Some(pinned) = holders.iter().find(|n| snap.pinned_on(&model, n)) {
        return Err(WireError::new(
            ErrorClass::InvalidRequest,
            format!("model {model:?} is pinned on {pinned}; unpin it first"),
        ));
    }
    for neuron in holders {
        unload_copy(shared, &model, &neuron).await?;
    }
    Ok(current(shared, &model))
}

pub async fn pin(shared: &Shared, request: PinRequest) -> Result<Assignment, WireError> {
    let profile = known(shared, &request.model)?;
    for neuron in &request.neurons {
        live_neuron(shared, neuron)?;
    }
    let pinned = if request.neurons.is_empty() {
        Pinned::Flag(true)
    } else {
        Pinned::Neurons(request.neurons.clone())
    };
    assignments::modify(&shared.placements, &shared.assignments, &profile.id, |a| {
        let changed = a.pinned != pinned;
        a.pinned = pinned.clone();
        changed
    })
    .await
    .map_err(kv)?;
    // Loaded now rather than at the reconciler's next pass.
    if request.neurons.is_empty() {
        crate::ensure::ensure(
            shared,
            EnsureRequest {
                model: profile.id.clone(),
                timeout_ms: None,
            },
        )
        .await?;
    } else {
        for neuron in &request.neurons {
            load(
                shared,
                PlaceRequest {
                    model: profile.id.clone(),
                    neuron: Some(neuron.clone()),
                },
            )
            .await?;
        }
    }
    Ok(current(shared, &profile.id))
}

pub async fn unpin(shared: &Shared, request: UnpinRequest) -> Result<Assignment, WireError> {
    let profile = known(shared, &request.model)?;
    assignments::modify(&shared.placements, &shared.assignments, &profile.id, |a| {
        let changed = a.pinned.is_pinned();
        a.pinned = Pinned::Flag(false);
        changed
    })
    .await
    .map_err(kv)
}

pub async fn reload(shared: &Shared, _: ReloadRequest) -> Result<ReloadReply, WireError> {
    let Some(path) = &shared.config.models else {
        return Err(WireError::new(
            ErrorClass::InvalidRequest,
            format!(
                "placement replica {} was started without --models",
                shared.id
            ),
        ));
    };
    let published = crate::catalog::publish::publish_file(&shared.catalog_store, path)
        .await
        .map_err(|e| WireError::new(ErrorClass::InvalidRequest, e.to_string()))?;
    let profiles = crate::catalog::file::read(path)
        .map_err(|e| WireError::new(ErrorClass::InvalidRequest, e.to_string()))?;
    shared.catalog.replace(&profiles);
    Ok(ReloadReply {
        written: published.written,
        deleted: published.deleted,
        unchanged: published.unchanged,
    })
}
