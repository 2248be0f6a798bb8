//! MCP's `_meta`, allowed on every request's params (`docs/protocol.md` section 2).
//!
//! A params type that reads `_meta` (it names the field, as `tools/call` does) gets it as
//! usual. For every other type, [`MetaTolerant`] checks that a top-level `_meta` is an object
//! and skips it before the type sees its fields, so a type that refuses unknown fields
//! (Switchboard's own methods) still refuses every other one. Values are read by the wrapped
//! deserializer itself, so types that borrow from the frame (`publish`'s `data`) still borrow.

use std::borrow::Cow;
use std::fmt;

use serde::Deserializer;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

/// The member MCP allows on every request's params.
pub(crate) const META: &str = "_meta";

/// A deserializer whose top-level struct may carry `_meta` (an object) whatever its fields.
pub(crate) struct MetaTolerant<D>(pub(crate) D);

macro_rules! forward {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
                self.0.$method(visitor)
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for MetaTolerant<D> {
    type Error = D::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        if fields.contains(&META) {
            // The type reads `_meta` itself.
            return self.0.deserialize_struct(name, fields, visitor);
        }
        self.0.deserialize_struct(name, fields, SkipMeta(visitor))
    }

    forward! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_option deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_newtype_struct(name, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

/// The struct's visitor, handed the object without its `_meta`. A struct is read from an
/// object (or, as serde allows, an array); anything else is refused by the wrapped
/// deserializer with this visitor's `expecting`.
struct SkipMeta<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for SkipMeta<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(SkipMetaMap(map))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.0.visit_seq(seq)
    }
}

struct SkipMetaMap<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for SkipMetaMap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(Key(key)) = self.0.next_key::<Key<'de>>()? else {
                return Ok(None);
            };
            if key == META {
                self.0.next_value::<MetaObject>()?;
                continue;
            }
            return match key {
                Cow::Borrowed(k) => seed
                    .deserialize(de::value::BorrowedStrDeserializer::new(k))
                    .map(Some),
                Cow::Owned(k) => seed.deserialize(k.into_deserializer()).map(Some),
            };
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.0.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

/// A key, borrowed from the frame unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// `_meta`, checked to be an object and otherwise skipped.
struct MetaObject;

impl<'de> de::Deserialize<'de> for MetaObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = MetaObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`_meta` to be an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MetaObject, A::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(MetaObject)
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use serde_json::value::RawValue;

    use crate::jsonrpc::decode_params;
    use crate::methods::Ignored;
    use crate::methods::session::{HelloParams, InitializeParams};
    use crate::methods::tasks::TaskIdParams;
    use crate::methods::tools::CallParams;
    use crate::methods::topics::{PublishParams, SubscribeParams};

    fn raw(v: serde_json::Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&v).unwrap()
    }

    #[test]
    fn meta_is_allowed_on_switchboards_own_methods_and_nothing_else_unknown() {
        let p: SubscribeParams =
            decode_params(Some(&raw(json!({"topic": "a", "_meta": {"k": [1]}})))).unwrap();
        assert_eq!(p.topic, "a");
        let e = decode_params::<SubscribeParams>(Some(&raw(json!({"topic": "a", "nope": 1}))))
            .unwrap_err();
        assert_eq!(e.code, -32602);
        assert!(e.message.contains("nope"), "{}", e.message);
        // `_meta` must be an object.
        for bad in [json!(5), json!("x"), json!([]), json!(null)] {
            let e =
                decode_params::<SubscribeParams>(Some(&raw(json!({"topic": "a", "_meta": bad}))))
                    .unwrap_err();
            assert!(e.message.contains("_meta"), "{}", e.message);
        }
        // Escaped, it is the same name.
        let text = r#"{"_m\u0065ta":{},"session":"s"}"#;
        let p: HelloParams =
            decode_params(Some(&RawValue::from_string(text.into()).unwrap())).unwrap();
        assert_eq!(p.session.as_deref(), Some("s"));
        let _: Ignored = decode_params(Some(&raw(json!({"_meta": {}, "cursor": "c"})))).unwrap();
    }

    #[test]
    fn borrowed_params_still_borrow_around_meta() {
        let text = r#"{"_meta":{"a":{"b":[1,{"c":2}]}},"topic":"t","data":{"x":[1, 2]}}"#;
        let frame = RawValue::from_string(text.into()).unwrap();
        let p: PublishParams<'_> = decode_params(Some(&frame)).unwrap();
        assert_eq!((&*p.topic, p.data.get()), ("t", r#"{"x":[1, 2]}"#));
        assert!(matches!(p.topic, std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn mcp_methods_ignore_unknown_fields_and_tools_call_reads_meta() {
        let p: TaskIdParams = decode_params(Some(&raw(
            json!({"taskId": "t1", "task": {"ttl": 5}, "_meta": {"progressToken": 1}, "later": true}),
        )))
        .unwrap();
        assert_eq!(p.task_id, "t1");
        let p: CallParams = decode_params(Some(&raw(json!({
            "name": "echo", "_meta": {"progressToken": 7}, "newField": {}
        }))))
        .unwrap();
        assert_eq!(p.meta.unwrap()["progressToken"], 7);
        let p: InitializeParams = decode_params(Some(&raw(json!({
            "protocolVersion": "2024-11-05", "capabilities": {}, "_meta": {}
        }))))
        .unwrap();
        assert_eq!(p.protocol_version.as_deref(), Some("2024-11-05"));
        assert!(decode_params::<TaskIdParams>(Some(&raw(json!({"_meta": {}})))).is_err());
    }
}
