//! The exact response cache.
//!
//! Key: SHA-256 of the endpoint, the requested model (or `auto`), the body with its stream
//! flags removed (`stream`, `stream_options`) and object keys sorted, and the client's
//! `x-gateway-cache-key` when given. A streamed and a non-streamed request share an entry:
//! the value is always the `chat.completion` JSON (see [`sse`]).
//!
//! Storage: an in-memory LRU bounded by `[cache].max_bytes` (a lookup miss is one hash
//! probe), written through to SQLite so entries survive a restart ([`disk`]). With
//! `[storage].redis_url` the entries also live in Redis (their TTL there, and an LRU bounded
//! by the same `max_bytes` kept by a Lua script), so every instance shares them; memory is
//! asked first, Redis on a local miss.
//!
//! Coalescing: the first request for a key leads; identical requests arriving while it is in
//! flight wait (bounded) for it and are then answered from the cache.

pub mod disk;
pub mod sse;

use crate::config::CacheConfig;
use crate::live::redis_link::RedisLink;
use bytes::Bytes;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

pub type Key = [u8; 32];

/// A stored answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached {
    pub provider: String,
    pub model: String,
    /// The `chat.completion` JSON.
    pub body: Bytes,
}

impl Cached {
    fn size(&self) -> u64 {
        (self.body.len() + self.provider.len() + self.model.len() + 64) as u64
    }

    /// `provider\nmodel\nbody` (the Redis value).
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.size() as usize);
        v.extend_from_slice(self.provider.as_bytes());
        v.push(b'\n');
        v.extend_from_slice(self.model.as_bytes());
        v.push(b'\n');
        v.extend_from_slice(&self.body);
        v
    }

    fn decode(v: &[u8]) -> Option<Cached> {
        let mut parts = v.splitn(3, |&b| b == b'\n');
        let provider = std::str::from_utf8(parts.next()?).ok()?.to_string();
        let model = std::str::from_utf8(parts.next()?).ok()?.to_string();
        let body = Bytes::copy_from_slice(parts.next()?);
        Some(Cached {
            provider,
            model,
            body,
        })
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The cache key of a request. `Err` when the body is not a JSON object (such a request is
/// not cached; the parser answers it anyway).
///
/// Fields are hashed with object keys sorted at every level and whitespace between tokens
/// dropped; values stay borrowed (no JSON tree is built: a lookup stays within a few µs).
pub fn key(
    endpoint: &str,
    model: &str,
    body: &[u8],
    client_key: Option<&str>,
) -> Result<Key, String> {
    let fields: HashMap<std::borrow::Cow<'_, str>, &serde_json::value::RawValue> =
        serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut fields: Vec<_> = fields
        .into_iter()
        .filter(|(k, _)| !matches!(k.as_ref(), "stream" | "stream_options" | "model"))
        .collect();
    fields.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    for part in [endpoint, model, client_key.unwrap_or("")] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    for (k, v) in fields {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        hash_value(v, &mut h, 0);
    }
    Ok(h.finalize().into())
}

/// The key of a request the client named itself (`x-gateway-cache-key`): the name replaces
/// the body, so two requests with one name share an entry whatever their bodies (Cloudflare's
/// semantics).
pub fn custom_key(endpoint: &str, name: &str) -> Key {
    let mut h = Sha256::new();
    for part in [endpoint, "custom", name] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// `key` confined to the requests of one gateway key (`scope`, its label): the default, so
/// no key is ever served another key's cached answer.
pub fn scoped(key: Key, scope: &str) -> Key {
    let mut h = Sha256::new();
    h.update(key);
    h.update((scope.len() as u64).to_le_bytes());
    h.update(scope.as_bytes());
    h.finalize().into()
}

/// Feeds a JSON value with object keys sorted at every level and no whitespace between
/// tokens, so neither the client's key order nor its serializer style changes the key.
/// Values stay borrowed (`RawValue`), only object keys are collected.
fn hash_value(v: &serde_json::value::RawValue, h: &mut Sha256, depth: usize) {
    let text = v.get().as_bytes();
    match text.first() {
        Some(b'{') if depth < 64 => {
            let Ok(map) = serde_json::from_str::<
                HashMap<std::borrow::Cow<'_, str>, &serde_json::value::RawValue>,
            >(v.get()) else {
                return hash_compact(text, h);
            };
            let mut fields: Vec<_> = map.into_iter().collect();
            fields.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            h.update(b"{");
            for (k, x) in fields {
                h.update((k.len() as u64).to_le_bytes());
                h.update(k.as_bytes());
                hash_value(x, h, depth + 1);
            }
            h.update(b"}");
        }
        Some(b'[') if depth < 64 => {
            let Ok(items) = serde_json::from_str::<Vec<&serde_json::value::RawValue>>(v.get())
            else {
                return hash_compact(text, h);
            };
            h.update(b"[");
            for x in items {
                hash_value(x, h, depth + 1);
                h.update(b",");
            }
            h.update(b"]");
        }
        _ => {
            hash_compact(text, h);
            h.update(b"\0");
        }
    }
}

/// Feeds JSON text without the whitespace between tokens (`{"a": 1}` = `{"a":1}`), so the
/// client's serializer style does not matter. One pass, no allocation.
fn hash_compact(json: &[u8], h: &mut Sha256) {
    let mut in_string = false;
    let mut escaped = false;
    let mut run_start = 0;
    for (i, &b) in json.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            h.update(&json[run_start..i]);
            run_start = i + 1;
        }
    }
    h.update(&json[run_start..]);
}

struct Entry {
    answer: Arc<Cached>,
    expires_ms: u64,
    tick: u64,
}

/// Entries by key, with least-recently-used order and a byte bound.
struct Lru {
    map: HashMap<Key, Entry>,
    order: BTreeMap<u64, Key>,
    bytes: u64,
    max: u64,
    tick: u64,
}

impl Lru {
    fn new(max: u64) -> Lru {
        Lru {
            map: HashMap::new(),
            order: BTreeMap::new(),
            bytes: 0,
            max,
            tick: 0,
        }
    }

    fn get(&mut self, key: &Key, now_ms: u64) -> Result<Option<Arc<Cached>>, Key> {
        let Some(e) = self.map.get_mut(key) else {
            return Ok(None);
        };
        if e.expires_ms <= now_ms {
            self.remove(key);
            return Err(*key); // expired: the caller deletes it from disk
        }
        self.order.remove(&e.tick);
        self.tick += 1;
        e.tick = self.tick;
        self.order.insert(self.tick, *key);
        Ok(Some(e.answer.clone()))
    }

    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.map.remove(key) {
            self.order.remove(&e.tick);
            self.bytes -= e.answer.size();
        }
    }

    /// Inserts, evicting least recently used entries past the bound; returns the evicted.
    fn put(&mut self, key: Key, answer: Arc<Cached>, expires_ms: u64) -> Vec<Key> {
        self.remove(&key);
        let size = answer.size();
        if size > self.max {
            return Vec::new();
        }
        self.tick += 1;
        self.map.insert(
            key,
            Entry {
                answer,
                expires_ms,
                tick: self.tick,
            },
        );
        self.order.insert(self.tick, key);
        self.bytes += size;
        let mut evicted = Vec::new();
        while self.bytes > self.max {
            let Some((_, victim)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.map.remove(&victim) {
                self.bytes -= e.answer.size();
            }
            evicted.push(victim);
        }
        evicted
    }
}

/// Redis: get and refresh the LRU position; returns `{value, pttl}` or nil.
const GET_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return nil end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), KEYS[1])
return {v, redis.call('PTTL', KEYS[1])}
";

