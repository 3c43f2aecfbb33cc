//! The field names of a section type, for the generated reference: serde keeps a struct's field
//! names only inside its `Deserialize` impl; [`keys_of`] asks for them with a deserializer that
//! records the names `deserialize_struct` is given and stops. No crate offers this without pulling
//! in a larger one, so it is written here (40 lines).

use serde::de::{self, Deserialize, Visitor};

/// The field names of the struct `T` deserializes into (empty for anything else).
pub fn keys_of<T: for<'de> Deserialize<'de>>() -> Vec<&'static str> {
    let mut keys = None;
    let _ = T::deserialize(Probe(&mut keys));
    keys.unwrap_or_default().to_vec()
}

/// A deserializer that only records the field names it is asked for.
struct Probe<'a>(&'a mut Option<&'static [&'static str]>);

/// Why the probe stops: it has what it came for.
#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field names recorded")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Stop
    }
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = Some(fields);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Section {
        path: String,
        #[serde(default)]
        key: Option<String>,
        #[serde(rename = "batch_rows")]
        rows: usize,
    }

    #[test]
    fn the_keys_are_the_names_serde_reads() {
        assert_eq!(keys_of::<Section>(), ["path", "key", "batch_rows"]);
        assert!(keys_of::<String>().is_empty());
    }
}
