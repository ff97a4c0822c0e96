//! Reading heartbeats as their followers (placement, ingress) must: a
//! heartbeat counts only for the neuron its subject names.

use async_nats::Message;
use cortex_schemas::NeuronStatus;

use crate::codec::decode_message;
use crate::subject::validate_token;

/// Whether a heartbeat received on `subject` may speak for `neuron_id`: the
/// subject's last token names it, and it is a valid token. A neuron's
/// credentials may publish only on its own heartbeat subject, so with this
/// check they cannot stand in for another neuron.
pub fn speaks_for(subject: &str, neuron_id: &str) -> bool {
    subject.rsplit('.').next() == Some(neuron_id) && validate_token("neuron id", neuron_id).is_ok()
}

/// The status a heartbeat message carries, when it decodes and speaks for
/// the neuron its subject names; anything else is logged and dropped.
pub fn accept(message: &Message) -> Option<NeuronStatus> {
    match decode_message::<NeuronStatus>(message.headers.as_ref(), &message.payload) {
        Ok(status) if speaks_for(&message.subject, &status.neuron_id) => Some(status),
        Ok(status) => {
            tracing::debug!(
                subject = %message.subject,
                neuron = %status.neuron_id,
                "heartbeat for another subject ignored"
            );
            None
        }
        Err(error) => {
            tracing::debug!(%error, "undecodable heartbeat ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_speaks_only_for_its_subject() {
        assert!(speaks_for("cortex.v1.heartbeat.gpu-1", "gpu-1"));
        assert!(!speaks_for("cortex.v1.heartbeat.gpu-1", "gpu-2"));
        assert!(!speaks_for("cortex.v1.heartbeat.a b", "a b"));
    }
}
