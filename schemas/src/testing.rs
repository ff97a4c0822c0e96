//! Strategies for the property tests: values every encoding can carry exactly
//! (finite floats, JSON values without floats that JSON would reshape).

use proptest::prelude::*;

pub fn finite_f64() -> impl Strategy<Value = f64> {
    -1.0e9f64..1.0e9f64
}

pub fn opt_f64() -> impl Strategy<Value = Option<f64>> {
    proptest::option::of(finite_f64())
}

pub fn vec_f32() -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec(-1.0e3f32..1.0e3f32, 0..16)
}

/// Arbitrary JSON documents of bounded depth.
pub fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        finite_f64().prop_map(Value::from),
        ".*".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(".*", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}