/// Redis: store with a TTL and evict least recently used entries past `max_bytes`.
/// KEYS: entry, LRU zset, sizes hash. ARGV: value, ttl ms, max bytes.
const PUT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local total = tonumber(redis.call('HGET', KEYS[3], '_total') or '0')
local old = redis.call('HGET', KEYS[3], KEYS[1])
if old then total = total - tonumber(old) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now, KEYS[1])
redis.call('HSET', KEYS[3], KEYS[1], #ARGV[1])
total = total + #ARGV[1]
local max = tonumber(ARGV[3])
while total > max do
  local victim = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if not victim then break end
  total = total - tonumber(redis.call('HGET', KEYS[3], victim) or '0')
  redis.call('ZREM', KEYS[2], victim)
  redis.call('HDEL', KEYS[3], victim)
  redis.call('DEL', victim)
end
redis.call('HSET', KEYS[3], '_total', total)
return total
";

const LRU_KEY: &str = "fw:cache:lru";
const SIZES_KEY: &str = "fw:cache:sizes";

fn scripts() -> &'static (redis::Script, redis::Script) {
    static S: std::sync::OnceLock<(redis::Script, redis::Script)> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        (
            redis::Script::new(GET_SCRIPT),
            redis::Script::new(PUT_SCRIPT),
        )
    })
}

fn redis_key(key: &Key) -> String {
    format!("fw:cache:{}", hex::encode(key))
}

/// Whose turn it is for a key.
pub enum Turn {
    /// Go upstream; identical requests wait until this guard drops.
    Lead(LeadGuard),
    /// Another request is fetching it: wait for the receiver to close, then look again.
    Follow(watch::Receiver<()>),
}

pub struct LeadGuard {
    cache: Arc<Cache>,
    key: Key,
    _done: watch::Sender<()>,
}

