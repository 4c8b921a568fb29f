//! Envoy's JSON form of protobuf resources (for config_dump and golden files), via a
//! descriptor set compiled at build time from envoy-types' own `.proto` files.

use envoy_types::pb::google::protobuf::Any;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use std::sync::OnceLock;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTORS).expect("embedded Envoy descriptors decode")
    })
}

/// JSON of a packed resource, with `@type` like Envoy's config_dump.
pub fn any_to_json(any: &Any) -> serde_json::Value {
    let name = any.type_url.rsplit('/').next().unwrap_or("");
    let Some(desc) = pool().get_message_by_name(name) else {
        return serde_json::json!({"@type": any.type_url, "error": "type not in descriptor set"});
    };
    match DynamicMessage::decode(desc, any.value.as_slice()) {
        Ok(msg) => {
            let opts = SerializeOptions::new().skip_default_fields(true);
            let mut ser = serde_json::Serializer::new(Vec::new());
            if msg.serialize_with_options(&mut ser, &opts).is_err() {
                return serde_json::json!({"@type": any.type_url, "error": "serialize failed"});
            }
            let mut v: serde_json::Value =
                serde_json::from_slice(&ser.into_inner()).unwrap_or_default();
            if let serde_json::Value::Object(m) = &mut v {
                m.insert(
                    "@type".into(),
                    serde_json::Value::String(any.type_url.clone()),
                );
            }
            v
        }
        Err(e) => serde_json::json!({"@type": any.type_url, "error": e.to_string()}),
    }
}

/// JSON of a typed message.
pub fn to_json<T: prost::Message + prost::Name>(m: &T) -> serde_json::Value {
    let any = Any {
        type_url: T::type_url(),
        value: m.encode_to_vec(),
    };
    let mut v = any_to_json(&any);
    if let serde_json::Value::Object(o) = &mut v {
        o.remove("@type");
    }
    v
}
