//! The analytics side of the `record` format: a raw row (`id, ts_ms, status, record`)
//! decoded in one JSON parse into the fields analytics sums. Separate from `encode.rs` (the
//! writer's side, no serde) and below both the rollup's backfill and the raw-range queries,
//! which share it.

use super::aggregate::{lat_bucket, Row};
use super::schema::FIELDS;
use std::borrow::Cow;

/// What analytics reads of one raw row: `ts_ms, status, record` of `request_log_data`,
/// decoded here (one JSON parse a row; the `request_log` view's `json_extract` columns parse
/// the record once per column).
pub(super) const RAW_ROW: &str = "id, ts_ms, status, record";

/// The analytics fields of a raw row.
#[derive(Default)]
pub(super) struct RawRow<'a> {
    pub(super) id: i64,
    pub(super) ts_ms: i64,
    pub(super) key_label: Cow<'a, str>,
    pub(super) provider: Cow<'a, str>,
    pub(super) model: Cow<'a, str>,
    pub(super) row: Row,
}

impl<'a> RawRow<'a> {
    /// Decodes a row selected as [`RAW_ROW`]. Fields are read by their position in
    /// [`FIELDS`]; a null or missing one counts as zero or empty.
    pub(super) fn decode(r: &'a rusqlite::Row<'a>) -> rusqlite::Result<RawRow<'a>> {
        let status: i64 = r.get::<_, Option<i64>>(2)?.unwrap_or(0);
        let record = r.get_ref(3)?.as_str_or_null()?.unwrap_or("[]");
        let fields: RecordFields = serde_json::from_str(record).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
        })?;
        let ok = status < 400;
        Ok(RawRow {
            id: r.get(0)?,
            ts_ms: r.get::<_, Option<i64>>(1)?.unwrap_or(0),
            key_label: fields.key_label,
            provider: fields.provider,
            model: fields.model,
            row: Row {
                bucket: lat_bucket(fields.duration_ms),
                n: 1,
                ok: ok.into(),
                limited: (status == 429).into(),
                failovers: (ok && fields.attempts > 1).into(),
                prompt: fields.prompt_tokens,
                completion: fields.completion_tokens,
                cost: fields.cost_usd,
                hits: (fields.cache_status == "HIT").into(),
                overhead: fields.overhead_ms,
            },
        })
    }
}