impl Drop for LeadGuard {
    fn drop(&mut self) {
        // Removed before `_done` drops (fields drop after this body): a follower either
        // holds a receiver that will close, or finds no entry and looks the cache up again.
        self.cache.inflight.lock().remove(&self.key);
    }
}

pub struct Cache {
    pub config: CacheConfig,
    lru: Mutex<Lru>,
    writer: Option<disk::Writer>,
    redis: Option<Arc<RedisLink>>,
    inflight: Mutex<HashMap<Key, watch::Receiver<()>>>,
}

impl Cache {
    /// A cache without persistence (tests, benches).
    pub fn in_memory(config: &CacheConfig) -> Cache {
        Cache {
            config: config.clone(),
            lru: Mutex::new(Lru::new(config.max_bytes)),
            writer: None,
            redis: None,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// A cache persisted in the SQLite file at `path` (entries are loaded now), shared
    /// through `redis` when set.
    pub fn open(
        path: &Path,
        config: &CacheConfig,
        redis: Option<Arc<RedisLink>>,
    ) -> Result<Cache, String> {
        let mut cache = Cache::in_memory(config);
        cache.redis = redis;
        if !config.enabled {
            return Ok(cache);
        }
        let now = now_ms();
        let mut evicted = Vec::new();
        {
            let lru = cache.lru.get_mut();
            for (key, answer, expires) in disk::load(path, now)? {
                evicted.extend(lru.put(key, Arc::new(answer), expires));
            }
        }
        let writer = disk::Writer::new(path.to_path_buf());
        for k in evicted {
            writer.send(disk::Op::Delete(k));
        }
        cache.writer = Some(writer);
        Ok(cache)
    }

    /// `(entries, bytes)` held in memory.
    pub fn usage(&self) -> (usize, u64) {
        let l = self.lru.lock();
        (l.map.len(), l.bytes)
    }

    /// The in-memory lookup alone (what the request path pays on a local miss).
    pub fn get_local(&self, key: &Key) -> Option<Arc<Cached>> {
        let found = self.lru.lock().get(key, now_ms());
        match found {
            Ok(hit) => hit,
            Err(expired) => {
                if let Some(w) = &self.writer {
                    w.send(disk::Op::Delete(expired));
                }
                None
            }
        }
    }

    /// Memory, then Redis (when configured and up).
    pub async fn get(&self, key: &Key) -> Option<Arc<Cached>> {
        if let Some(hit) = self.get_local(key) {
            return Some(hit);
        }
        let link = self.redis.as_ref()?;
        let rkey = redis_key(key);
        let found: Option<(Vec<u8>, i64)> = link
            .call("cache get", |mut c| async move {
                scripts()
                    .0
                    .key(&rkey)
                    .key(LRU_KEY)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let (value, pttl) = found?;
        let answer = Arc::new(Cached::decode(&value)?);
        if pttl > 0 {
            self.put_local(*key, answer.clone(), now_ms() + pttl as u64);
        }
        Some(answer)
    }

    fn put_local(&self, key: Key, answer: Arc<Cached>, expires_ms: u64) {
        let evicted = self.lru.lock().put(key, answer.clone(), expires_ms);
        if let Some(w) = &self.writer {
            w.send(disk::Op::Put {
                key,
                answer,
                expires_ms,
                used_ms: now_ms(),
            });
            for k in evicted {
                w.send(disk::Op::Delete(k));
            }
        }
    }

    /// Stores an answer for `ttl` (memory and disk, and Redis when up).
    pub async fn put(&self, key: Key, answer: Cached, ttl: Duration) {
        if answer.body.len() as u64 > self.config.max_entry_bytes || ttl.is_zero() {
            return;
        }
        let ttl_ms = ttl.as_millis().min(u64::MAX as u128) as u64;
        let answer = Arc::new(answer);
        self.put_local(key, answer.clone(), now_ms().saturating_add(ttl_ms));
        if let Some(link) = &self.redis {
            let value = answer.encode();
            let rkey = redis_key(&key);
            let max = self.config.max_bytes;
            let _: Option<i64> = link
                .call("cache put", |mut c| async move {
                    scripts()
                        .1
                        .key(&rkey)
                        .key(LRU_KEY)
                        .key(SIZES_KEY)
                        .arg(value)
                        .arg(ttl_ms.max(1))
                        .arg(max)
                        .invoke_async(&mut c)
                        .await
                })
                .await;
        }
    }

    /// Leads the fetch of `key`, or follows the request already fetching it.
    pub fn turn(self: &Arc<Self>, key: &Key) -> Turn {
        let mut inflight = self.inflight.lock();
        if let Some(rx) = inflight.get(key) {
            return Turn::Follow(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        inflight.insert(*key, rx);
        Turn::Lead(LeadGuard {
            cache: self.clone(),
            key: *key,
            _done: tx,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(n: usize) -> Arc<Cached> {
        Arc::new(Cached {
            provider: "p".into(),
            model: "m".into(),
            body: Bytes::from(vec![b'x'; n]),
        })
    }

    #[test]
    fn key_ignores_stream_flags_and_field_order_but_not_content() {
        let a = key(
            "chat",
            "auto",
            br#"{"messages":[{"role":"user","content":"hi"}],"temperature":0}"#,
            None,
        )
        .unwrap();
        let b = key(
            "chat",
            "auto",
            br#"{"temperature":0,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#,
            None,
        )
        .unwrap();
        assert_eq!(a, b);
        // Whitespace between tokens does not matter; inside strings it does.
        let spaced = key(
            "chat",
            "auto",
            b"{\"messages\": [ {\"role\": \"user\",\n \"content\": \"hi\"} ], \"temperature\": 0}",
            None,
        )
        .unwrap();
        assert_eq!(a, spaced);
        let inner = key(
            "chat",
            "auto",
            br#"{"messages":[{"role":"user","content":"h i"}],"temperature":0}"#,
            None,
        )
        .unwrap();
        assert_ne!(a, inner);
        // Nor does key order inside nested objects.
        let reordered = key(
            "chat",
            "auto",
            br#"{"temperature":0,"messages":[{"content":"hi","role":"user"}]}"#,
            None,
        )
        .unwrap();
        assert_eq!(a, reordered);
        let body = br#"{"messages":[{"role":"user","content":"hi"}],"temperature":0}"#;
        assert_ne!(
            a,
            key(
                "chat",
                "auto",
                br#"{"messages":[{"role":"user","content":"ho"}],"temperature":0}"#,
                None
            )
            .unwrap()
        );
        assert_ne!(a, key("chat", "p/m", body, None).unwrap());
        assert_ne!(a, key("chat", "auto", body, Some("tenant-1")).unwrap());
        assert!(key("chat", "auto", b"{nope", None).is_err());
    }

    #[test]
    fn custom_keys_replace_the_body_and_scopes_separate_keys() {
        assert_eq!(custom_key("chat", "faq-1"), custom_key("chat", "faq-1"));
        assert_ne!(custom_key("chat", "faq-1"), custom_key("chat", "faq-2"));
        let k = custom_key("chat", "faq-1");
        assert_eq!(scoped(k, "key-0"), scoped(k, "key-0"));
        assert_ne!(scoped(k, "key-0"), scoped(k, "key-1"));
        assert_ne!(scoped(k, "key-0"), k);
    }

    #[test]
    fn lru_evicts_least_recently_used_past_the_byte_bound() {
        let size = answer(100).size();
        let mut l = Lru::new(size * 3);
        let k = |i: u8| [i; 32];
        for i in 0..3 {
            assert!(l.put(k(i), answer(100), u64::MAX).is_empty());
        }
        // Touch 0: 1 is now the least recently used.
        assert!(l.get(&k(0), 0).unwrap().is_some());
        assert_eq!(l.put(k(3), answer(100), u64::MAX), vec![k(1)]);
        assert!(l.get(&k(1), 0).unwrap().is_none());
        assert_eq!(l.bytes, size * 3);
        // Expired entries are dropped on lookup.
        l.put(k(4), answer(1), 10);
        assert_eq!(l.get(&k(4), 11), Err(k(4)));
        // Too big for the whole cache: not stored.
        assert!(l.put(k(5), answer(10_000), u64::MAX).is_empty());
        assert!(!l.map.contains_key(&k(5)));
    }

    #[test]
    fn redis_value_round_trips() {
        let a = Cached {
            provider: "groq".into(),
            model: "llama".into(),
            body: Bytes::from_static(b"{\"a\":\"x\ny\"}"),
        };
        assert_eq!(Cached::decode(&a.encode()), Some(a));
    }

    #[tokio::test]
    async fn identical_requests_follow_the_leader() {
        let c = Arc::new(Cache::in_memory(&CacheConfig::default()));
        let k = [1u8; 32];
        let lead = match c.turn(&k) {
            Turn::Lead(g) => g,
            Turn::Follow(_) => panic!("first must lead"),
        };
        let mut rx = match c.turn(&k) {
            Turn::Follow(rx) => rx,
            Turn::Lead(_) => panic!("second must follow"),
        };
        c.put(k, (*answer(3)).clone(), Duration::from_secs(60))
            .await;
        drop(lead);
        assert!(rx.changed().await.is_err(), "the leader finished");
        assert!(c.get(&k).await.is_some());
        assert!(matches!(c.turn(&k), Turn::Lead(_)));
    }
}
