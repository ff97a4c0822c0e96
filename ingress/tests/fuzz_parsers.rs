//! Fuzzing the APIs' request parsers below HTTP: any body bytes go
//! through the same decode (`body::parse`) and translation to the wire
//! request (`translate`) as a real request. Nothing may panic, and every
//! refusal is a 4xx, the client's fault, never a 5xx. Seeds in
//! `fuzz/corpus/openai-chat/`, `openai-responses/` and `anthropic-messages/`;
//! `ingress/tests/fuzz.rs` drives well-formed JSON through the HTTP server.

use cortex_ingress::anthropic::{messages, types::MessagesRequest};
use cortex_ingress::body;
use cortex_ingress::error::ApiError;
use cortex_ingress::openai::responses::{self, types::ResponsesRequest};
use cortex_ingress::openai::{chat, types::ChatRequest};
use cortex_testkit::fuzz;
use proptest::test_runner::{TestCaseError, TestRunner};

fn client_fault(stage: &str, error: &ApiError) -> Result<(), TestCaseError> {
    let status = error.status().as_u16();
    if (400..500).contains(&status) {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!(
            "{stage} answered {status}: {}",
            error.message
        )))
    }
}

fn openai(bytes: &[u8]) -> Result<(), TestCaseError> {
    match body::parse::<ChatRequest>(bytes) {
        Ok(request) => match chat::translate(request, "req-1", 60_000) {
            Ok(_) => Ok(()),
            Err(error) => client_fault("translate", &error),
        },
        Err(error) => client_fault("parse", &error),
    }
}

fn anthropic(bytes: &[u8]) -> Result<(), TestCaseError> {
    match body::parse::<MessagesRequest>(bytes) {
        Ok(request) => match messages::translate(request, "req-1", 60_000) {
            Ok(_) => Ok(()),
            Err(error) => client_fault("translate", &error),
        },
        Err(error) => client_fault("parse", &error),
    }
}

fn responses(bytes: &[u8]) -> Result<(), TestCaseError> {
    match body::parse::<ResponsesRequest>(bytes) {
        Ok(request) => match responses::translate(request, "req-1", 60_000) {
            Ok(_) => Ok(()),
            Err(error) => client_fault("translate", &error),
        },
        Err(error) => client_fault("parse", &error),
    }
}

fn campaign(target: &str, check: fn(&[u8]) -> Result<(), TestCaseError>) {
    let seeds = fuzz::corpus(target);
    assert!(!seeds.is_empty(), "fuzz/corpus/{target} is empty");
    for seed in &seeds {
        check(seed).unwrap();
    }
    TestRunner::new(fuzz::config(3000))
        .run(&fuzz::inputs(seeds, 512), |bytes: Vec<u8>| check(&bytes))
        .unwrap();
}

#[test]
fn openai_chat_bodies_never_panic_or_5xx() {
    campaign("openai-chat", openai);
}

#[test]
fn anthropic_messages_bodies_never_panic_or_5xx() {
    campaign("anthropic-messages", anthropic);
}

#[test]
fn openai_responses_bodies_never_panic_or_5xx() {
    campaign("openai-responses", responses);
}

#[test]
fn the_seeds_are_valid_requests() {
    for seed in fuzz::corpus("openai-responses") {
        let request: ResponsesRequest = body::parse(&seed).unwrap();
        responses::translate(request, "r", 60_000).unwrap();
    }
    for seed in fuzz::corpus("openai-chat") {
        let request: ChatRequest = body::parse(&seed).unwrap();
        chat::translate(request, "r", 60_000).unwrap();
    }
    for seed in fuzz::corpus("anthropic-messages") {
        let request: MessagesRequest = body::parse(&seed).unwrap();
        messages::translate(request, "r", 60_000).unwrap();
    }
}