/// The positions of [`FIELDS`] that analytics reads, out of a `record` array.
#[derive(Default)]
struct RecordFields<'a> {
    key_label: Cow<'a, str>,
    provider: Cow<'a, str>,
    model: Cow<'a, str>,
    attempts: u64,
    cache_status: Cow<'a, str>,
    prompt_tokens: u64,
    completion_tokens: u64,
    duration_ms: f64,
    overhead_ms: f64,
    cost_usd: f64,
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for RecordFields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

        /// One element of the array, as far as analytics cares: text (borrowed from the
        /// input when it has no escapes), a number, or anything else (null, bool, nested).
        enum Elem<'a> {
            Text(Cow<'a, str>),
            Int(u64),
            Real(f64),
            Other,
        }
        impl<'a> Elem<'a> {
            fn text(self) -> Cow<'a, str> {
                match self {
                    Elem::Text(t) => t,
                    _ => Cow::Borrowed(""),
                }
            }
            fn int(self) -> u64 {
                match self {
                    Elem::Int(n) => n,
                    _ => 0,
                }
            }
            fn real(self) -> f64 {
                match self {
                    Elem::Int(n) => n as f64,
                    Elem::Real(x) => x,
                    _ => 0.0,
                }
            }
        }
        impl<'de> serde::Deserialize<'de> for Elem<'de> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Elem<'de>;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a JSON value")
                    }
                    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Elem<'de>, E> {
                        Ok(Elem::Text(Cow::Borrowed(v)))
                    }
                    fn visit_str<E>(self, v: &str) -> Result<Elem<'de>, E> {
                        Ok(Elem::Text(Cow::Owned(v.to_owned())))
                    }
                    fn visit_u64<E>(self, v: u64) -> Result<Elem<'de>, E> {
                        Ok(Elem::Int(v))
                    }
                    fn visit_i64<E>(self, v: i64) -> Result<Elem<'de>, E> {
                        Ok(Elem::Int(v.max(0) as u64))
                    }
                    fn visit_f64<E>(self, v: f64) -> Result<Elem<'de>, E> {
                        Ok(Elem::Real(v))
                    }
                    fn visit_unit<E>(self) -> Result<Elem<'de>, E> {
                        Ok(Elem::Other)
                    }
                    fn visit_bool<E>(self, _: bool) -> Result<Elem<'de>, E> {
                        Ok(Elem::Other)
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Elem<'de>, A::Error> {
                        while a.next_element::<IgnoredAny>()?.is_some() {}
                        Ok(Elem::Other)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Elem<'de>, A::Error> {
                        while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                        Ok(Elem::Other)
                    }
                }
                d.deserialize_any(V)
            }
        }

        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = RecordFields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a request log record (a JSON array)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = RecordFields::default();
                let mut i = 0;
                while let Some(v) = seq.next_element::<Elem<'de>>()? {
                    match FIELDS.get(i).copied().unwrap_or("") {
                        "key_label" => out.key_label = v.text(),
                        "provider" => out.provider = v.text(),
                        "model" => out.model = v.text(),
                        "cache_status" => out.cache_status = v.text(),
                        "attempts" => out.attempts = v.int(),
                        "prompt_tokens" => out.prompt_tokens = v.int(),
                        "completion_tokens" => out.completion_tokens = v.int(),
                        "duration_ms" => out.duration_ms = v.real(),
                        "overhead_ms" => out.overhead_ms = v.real(),
                        "cost_usd" => out.cost_usd = v.real(),
                        _ => {}
                    }
                    i += 1;
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Fields)
    }
}

#[cfg(test)]
mod tests {
    use super::super::encode::encode;
    use super::super::testing::rec;
    use super::*;
    use crate::config::RedactIp;
    use crate::observe::record::{IpCache, IpRedactor};

    #[test]
    fn analytics_decodes_records_with_escapes_nulls_and_extra_fields() {
        let decode = |json: &str| {
            let f: RecordFields = serde_json::from_str(json).unwrap();
            (
                f.key_label.into_owned(),
                f.provider.into_owned(),
                f.model.into_owned(),
                f.attempts,
                f.cache_status.into_owned(),
                (f.prompt_tokens, f.completion_tokens),
                (f.duration_ms, f.overhead_ms, f.cost_usd),
            )
        };
        // Written by `encode`, then by a future freeway with one more field, then a
        // hand-made short and null-filled one.
        let mut ips = IpCache::new(IpRedactor::new(RedactIp::Off, ""));
        let (mut failures, mut record) = (Vec::new(), Vec::new());
        let mut r = rec(1, "p\"q\\", 200, 12.5);
        r.cache_status = "HIT";
        r.attempts = 3;
        r.overhead_ms = 0.25;
        encode(&r, &mut ips, &mut failures, &mut record);
        let written = String::from_utf8(record).unwrap();
        let want = (
            "k".to_string(),
            "p\"q\\".to_string(),
            "m".to_string(),
            3,
            "HIT".to_string(),
            (10, 5),
            (12.5, 0.25, 0.001),
        );
        assert_eq!(decode(&written), want);
        let longer = format!("{},\"new\",{{\"x\":[1]}}]", &written[..written.len() - 1]);
        assert_eq!(decode(&longer), want);
        assert_eq!(
            decode("[null,null,null,null,null,null,null,\"p\",null,null]"),
            (
                String::new(),
                "p".into(),
                String::new(),
                0,
                String::new(),
                (0, 0),
                (0.0, 0.0, 0.0)
            )
        );
    }
}
