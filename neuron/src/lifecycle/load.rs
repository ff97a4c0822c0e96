//! Loading a model: one load per model however many ask at once (the
//! others wait for its outcome), a fit check against free memory that
//! counts loads still in progress, the load itself on a blocking thread
//! with its progress in heartbeats, then the model's intake.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_bus::ModelToken;
use cortex_engine::embed::EmbedEngine;
use cortex_engine::engine::EngineConfig;
use cortex_engine::sim::{sim_model, SimConfig};
use cortex_engine::source::ModelSource;
use cortex_engine::{ChatEngine, LoadOptions, LoadedModel};
use cortex_schemas::{
    ErrorClass, EventDetail, LoadReply, LoadRequest, ModelProfile, ModelState, OverWindow,
    WireError,
};

use crate::config::EngineKind;
use crate::held::{Backend, HeldModel};
use crate::lifecycle::load_error::LoadError;
use crate::metrics::serde_name;
use crate::shared::Shared;
use crate::size::format_bytes;

/// Events per request buffered before the engine batches output.
const EVENT_BUFFER: usize = 64;

/// What `load` found for the model.
enum Start {
    Ready(Arc<HeldModel>),
    Join(Arc<HeldModel>),
    Resume(Arc<HeldModel>),
    Fresh(Arc<HeldModel>),
}

/// Brings `request.profile` up on this neuron; replies when it serves or failed.
pub async fn load(shared: &Arc<Shared>, request: LoadRequest) -> Result<LoadReply, WireError> {
    if !shared.accepting() {
        return Err(unavailable(format!(
            "neuron {} is draining and takes no loads",
            shared.id
        )));
    }
    let started = Instant::now();
    let profile = request.profile;
    let token = ModelToken::new(&profile.id)
        .map_err(|e| WireError::new(ErrorClass::InvalidRequest, e.to_string()))?;
    let start = {
        let mut models = shared.models();
        if let Some(other) = models
            .values()
            .find(|m| m.token == token && m.id() != profile.id)
        {
            return Err(WireError::new(
                ErrorClass::InvalidRequest,
                format!(
                    "model id {:?} maps to the subject token of {:?}, which this neuron holds",
                    profile.id,
                    other.id()
                ),
            ));
        }
        match models
            .get(&profile.id)
            .map(|held| (held.clone(), held.state()))
        {
            Some((held, ModelState::Ready)) => Start::Ready(held),
            Some((held, ModelState::Loading)) => Start::Join(held),
            Some((held, ModelState::Draining)) => Start::Resume(held),
            Some((_, ModelState::Unloading)) => {
                return Err(unavailable(format!(
                    "model {:?} is being unloaded; load it again afterwards",
                    profile.id
                )))
            }
            Some((_, ModelState::Failed)) | None => {
                let held = Arc::new(HeldModel::new(profile.clone(), token));
                models.insert(profile.id.clone(), held.clone());
                Start::Fresh(held)
            }
        }
    };
    let held = match start {
        Start::Ready(held) => return Ok(reply(&held, started)),
        Start::Resume(held) => {
            let _op = held.ops.lock().await;
            match held.state() {
                ModelState::Draining => {}
                ModelState::Ready => return Ok(reply(&held, started)),
                state => {
                    return Err(unavailable(format!(
                        "model {:?} is {}",
                        held.id(),
                        serde_name(&state)
                    )))
                }
            }
            crate::serve::start_intake(shared, &held)
                .await
                .map_err(|e| unavailable(format!("cannot serve {:?}: {e}", held.id())))?;
            held.set_state(ModelState::Ready);
            shared.heartbeat_soon();
            return Ok(reply(&held, started));
        }
        Start::Join(held) => held,
        Start::Fresh(held) => {
            // The load runs in its own task: it completes (and its memory
            // is accounted) even if this caller goes away.
            tokio::spawn(perform(shared.clone(), held.clone(), request.device));
            held
        }
    };
    match tokio::time::timeout(LOAD_REPLY_TIMEOUT, held.loaded()).await {
        Ok(Ok(())) => Ok(reply(&held, started)),
        Ok(Err(error)) => Err(error.to_wire()),
        Err(_) => Err(unavailable(format!(
            "model {:?} is still loading after {LOAD_REPLY_TIMEOUT:?}",
            held.id()
        ))),
    }
}

fn reply(held: &HeldModel, started: Instant) -> LoadReply {
    LoadReply {
        model_id: held.id().to_string(),
        device: held.device(),
        memory_bytes: held.memory_bytes(),
        load_ms: started.elapsed().as_millis() as u64,
    }
}

