//! Every wire type survives JSON and MessagePack (named fields) unchanged.

use proptest::prelude::*;
use serde::{de::DeserializeOwned, Serialize};

use crate::*;

fn roundtrip<T>(value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_vec(value).expect("json encode");
    let back: T = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!("json decode: {e}: {}", String::from_utf8_lossy(&json));
    });
    assert_eq!(&back, value, "json round trip");

    let packed = rmp_serde::to_vec_named(value).expect("msgpack encode");
    let back: T = rmp_serde::from_slice(&packed).expect("msgpack decode");
    assert_eq!(&back, value, "msgpack");
}

macro_rules! roundtrip_props {
    ($($name:ident: $ty:ty),* $(,)?) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(32))]
            $(
                #[test]
                fn $name(value in any::<$ty>()) {
                    roundtrip(&value);
                }
            )*
        }
    };
}

roundtrip_props! {
    infer_request: InferRequest,
    generate_request: GenerateRequest,
    embed_request: EmbedRequest,
    cancel_request: CancelRequest,
    frame: Frame,
    embed_response: EmbedResponse,
    wire_error: WireError,
    neuron_status: NeuronStatus,
    prefix_summary: PrefixSummary,
    model_profile: ModelProfile,
    assignment: Assignment,
    lease: Lease,
    event: Event,
    load_request: LoadRequest,
    load_reply: LoadReply,
    unload_request: UnloadRequest,
    unload_reply: UnloadReply,
    drain_request: DrainRequest,
    drain_reply: DrainReply,
    ensure_request: EnsureRequest,
    ensure_reply: EnsureReply,
    pin_request: PinRequest,
    unpin_request: UnpinRequest,
    place_request: PlaceRequest,
    placement_status: PlacementStatus,
    reply_ensure: Reply<EnsureReply>,
    reply_assignment: Reply<Assignment>,
}

/// The JSON shapes operators see with `nats sub` / `nats req` stay stable.
#[test]
fn json_shapes_are_readable() {
    let frame = Frame::Error(WireError::new(ErrorClass::Overloaded, "all slots busy"));
    assert_eq!(
        serde_json::to_string(&frame).unwrap(),
        r#"{"type":"error","class":"overloaded","message":"all slots busy"}"#
    );
    let keepalive = Frame::Keepalive(Keepalive::default());
    assert_eq!(
        serde_json::to_string(&keepalive).unwrap(),
        r#"{"type":"keepalive"}"#
    );

    let reply: Reply<UnloadReply> = Reply::Ok(UnloadReply {
        model_id: "m".into(),
        cancelled: 0,
    });
    assert_eq!(
        serde_json::to_string(&reply).unwrap(),
        r#"{"ok":{"model_id":"m","cancelled":0}}"#
    );

    let event = Event {
        at_ms: 1,
        source: "n1".into(),
        detail: EventDetail::ModelReady {
            model: "m".into(),
            neuron: "n1".into(),
            load_ms: 5,
        },
    };
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(json["detail"]["kind"], "model.ready");
    assert_eq!(event.detail.kind(), "model.ready");
}

/// What a person types with `nats req` decodes: defaults fill the rest.
#[test]
fn minimal_json_requests_decode() {
    let request: InferRequest = serde_json::from_str(
        r#"{"op":"generate","request_id":"r1","model":"smollm2",
            "input":{"kind":"chat","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}}"#,
    )
    .unwrap();
    let InferRequest::Generate(generate) = request else {
        panic!("expected generate");
    };
    assert_eq!(generate.sampling, SamplingParams::default());
    let GenerateInput::Chat { messages } = &generate.input else {
        panic!("expected chat input");
    };
    assert_eq!(messages[0].joined_text(), "hi");

    let embed: InferRequest =
        serde_json::from_str(r#"{"op":"embed","request_id":"r2","model":"minilm","inputs":["a"]}"#)
            .unwrap();
    let InferRequest::Embed(embed) = embed else {
        panic!("expected embed");
    };
    assert!(embed.normalize, "normalize defaults to true");

    let profile: ModelProfile =
        serde_json::from_str(r#"{"id":"m","source":"/models/m.gguf","pinned":["n1"]}"#).unwrap();
    assert_eq!(profile.max_replicas, 1);
    assert!(profile.pinned.is_pinned());
    assert_eq!(profile.kind, ModelKind::Chat);
}

#[test]
fn terminal_frames() {
    assert!(!Frame::Keepalive(Keepalive::default()).is_terminal());
    assert!(!Frame::Delta(Delta::default()).is_terminal());
    assert!(Frame::Error(WireError::new(ErrorClass::Internal, "x")).is_terminal());
    assert!(Frame::Done(Done {
        finish_reason: FinishReason::Stop,
        stop_sequence: None,
        usage: Usage::default(),
        timings: Timings::default(),
    })
    .is_terminal());
}