fn unavailable(message: String) -> WireError {
    WireError::new(ErrorClass::Unavailable, message)
}

/// Marks the load failed if its task ends without saying how it went (a
/// panic), so nobody waits on it forever.
struct Unfinished(Arc<HeldModel>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if self.0.state() == ModelState::Loading {
            self.0.set_failed(LoadError::Ended);
        }
    }
}

/// The load itself, start to ready or failed, with its events.
async fn perform(shared: Arc<Shared>, held: Arc<HeldModel>, device: Option<u32>) {
    let _unfinished = Unfinished(held.clone());
    let started = Instant::now();
    let model = held.id().to_string();
    shared
        .event(EventDetail::ModelLoading {
            model: model.clone(),
            neuron: shared.id.clone(),
        })
        .await;
    shared.heartbeat_soon();
    let result = match bring_up(&shared, &held, device).await {
        Ok(backend) => {
            // Under the model's lock: a drain or shutdown that began while
            // it loaded either sees it ready (and drains it) or is seen here.
            let _op = held.ops.lock().await;
            if shared.accepting() && held.state() == ModelState::Loading {
                held.install(backend);
                match crate::serve::start_intake(&shared, &held).await {
                    Ok(()) => Ok(()),
                    Err(error) => {
                        let backend = held.take_backend();
                        tokio::task::spawn_blocking(move || drop(backend));
                        Err(LoadError::Subscribe(error.to_string()))
                    }
                }
            } else {
                tokio::task::spawn_blocking(move || drop(backend));
                Err(LoadError::Draining(shared.id.clone()))
            }
        }
        Err(message) => Err(message),
    };
    match result {
        Ok(()) => {
            let load_ms = started.elapsed().as_millis() as u64;
            tracing::info!(model, load_ms, memory = %format_bytes(held.memory_bytes()), "model ready");
            held.announce_ready();
            shared
                .event(EventDetail::ModelReady {
                    model,
                    neuron: shared.id.clone(),
                    load_ms,
                })
                .await;
        }
        Err(error) => {
            tracing::warn!(model, %error, "model load failed");
            held.set_failed(error.clone());
            shared
                .event(EventDetail::ModelFailed {
                    model,
                    neuron: shared.id.clone(),
                    error: error.to_string(),
                })
                .await;
        }
    }
    shared.heartbeat_soon();
}

/// Locates, reserves memory for, and loads the model.
async fn bring_up(
    shared: &Arc<Shared>,
    held: &Arc<HeldModel>,
    device: Option<u32>,
) -> Result<Backend, LoadError> {
    let profile = held.profile.clone();
    let (path, need) = match shared.config.engine {
        EngineKind::Sim => (
            None,
            profile
                .vram_bytes()
                .unwrap_or(shared.config.sim_model_memory),
        ),
        EngineKind::Candle => {
            let path = match profile.source.strip_prefix("store:") {
                Some(name) => fetch_from_store(shared, name).await?,
                None => {
                    let profile = profile.clone();
                    tokio::task::spawn_blocking(move || locate(&profile))
                        .await
                        .map_err(|e| LoadError::Panicked(e.to_string()))??
                }
            };
            let need = cortex_engine::footprint::estimate(&path, &profile);
            (Some(path), need)
        }
    };
    let index = reserve(shared, held, device, need)?;
    match path {
        None => bring_up_sim(shared, held, need).await,
        Some(path) => bring_up_candle(shared, held, path, index).await,
    }
}

/// Downloads `store:<name>` from the `cortex-models` object store into the
/// neuron's cache (digest-checked; a current cached copy is reused).
async fn fetch_from_store(shared: &Shared, name: &str) -> Result<PathBuf, LoadError> {
    let failed = |reason: String| LoadError::Store {
        name: name.to_string(),
        reason,
    };
    let js = async_nats::jetstream::new(shared.client.clone());
    let store = js
        .get_object_store(cortex_bus::buckets::MODELS)
        .await
        .map_err(|e| failed(format!("the model store is not available: {e}")))?;
    cortex_bus::objects::fetch(&store, name, &shared.config.model_cache_dir())
        .await
        .map_err(|e| failed(e.to_string()))
}

fn locate(profile: &ModelProfile) -> Result<PathBuf, LoadError> {
    let source =
        ModelSource::parse(&profile.source).map_err(|e| LoadError::Source(e.to_string()))?;
    source
        .resolve()
        .map_err(|e| LoadError::Source(e.to_string()))
}

/// Picks the device (the one asked for, else the one with most free
/// memory) and reserves `need` on it; refuses what fits nowhere.
fn reserve(
    shared: &Shared,
    held: &HeldModel,
    device: Option<u32>,
    need: u64,
) -> Result<u32, LoadError> {
    let _serial = shared.fit_lock.lock().unwrap_or_else(|e| e.into_inner());
    let devices = shared.discovery.devices(|index| shared.memory_on(index));
    let free = |d: &cortex_schemas::DeviceStatus| shared.free_on(d);
    let candidates: Vec<_> = match device {
        Some(index) => {
            let found: Vec<_> = devices.iter().filter(|d| d.index == index).collect();
            if found.is_empty() {
                return Err(LoadError::NoSuchDevice {
                    index,
                    neuron: shared.id.clone(),
                    count: devices.len(),
                });
            }
            found
        }
        None => devices.iter().collect(),
    };
    let best = candidates
        .iter()
        .max_by_key(|d| free(d))
        .ok_or_else(|| LoadError::NoDevice(shared.id.clone()))?;
    if free(best) < need {
        return Err(LoadError::NoRoom {
            model: held.id().to_string(),
            need: format_bytes(need),
            index: best.index,
            device: best.name.clone(),
            free: format_bytes(free(best)),
        });
    }
    held.reserve(best.index, need);
    Ok(best.index)
}

async fn bring_up_sim(shared: &Shared, held: &HeldModel, need: u64) -> Result<Backend, LoadError> {
    let config = &shared.config;
    if held.profile.kind == cortex_schemas::ModelKind::Embedding {
        return Err(LoadError::SimServesChatOnly);
    }
    // Pretend to read the weights, so progress moves as on a real load.
    let steps = 20u32;
    held.progress.add_total(u64::from(steps));
    for _ in 0..steps {
        tokio::time::sleep(config.sim_load_time / steps).await;
        held.progress.add_read(1);
    }
    let model = sim_model(SimConfig {
        memory_bytes: need,
        time_to_first_token: config.sim_ttft,
        tokens_per_second: config.sim_tokens_per_second,
        reply_tokens: config.sim_reply_tokens as usize,
        context_length: held.profile.context_length.map_or(8192, |c| c as usize),
    })
    .map_err(|e| LoadError::Engine(e.to_string()))?;
    Ok(Backend::Chat(Arc::new(ChatEngine::start(
        Arc::new(model),
        engine_config(shared, &held.profile),
    ))))
}

async fn bring_up_candle(
    shared: &Shared,
    held: &HeldModel,
    path: PathBuf,
    index: u32,
) -> Result<Backend, LoadError> {
    let options = LoadOptions {
        device: shared.discovery.engine_device(index),
        chat_template: held.profile.chat_template.clone(),
        context_length: held.profile.context_length.map(|c| c as usize),
        fast_prompt: shared.config.fast_prompt,
        progress: held.progress.clone(),
        ..LoadOptions::default()
    };
    let loaded = tokio::task::spawn_blocking(move || cortex_engine::load(&path, &options))
        .await
        .map_err(|e| LoadError::Panicked(e.to_string()))?
        .map_err(|e| LoadError::Engine(e.to_string()))?;
    let engine = engine_config(shared, &held.profile);
    Ok(match loaded {
        LoadedModel::Chat(model) => {
            held.grow_reservation(model.weight_bytes);
            Backend::Chat(Arc::new(ChatEngine::start(model, engine)))
        }
        LoadedModel::Embedding(model) => {
            Backend::Embed(Arc::new(EmbedEngine::new(model, engine.max_concurrency)))
        }
    })
}

fn engine_config(shared: &Shared, profile: &ModelProfile) -> EngineConfig {
    EngineConfig {
        max_concurrency: profile
            .max_concurrency
            .unwrap_or(shared.config.max_concurrency)
            .max(1) as usize,
        max_queue: shared.config.max_queue as usize,
        event_buffer: EVENT_BUFFER,
        prefix_cache_bytes: profile.prefix_cache_mb.map(|mb| mb.saturating_mul(1 << 20)),
        // One context window for the running batch: what the footprint
        // estimate (`cortex_footprint::estimate`) reserves for it.
        kv_budget_bytes: None,
        prompt_tokens_per_step: None,
        refuse_over_window: profile.max_tokens_over_window == OverWindow::Refuse,
    }
}

/// How long a caller may wait on a load before giving up on the reply
/// (the load itself goes on).
pub const LOAD_REPLY_TIMEOUT: Duration = Duration::from_secs(30 * 60);
