//! Which models may serve a request, and in which order to try them. Pure logic, no I/O.
//!
//! `plan` turns the `model` field plus what the body needs into an ordered candidate list:
//! resolve the selector (auto, `provider/model`, bare id or alias, `dynamic/<route>`), keep
//! models that have every needed capability, drop the ones that cannot be used now
//! (unconfigured, key rejected, cooling down, probe busy, daily limit reached), then order
//! the rest by a weighted random draw (see [`weight`]).

pub mod health;
pub mod load;
pub mod pool;
pub mod routes;
pub mod status;

use crate::config::{Config, Continuation, Cost, ModelType, ProviderKind, Tier};
use crate::errors::ApiError;
use health::Gate;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Instant;

/// What a request needs from a model, inferred from its body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// The kind of model the endpoint needs (chat for chat and responses).
    pub model_type: ModelType,
    pub stream: bool,
    pub tools: bool,
    pub json: bool,
    pub vision: bool,
    /// Estimated prompt tokens (see `request::parse_chat` for the estimator).
    pub prompt_tokens: u32,
    pub max_output_tokens: Option<u32>,
    pub reasoning_effort: Option<Tier>,
    /// `n` > 1: several choices in one answer.
    pub several_choices: bool,
    /// Image requests: the size asked for (`size`), which the model must list.
    pub image_size: Option<(u32, u32)>,
}

/// Capability bits of a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps(u8);

impl Caps {
    pub const TOOLS: Caps = Caps(1);
    pub const JSON: Caps = Caps(2);
    pub const VISION: Caps = Caps(4);
    pub const STREAM: Caps = Caps(8);
    pub const REASONING: Caps = Caps(16);

    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Caps {
        let mut c = Caps(0);
        for n in names {
            c.0 |= match n.as_ref() {
                "tools" => Caps::TOOLS.0,
                "json" => Caps::JSON.0,
                "vision" => Caps::VISION.0,
                "stream" => Caps::STREAM.0,
                "reasoning" => Caps::REASONING.0,
                _ => 0,
            };
        }
        c
    }

    pub fn has(self, other: Caps) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn names(self) -> Vec<&'static str> {
        [
            (Caps::TOOLS, "tools"),
            (Caps::JSON, "json"),
            (Caps::VISION, "vision"),
            (Caps::STREAM, "stream"),
            (Caps::REASONING, "reasoning"),
        ]
        .into_iter()
        .filter(|(c, _)| self.has(*c))
        .map(|(_, n)| n)
        .collect()
    }
}

/// One model of one provider, as the router sees it.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// Index of the provider in `Config::providers` (and the runtime provider table).
    pub provider: usize,
    pub provider_name: String,
    pub provider_kind: ProviderKind,
    /// How its provider continues a partial answer (a resumed stream).
    pub continuation: Continuation,
    /// Whether its format answers several choices (`n` > 1); set from the provider's format
    /// when the state is built (`providers::Format::several_choices`).
    pub several_choices: bool,
    pub simulated: bool,
    /// The provider's own model id, sent upstream.
    pub id: String,
    /// `provider/id`, the id clients see in `/v1/models`.
    pub qualified: String,
    pub aliases: Vec<String>,
    pub model_type: ModelType,
    pub context_window: u32,
    pub max_output_tokens: u32,
    pub caps: Caps,
    pub tier: Tier,
    pub auto: bool,
    pub daily_limit: u32,
    pub rpm: u32,
    /// Token-per-minute ceiling (0 = none).
    pub tpm: u32,
    /// The provider-wide ceilings (0 = none).
    pub provider_rpm: u32,
    pub provider_tpm: u32,
    pub cost: Cost,
    /// Embedding models: the vector space they write into (see `ModelConfig::space`).
    pub space: String,
    /// Image models: the sizes they take (empty = any).
    pub sizes: Vec<(u32, u32)>,
    /// `None` when routable; otherwise why not (missing key, unsupported kind, …).
    pub unavailable: Option<String>,
}

impl ModelEntry {
    /// The sizes an image model takes, as clients write them (`1024x1024`).
    pub fn size_names(&self) -> Vec<String> {
        self.sizes.iter().map(|(w, h)| format!("{w}x{h}")).collect()
    }

    /// `[rpm, tpm, provider rpm, provider tpm]`, 0 where none is configured.
    pub fn ceilings(&self) -> [u32; 4] {
        [self.rpm, self.tpm, self.provider_rpm, self.provider_tpm]
    }

    /// Why this model cannot serve a request with these needs, if it cannot.
    pub fn unfit(&self, needs: &Needs) -> Option<String> {
        if self.model_type != needs.model_type {
            let an = |t: ModelType| match t {
                ModelType::Embedding | ModelType::Image => "an",
                _ => "a",
            };
            return Some(format!(
                "`{}` is {} {} model, not {} {} model",
                self.qualified,
                an(self.model_type),
                self.model_type.as_str(),
                an(needs.model_type),
                needs.model_type.as_str()
            ));
        }
        if let Some((w, h)) = needs.image_size {
            if !self.sizes.is_empty() && !self.sizes.contains(&(w, h)) {
                return Some(format!(
                    "`{}` takes the sizes {}, not {w}x{h}",
                    self.qualified,
                    self.size_names().join(", ")
                ));
            }
        }
        if self.model_type != ModelType::Chat {
            // Capabilities and context windows describe chat models only.
            return None;
        }
        let mut missing = Vec::new();
        for (need, cap, name) in [
            (needs.tools, Caps::TOOLS, "tools"),
            (needs.json, Caps::JSON, "json"),
            (needs.vision, Caps::VISION, "vision"),
            (needs.stream, Caps::STREAM, "stream"),
        ] {
            if need && !self.caps.has(cap) {
                missing.push(name);
            }
        }
        if !missing.is_empty() {
            return Some(format!(
                "`{}` does not support {}",
                self.qualified,
                missing.join(", ")
            ));
        }
        if needs.several_choices && !self.several_choices {
            return Some(format!(
                "`{}` answers one choice per request (its provider's API has no `n`)",
                self.qualified
            ));
        }
        let wanted = needs.prompt_tokens as u64 + needs.max_output_tokens.unwrap_or(0) as u64;
        if wanted > self.context_window as u64 {
            return Some(format!(
                "`{}` has a {}-token context window; the request needs about {wanted}",
                self.qualified, self.context_window
            ));
        }
        None
    }
}

/// The models the gateway knows, with lookup by name.
#[derive(Debug, Default)]
pub struct Catalog {
    pub models: Vec<ModelEntry>,
    by_qualified: HashMap<String, usize>,
    /// Bare ids and aliases → every model answering to that name.
    by_name: HashMap<String, Vec<usize>>,
    /// What `auto` means for embeddings: `[embeddings].default`, else the first `auto = true`
    /// embedding model. One model, so `auto` never drifts between vector spaces.
    pub embedding_default: Option<usize>,
}

impl Catalog {
    /// Builds the catalog. `unavailable[p]` says why provider `p` cannot be used, if so.
    pub fn build(config: &Config, unavailable: &[Option<String>]) -> Catalog {
        let mut cat = Catalog::default();
        for (pi, p) in config.providers.iter().enumerate() {
            for m in &p.models {
                let idx = cat.models.len();
                let qualified = format!("{}/{}", p.name, m.id);
                cat.by_qualified.insert(qualified.clone(), idx);
                for name in std::iter::once(&m.id).chain(&m.aliases) {
                    cat.by_name.entry(name.clone()).or_default().push(idx);
                }
                cat.models.push(ModelEntry {
                    provider: pi,
                    provider_name: p.name.clone(),
                    provider_kind: p.kind,
                    continuation: p.continuation(),
                    several_choices: true,
                    simulated: p.simulated,
                    id: m.id.clone(),
                    qualified,
                    aliases: m.aliases.clone(),
                    model_type: m.model_type,
                    context_window: m.context_window,
                    max_output_tokens: m.max_output_tokens,
                    caps: Caps::from_names(&m.capabilities),
                    tier: m.tier,
                    auto: m.auto,
                    daily_limit: m.daily_limit,
                    rpm: m.rpm,
                    tpm: m.tpm,
                    provider_rpm: p.rpm,
                    provider_tpm: p.tpm,
                    cost: m.cost,
                    space: m.space().to_string(),
                    sizes: m
                        .sizes
                        .iter()
                        .filter_map(|s| crate::config::parse_size(s))
                        .collect(),
                    unavailable: unavailable.get(pi).cloned().flatten(),
                });
            }
        }
        let default = &config.embeddings.default;
        let is_embedding = |&i: &usize| cat.models[i].model_type == ModelType::Embedding;
        cat.embedding_default = if default.is_empty() {
            (0..cat.models.len()).find(|&i| is_embedding(&i) && cat.models[i].auto)
        } else {
            cat.by_qualified
                .get(default)
                .copied()
                .filter(is_embedding)
                .or_else(|| cat.by_name.get(default)?.iter().copied().find(is_embedding))
        };
        cat
    }

    /// The vector space an embeddings request for `model` is bound to (`auto` = the
    /// default's), if the name resolves to an embedding model.
    /// Whether `model` names one model of one provider (`provider/model`).
    pub fn pinned(&self, model: Option<&str>) -> bool {
        model.is_some_and(|m| self.by_qualified.contains_key(m))
    }

    pub fn embedding_space(&self, model: Option<&str>) -> Option<&str> {
        let is_embedding = |i: &usize| self.models[*i].model_type == ModelType::Embedding;
        let idx = match model {
            None | Some("auto") | Some("") => self.embedding_default,
            Some(name) => self
                .by_qualified
                .get(name)
                .copied()
                .filter(is_embedding)
                .or_else(|| self.by_name.get(name)?.iter().copied().find(is_embedding)),
        }?;
        Some(self.models[idx].space.as_str())
    }

    /// Every embedding model writing into `space`, in config order.
    pub fn in_space(&self, space: &str) -> Vec<usize> {
        (0..self.models.len())
            .filter(|&i| {
                self.models[i].model_type == ModelType::Embedding && self.models[i].space == space
            })
            .collect()
    }

    pub fn routable_count(&self) -> usize {
        self.models
            .iter()
            .filter(|m| m.unavailable.is_none())
            .count()
    }
}

/// How the client chose the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    Auto,
    /// `provider/model`: one model; fails over only with `x-gateway-fallback: auto`.
    Pinned,
    /// A bare id or alias: every provider serving it.
    Named,
    /// `dynamic/<route>`: the route's groups, in order.
    Route,
}

/// The models a selector stands for: groups tried in order, each group ordered by weight.
pub struct Selected {
    pub kind: Selection,
    pub groups: Vec<Vec<usize>>,
}

/// What the router knows about one model right now.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub gate: Gate,
    /// Smoothed recent success rate, 0..1.
    pub success: f64,
    /// EWMA latency in ms (0 with no history).
    pub latency_ms: f64,
    pub daily_used: u64,
    /// Why the model's provider is blocked (a rejected key), if it is.
    pub blocked: Option<String>,
    /// Why the model's provider takes no more requests now (at its `max_connections`).
    pub busy: Option<String>,
    /// The failure behind a cooldown.
    pub last_error: Option<String>,
    /// Estimated requests and tokens in the last minute (read only for models with an
    /// `rpm`/`tpm` ceiling on them or their provider).
    pub load: load::Load,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            gate: Gate::Open,
            success: 1.0,
            latency_ms: 0.0,
            daily_used: 0,
            blocked: None,
            busy: None,
            last_error: None,
            load: Default::default(),
        }
    }
}

/// The live state the router reads (health, counters), one snapshot per model.
pub trait Live {
    fn snapshot(&self, model: usize, provider: usize, now: Instant) -> Snapshot;
}

/// A live view where every model is healthy and unused (tests, benches).
pub struct AllHealthy;

impl Live for AllHealthy {
    fn snapshot(&self, _model: usize, _provider: usize, _now: Instant) -> Snapshot {
        Snapshot::default()
    }
}

/// Why a model cannot be tried now, if so (beyond capability, which is checked first).
fn unavailable_now(m: &ModelEntry, s: &Snapshot, now: Instant) -> Option<String> {
    if let Some(why) = &m.unavailable {
        return Some(why.clone());
    }
    if let Some(why) = &s.blocked {
        return Some(why.clone());
    }
    if let Some(why) = &s.busy {
        return Some(why.clone());
    }
    if m.daily_limit > 0 && s.daily_used >= m.daily_limit as u64 {
        return Some(format!(
            "daily limit reached ({}/{} requests today, UTC)",
            s.daily_used, m.daily_limit
        ));
    }
    let after = s.last_error.as_deref().unwrap_or("failures");
    match s.gate {
        Gate::Cooling(until) => Some(format!(
            "cooling down for {:.1} s after: {after}",
            until.saturating_duration_since(now).as_secs_f64()
        )),
        Gate::ProbeBusy => Some(format!(
            "recovering (a probe request is in flight) after: {after}"
        )),
        Gate::Open | Gate::ProbeFree => None,
    }
}

/// The weight of a candidate for `auto` and multi-provider names. A model is drawn first
/// with probability proportional to its weight (the rest of the order is drawn the same
/// way from what remains), which spreads load over good models instead of driving the best
/// one into its rate limit:
///
/// `weight = success⁴ × speed × headroom × pace × tier_fit`
/// - `success`: success rate over the last 100 attempts, smoothed by two assumed successes
///   (no history = healthy, so idle models are not starved). The fourth power
///   makes a model failing half its requests ~16× less likely than a healthy one.
/// - `speed = 1 / (1 + ewma_latency_seconds)`: 1.0 for instant answers, 0.5 at 1 s.
/// - `headroom = 1 − used/daily_limit` (1.0 when unlimited), floored at 0.01.
/// - `pace`: 1.0 until the model's or its provider's estimated requests or tokens in the
///   last minute pass 80 % of an `rpm`/`tpm` ceiling, then falling to 0.02 at the ceiling
///   (`limits::pace`), so the draw moves away before the provider answers 429.
/// - `tier_fit`: with `reasoning_effort`, 1.0 for the matching tier, 0.5 one tier away,
///   0.25 two away; 1.0 without it.
///
/// A half-open model (cooldown over, probe free) goes first (infinite weight): the next
/// request probes it, and every other request skips it until the probe reports. That one
/// request pays a failover if the model is still down; in exchange a recovered model is
/// back within one request instead of waiting for a lucky draw.
pub fn weight(m: &ModelEntry, s: &Snapshot, needs: &Needs) -> f64 {
    let success = s.success.powi(4);
    let speed = 1.0 / (1.0 + s.latency_ms / 1000.0);
    let headroom = if m.daily_limit == 0 {
        1.0
    } else {
        (1.0 - s.daily_used as f64 / m.daily_limit as f64).max(0.01)
    };
    let tier_fit = match needs.reasoning_effort {
        None => 1.0,
        Some(want) => match (want as i32 - m.tier as i32).abs() {
            0 => 1.0,
            1 => 0.5,
            _ => 0.25,
        },
    };
    if s.gate == Gate::ProbeFree {
        return f64::INFINITY;
    }
    let pace = load::headroom_factor(&s.load, m.ceilings());
    (success * speed * headroom * pace * tier_fit).max(1e-9)
}

/// Plans the candidates of chat requests.
#[derive(Debug, Default)]
pub struct Router {
    pub routes: routes::Routes,
}

/// One request's routing inputs.
pub struct Ask<'a> {
    pub model: Option<&'a str>,
    pub needs: &'a Needs,
    /// `x-gateway-fallback: auto`.
    pub fallback_auto: bool,
    /// `x-gateway-metadata`, for route conditions.
    pub metadata: Option<&'a serde_json::Value>,
    pub max_attempts: usize,
    /// `x-gateway-force-provider`: only this provider's models.
    pub provider: Option<&'a str>,
}

impl Router {
    pub fn new(routes: routes::Routes) -> Router {
        Router { routes }
    }

    /// The ordered models to try for a chat request, at most `max_attempts` of them.
    pub fn plan(
        &self,
        catalog: &Catalog,
        live: &dyn Live,
        ask: &Ask,
        now: Instant,
    ) -> Result<Vec<usize>, ApiError> {
        let needs = ask.needs;
        let mut selection = select(catalog, &self.routes, ask.model, ask.metadata, needs)?;
        // Embeddings never leave the vector space of the model asked for.
        let space = (needs.model_type == ModelType::Embedding)
            .then(|| restrict_to_space(catalog, &mut selection, ask.fallback_auto))
            .flatten();
        let mut unfit = Vec::new();
        let mut unavailable = Vec::new();
        // Candidates cooling down: when each comes back, and whether a 429 put it there.
        let mut cooling: Vec<(Instant, bool)> = Vec::new();
        let mut groups: Vec<Vec<(usize, f64)>> = Vec::with_capacity(selection.groups.len());
        for group in &selection.groups {
            let mut ready = Vec::with_capacity(group.len());
            for &i in group {
                let m = &catalog.models[i];
                if let Some(p) = ask.provider.filter(|p| *p != m.provider_name) {
                    unfit.push(format!(
                        "`{}` is not a model of `{p}` (x-gateway-force-provider)",
                        m.qualified
                    ));
                    continue;
                }
                if let Some(why) = m.unfit(needs) {
                    unfit.push(why);
                    continue;
                }
                if space.as_ref().is_some_and(|s| *s != m.space) {
                    unfit.push(format!(
                        "`{}` writes into another vector space (`{}`)",
                        m.qualified, m.space
                    ));
                    continue;
                }
                let s = live.snapshot(i, m.provider, now);
                match unavailable_now(m, &s, now) {
                    Some(why) => {
                        let rate_limited = s.last_error.as_deref() == Some(health::RATE_LIMITED);
                        match s.gate {
                            Gate::Cooling(until) => cooling.push((until, rate_limited)),
                            Gate::ProbeBusy => cooling.push((now + PROBE_WAIT, rate_limited)),
                            _ => {}
                        }
                        unavailable.push(format!("`{}`: {why}", m.qualified))
                    }
                    None => ready.push((i, weight(m, &s, needs))),
                }
            }
            groups.push(ready);
        }
        if groups.iter().all(Vec::is_empty) && unavailable.is_empty() {
            return Err(no_model_could(selection.kind, ask.model, needs, &unfit));
        }
        let mut plan: Vec<usize> = Vec::with_capacity(ask.max_attempts);
        for mut group in groups {
            if plan.len() >= ask.max_attempts {
                break;
            }
            draw_order(&mut group, ask.max_attempts - plan.len());
            for (i, _) in group {
                if !plan.contains(&i) {
                    plan.push(i);
                }
            }
        }
        if selection.kind == Selection::Pinned
            && ask.fallback_auto
            && needs.model_type != ModelType::Embedding
        {
            let mut extra: Vec<(usize, f64)> = auto_pool(catalog, needs.model_type)
                .into_iter()
                .filter(|i| !plan.contains(i))
                .filter_map(|i| {
                    let m = &catalog.models[i];
                    if m.unfit(needs).is_some() {
                        return None;
                    }
                    let s = live.snapshot(i, m.provider, now);
                    unavailable_now(m, &s, now)
                        .is_none()
                        .then(|| (i, weight(m, &s, needs)))
                })
                .collect();
            draw_order(&mut extra, ask.max_attempts.saturating_sub(plan.len()));
            plan.extend(extra.into_iter().map(|(i, _)| i));
        }
        if plan.is_empty() {
            let mut msg = String::from("No capable model can serve this request now: ");
            msg.push_str(&unavailable.join("; "));
            msg.push('.');
            let mut e = ApiError::no_capacity(msg);
            // Whoever knows when capacity returns says so.
            e.retry_after = cooling
                .iter()
                .map(|(until, _)| until.saturating_duration_since(now).as_secs().max(1))
                .min();
            // A pinned model rate-limited by its provider is the client's own limit there.
            let all_rate_limited = !cooling.is_empty()
                && cooling.len() == unavailable.len()
                && cooling.iter().all(|(_, r)| *r);
            if all_rate_limited && selection.kind == Selection::Pinned && !ask.fallback_auto {
                e.status = 429;
                e.kind = "rate_limit_error";
                e.code = Some("rate_limited");
            }
            return Err(e);
        }
        plan.truncate(ask.max_attempts);
        Ok(plan)
    }
}

/// How soon a model whose recovery probe is in flight is said to return.
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Orders the first `keep` candidates by a weighted random draw without replacement
/// (Efraimidis–Spirakis: largest `u^(1/w)` first), so each position is drawn in proportion
/// to weight; the rest are dropped.
fn draw_order(candidates: &mut Vec<(usize, f64)>, keep: usize) {
    if candidates.len() > 1 {
        for c in candidates.iter_mut() {
            let u = fastrand::f64().max(f64::MIN_POSITIVE);
            // Keyed by ln(u)/w (monotonic with u^(1/w)); the weight slot is reused for the key.
            c.1 = u.ln() / c.1;
        }
        let by_key = |a: &(usize, f64), b: &(usize, f64)| b.1.total_cmp(&a.1);
        if keep < candidates.len() {
            candidates.select_nth_unstable_by(keep, by_key);
            candidates.truncate(keep);
        }
        candidates.sort_unstable_by(by_key);
    }
    candidates.truncate(keep);
}

fn auto_pool(catalog: &Catalog, model_type: ModelType) -> Vec<usize> {
    if model_type == ModelType::Embedding {
        return catalog.embedding_default.into_iter().collect();
    }
    (0..catalog.models.len())
        .filter(|&i| catalog.models[i].auto && catalog.models[i].model_type == model_type)
        .collect()
}

/// Keeps an embedding request inside one vector space: the space of the first embedding
/// model selected. Models of that space at other providers (or declared equivalent with
/// `vector_space`) are added as a fallback group, except for a pinned model without
/// `x-gateway-fallback: auto`. Returns the space.
fn restrict_to_space(
    catalog: &Catalog,
    selection: &mut Selected,
    fallback_auto: bool,
) -> Option<String> {
    let anchor = selection
        .groups
        .iter()
        .flatten()
        .copied()
        .find(|&i| catalog.models[i].model_type == ModelType::Embedding)?;
    let space = catalog.models[anchor].space.clone();
    if selection.kind != Selection::Pinned || fallback_auto {
        let chosen: Vec<usize> = selection.groups.iter().flatten().copied().collect();
        let equivalents: Vec<usize> = catalog
            .in_space(&space)
            .into_iter()
            .filter(|i| !chosen.contains(i))
            .collect();
        selection.groups.push(equivalents);
    }
    Some(space)
}

fn select(
    catalog: &Catalog,
    routes: &routes::Routes,
    model: Option<&str>,
    metadata: Option<&serde_json::Value>,
    needs: &Needs,
) -> Result<Selected, ApiError> {
    let name = match model {
        None | Some("auto") | Some("") => {
            return Ok(Selected {
                kind: Selection::Auto,
                groups: vec![auto_pool(catalog, needs.model_type)],
            })
        }
        Some(name) => name,
    };
    if let Some(&i) = catalog.by_qualified.get(name) {
        return Ok(Selected {
            kind: Selection::Pinned,
            groups: vec![vec![i]],
        });
    }
    if let Some(list) = catalog.by_name.get(name) {
        return Ok(Selected {
            kind: Selection::Named,
            groups: vec![list.clone()],
        });
    }
    if let Some(route) = name.strip_prefix("dynamic/") {
        let targets = routes.resolve(route, metadata).ok_or_else(|| {
            ApiError::unknown_model(format!(
                "No route named `{route}` is configured ([[routes]] in the config)."
            ))
        })?;
        let groups = targets
            .iter()
            .map(|t| resolve_target_typed(catalog, t, needs.model_type))
            .collect();
        return Ok(Selected {
            kind: Selection::Route,
            groups,
        });
    }
    Err(ApiError::unknown_model(format!(
        "The model `{name}` does not exist on this gateway. Use \"auto\", or an id from GET /v1/models."
    )))
}

/// A route target (`auto`, `provider/model`, or a bare id/alias) → models.
pub fn resolve_target(catalog: &Catalog, target: &str) -> Vec<usize> {
    resolve_target_typed(catalog, target, ModelType::Chat)
}

fn resolve_target_typed(catalog: &Catalog, target: &str, model_type: ModelType) -> Vec<usize> {
    if target == "auto" {
        return auto_pool(catalog, model_type);
    }
    if let Some(&i) = catalog.by_qualified.get(target) {
        return vec![i];
    }
    catalog.by_name.get(target).cloned().unwrap_or_default()
}

/// Whether a route target names something in the catalog.
pub fn target_exists(catalog: &Catalog, target: &str) -> bool {
    target == "auto" || !resolve_target(catalog, target).is_empty()
}

fn no_model_could(
    selection: Selection,
    model: Option<&str>,
    needs: &Needs,
    unfit: &[String],
) -> ApiError {
    let mut msg = match selection {
        Selection::Auto => String::from("No model on this gateway can serve this request"),
        _ => format!(
            "The model `{}` cannot serve this request",
            model.unwrap_or("")
        ),
    };
    let mut wanted = Vec::new();
    for (need, name) in [
        (needs.tools, "tools"),
        (needs.json, "json"),
        (needs.vision, "vision"),
        (needs.stream, "stream"),
        (needs.several_choices, "n > 1 (several choices)"),
    ] {
        if need {
            wanted.push(name);
        }
    }
    if !wanted.is_empty() {
        let _ = write!(msg, " (it needs: {})", wanted.join(", "));
    }
    if unfit.is_empty() {
        msg.push_str(": no models are configured for it.");
    } else {
        let _ = write!(msg, ": {}.", unfit.join("; "));
    }
    let mut e = ApiError::invalid(msg);
    e.code = Some("model_not_capable");
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let text = r#"
[[providers]]
name = "a"
kind = "openai"
base_url = "http://127.0.0.1:1"
  [[providers.models]]
  id = "small"
  aliases = ["llama"]
  capabilities = ["stream"]
  context_window = 1000
  [[providers.models]]
  id = "vision"
  capabilities = ["stream", "vision", "tools"]
  context_window = 100000
[[providers]]
name = "b"
kind = "openai"
base_url = "http://127.0.0.1:2"
  [[providers.models]]
  id = "llama-b"
  aliases = ["llama"]
  capabilities = ["stream", "tools"]
  context_window = 100000
  [[providers.models]]
  id = "embed"
  type = "embedding"
"#;
        let c = Config::parse(text).unwrap();
        Catalog::build(&c, &[None, None])
    }

    fn plan_for(
        r: &Router,
        cat: &Catalog,
        model: Option<&str>,
        needs: &Needs,
        fallback_auto: bool,
        max_attempts: usize,
    ) -> Result<Vec<usize>, ApiError> {
        let ask = Ask {
            model,
            needs,
            fallback_auto,
            metadata: None,
            max_attempts,
            provider: None,
        };
        r.plan(cat, &AllHealthy, &ask, Instant::now())
    }

    fn ids(cat: &Catalog, plan: &[usize]) -> Vec<String> {
        plan.iter()
            .map(|&i| cat.models[i].qualified.clone())
            .collect()
    }

    #[test]
    fn auto_spreads_over_capable_chat_models() {
        let cat = catalog();
        let r = Router::default();
        let n = Needs::default();
        let mut firsts = HashMap::new();
        for _ in 0..300 {
            let p = plan_for(&r, &cat, Some("auto"), &n, false, 9).unwrap();
            assert_eq!(p.len(), 3);
            assert!(!ids(&cat, &p).contains(&"b/embed".to_string()));
            *firsts.entry(p[0]).or_insert(0) += 1;
        }
        assert_eq!(firsts.len(), 3);
        assert!(firsts.values().all(|&n| n > 40), "{firsts:?}");
    }

    /// A live view with fixed snapshots per model index.
    struct Fixed(HashMap<usize, Snapshot>);

    impl Live for Fixed {
        fn snapshot(&self, model: usize, _provider: usize, _now: Instant) -> Snapshot {
            self.0.get(&model).cloned().unwrap_or_default()
        }
    }

    fn plan_live(
        cat: &Catalog,
        live: &dyn Live,
        model: Option<&str>,
    ) -> Result<Vec<usize>, ApiError> {
        let needs = Needs::default();
        let ask = Ask {
            model,
            needs: &needs,
            fallback_auto: false,
            metadata: None,
            max_attempts: 9,
            provider: None,
        };
        Router::default().plan(cat, live, &ask, Instant::now())
    }

    #[test]
    fn unhealthy_models_are_drawn_less_often() {
        let cat = catalog();
        let sick = cat.by_qualified["a/vision"];
        let live = Fixed(HashMap::from([(
            sick,
            Snapshot {
                success: 0.5,
                ..Snapshot::default()
            },
        )]));
        let mut first_sick = 0;
        for _ in 0..3000 {
            first_sick += usize::from(plan_live(&cat, &live, None).unwrap()[0] == sick);
        }
        // weights 1 : 1 : 1/16 → about 3% first.
        assert!(first_sick < 200, "{first_sick}");
        assert!(first_sick > 10, "{first_sick}");
    }

    #[test]
    fn cooling_exhausted_and_blocked_models_are_skipped_with_reasons() {
        let cat = catalog();
        let now = Instant::now();
        let live = Fixed(HashMap::from([
            (
                cat.by_qualified["a/small"],
                Snapshot {
                    gate: Gate::Cooling(now + std::time::Duration::from_secs(30)),
                    last_error: Some("rate limited (429)".into()),
                    ..Snapshot::default()
                },
            ),
            (
                cat.by_qualified["a/vision"],
                Snapshot {
                    gate: Gate::ProbeBusy,
                    ..Snapshot::default()
                },
            ),
            (
                cat.by_qualified["b/llama-b"],
                Snapshot {
                    blocked: Some("key rejected".into()),
                    ..Snapshot::default()
                },
            ),
        ]));
        let e = plan_live(&cat, &live, None).unwrap_err();
        assert_eq!(e.status, 503);
        for needle in [
            "a/small`: cooling down for",
            "rate limited (429)",
            "a/vision`: recovering",
            "b/llama-b`: key rejected",
        ] {
            assert!(e.message.contains(needle), "{needle}: {}", e.message);
        }
    }

    #[test]
    fn a_model_whose_provider_is_at_max_connections_is_skipped_with_the_reason() {
        let cat = catalog();
        let full = cat.by_qualified["a/vision"];
        let live = Fixed(HashMap::from([(
            full,
            Snapshot {
                busy: Some("its provider is at max_connections (2 requests in flight)".into()),
                ..Snapshot::default()
            },
        )]));
        for _ in 0..50 {
            assert!(!plan_live(&cat, &live, None).unwrap().contains(&full));
        }
        let e = plan_live(&cat, &live, Some("a/vision")).unwrap_err();
        assert_eq!(e.status, 503);
        assert!(e.message.contains("at max_connections"), "{}", e.message);
    }

    #[test]
    fn daily_limit_exhausts_a_model() {
        let mut cat = catalog();
        let i = cat.by_qualified["a/small"];
        cat.models[i].daily_limit = 10;
        let live = Fixed(HashMap::from([(
            i,
            Snapshot {
                daily_used: 10,
                ..Snapshot::default()
            },
        )]));
        let e = plan_live(&cat, &live, Some("a/small")).unwrap_err();
        assert!(
            e.message.contains("daily limit reached (10/10"),
            "{}",
            e.message
        );
        let m = &cat.models[i];
        let half = Snapshot {
            daily_used: 5,
            ..Snapshot::default()
        };
        assert!((weight(m, &half, &Needs::default()) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_model_near_its_rpm_ceiling_is_drawn_less_often() {
        use crate::live as board;
        use crate::live::pace::Pace;
        use load::Load;
        let mut cat = catalog();
        let busy = cat.by_qualified["a/vision"];
        cat.models[busy].rpm = 30;
        // The estimate comes from the request rate the gateway sent (pingora-limits).
        let pace = Pace::default();
        for _ in 0..29 {
            pace.admit("a/vision", "a", 10);
        }
        let board = board::Board::in_memory();
        let states: Vec<_> = cat
            .models
            .iter()
            .map(|m| board.model(&m.qualified))
            .collect();
        let providers = vec![
            board::ProviderState::default(),
            board::ProviderState::default(),
        ];
        let live = board::LiveBoard {
            models: &states,
            providers: &providers,
            slots: &[],
            pools: &[],
            catalog: &cat,
            pace: &pace,
        };
        let s = live.snapshot(busy, 0, Instant::now());
        assert_eq!(s.load.model_rpm, 29.0);
        // 29/30 of the ceiling: (1 - 0.967) / 0.2 ≈ 0.17 of a free model's weight.
        let idle = Snapshot {
            load: Default::default(),
            ..s.clone()
        };
        let ratio = weight(&cat.models[busy], &s, &Needs::default())
            / weight(&cat.models[busy], &idle, &Needs::default());
        assert!((ratio - (1.0 - 29.0 / 30.0) / 0.2).abs() < 1e-9, "{ratio}");
        let fixed = Fixed(HashMap::from([(
            busy,
            Snapshot {
                load: Load {
                    model_rpm: 29.0,
                    ..Load::default()
                },
                ..Snapshot::default()
            },
        )]));
        let mut first_busy = 0;
        for _ in 0..3000 {
            first_busy += usize::from(plan_live(&cat, &fixed, None).unwrap()[0] == busy);
        }
        // weights 1 : 1 : 0.17 → about 7.7 % first (vs 33 % unloaded).
        assert!(first_busy < 400, "{first_busy}");
        assert!(first_busy > 80, "{first_busy}");
    }

    #[test]
    fn reasoning_effort_prefers_the_matching_tier() {
        let cat = catalog();
        let m = &cat.models[cat.by_qualified["a/vision"]];
        let s = Snapshot::default();
        let mut needs = Needs {
            reasoning_effort: Some(Tier::Medium),
            ..Needs::default()
        };
        assert_eq!(weight(m, &s, &needs), 1.0);
        needs.reasoning_effort = Some(Tier::High);
        assert_eq!(weight(m, &s, &needs), 0.5);
    }

    #[test]
    fn routes_try_groups_in_order() {
        let text = r#"
[[providers]]
name = "a"
kind = "openai"
base_url = "http://127.0.0.1:1"
  [[providers.models]]
  id = "x"
  [[providers.models]]
  id = "y"
[[routes]]
name = "chain"
models = ["a/y", "a/x"]
"#;
        let c = Config::parse(text).unwrap();
        let cat = Catalog::build(&c, &[None]);
        let r = Router::new(routes::Routes::new(&c.routes));
        let needs = Needs::default();
        let ask = Ask {
            model: Some("dynamic/chain"),
            needs: &needs,
            fallback_auto: false,
            metadata: None,
            max_attempts: 9,
            provider: None,
        };
        for _ in 0..20 {
            let p = r.plan(&cat, &AllHealthy, &ask, Instant::now()).unwrap();
            assert_eq!(ids(&cat, &p), vec!["a/y", "a/x"]);
        }
        let ask = Ask {
            model: Some("dynamic/none"),
            ..ask
        };
        assert_eq!(
            r.plan(&cat, &AllHealthy, &ask, Instant::now())
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn several_choices_go_only_to_formats_that_answer_them() {
        let mut cat = catalog();
        for m in &mut cat.models {
            m.several_choices = m.qualified != "b/llama-b";
        }
        let needs = Needs {
            several_choices: true,
            ..Needs::default()
        };
        let plan = plan_for(&Router::default(), &cat, Some("llama"), &needs, false, 9).unwrap();
        assert_eq!(ids(&cat, &plan), vec!["a/small"]);
        let e = plan_for(
            &Router::default(),
            &cat,
            Some("b/llama-b"),
            &needs,
            false,
            9,
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.message.contains("n > 1") && e.message.contains("one choice per request"),
            "{}",
            e.message
        );
    }

    #[test]
    fn capability_filter_keeps_only_capable_models() {
        let cat = catalog();
        let needs = Needs {
            vision: true,
            ..Needs::default()
        };
        let plan = plan_for(&Router::default(), &cat, None, &needs, false, 9).unwrap();
        assert_eq!(ids(&cat, &plan), vec!["a/vision"]);
    }

    #[test]
    fn context_window_counts_prompt_and_output() {
        let cat = catalog();
        let needs = Needs {
            prompt_tokens: 900,
            max_output_tokens: Some(200),
            ..Needs::default()
        };
        let e = plan_for(&Router::default(), &cat, Some("a/small"), &needs, false, 9).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("context window"), "{}", e.message);
    }

    #[test]
    fn alias_spans_providers_and_pinned_stays_pinned() {
        let cat = catalog();
        let r = Router::default();
        let plan = plan_for(&r, &cat, Some("llama"), &Needs::default(), false, 9).unwrap();
        assert_eq!(plan.len(), 2);
        let plan = plan_for(&r, &cat, Some("b/llama-b"), &Needs::default(), false, 9).unwrap();
        assert_eq!(ids(&cat, &plan), vec!["b/llama-b"]);
        let plan = plan_for(&r, &cat, Some("b/llama-b"), &Needs::default(), true, 9).unwrap();
        assert_eq!(plan[0], cat.by_qualified["b/llama-b"]);
        assert_eq!(plan.len(), 3);
    }

    #[test]
    fn no_capable_model_is_400_naming_the_capability() {
        let cat = catalog();
        let needs = Needs {
            vision: true,
            json: true,
            ..Needs::default()
        };
        let e = plan_for(&Router::default(), &cat, None, &needs, false, 9).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("json"), "{}", e.message);
    }

    #[test]
    fn unconfigured_providers_give_503_with_reasons() {
        let c = Config::parse(
            "[[providers]]\nname=\"a\"\nkind=\"openai\"\nbase_url=\"http://x\"\n[[providers.models]]\nid=\"m\"\n",
        )
        .unwrap();
        let cat = Catalog::build(&c, &[Some("GROQ_API_KEY is not set".into())]);
        let e = plan_for(&Router::default(), &cat, None, &Needs::default(), false, 9).unwrap_err();
        assert_eq!(e.status, 503);
        assert!(e.message.contains("GROQ_API_KEY"));
    }

    #[test]
    fn unknown_model_is_400() {
        let cat = catalog();
        let e = plan_for(
            &Router::default(),
            &cat,
            Some("nope"),
            &Needs::default(),
            false,
            9,
        )
        .unwrap_err();
        assert_eq!((e.status, e.code), (400, Some("model_not_found")));
    }

    fn embedding_catalog(default: &str) -> Catalog {
        let text = format!(
            r#"
[embeddings]
default = "{default}"
[[providers]]
name = "a"
kind = "openai"
base_url = "http://127.0.0.1:1"
  [[providers.models]]
  id = "chat"
  [[providers.models]]
  id = "BAAI/bge-m3"
  type = "embedding"
  vector_space = "bge-m3"
  [[providers.models]]
  id = "text-embedding-3-small"
  type = "embedding"
  [[providers.models]]
  id = "whisper"
  type = "transcription"
[[providers]]
name = "b"
kind = "workers-ai"
base_url = "http://127.0.0.1:2"
  [[providers.models]]
  id = "@cf/baai/bge-m3"
  type = "embedding"
  vector_space = "bge-m3"
  [[providers.models]]
  id = "text-embedding-3-small"
  type = "embedding"
"#
        );
        let c = Config::parse(&text).unwrap();
        Catalog::build(&c, &[None, None])
    }

    fn embed_plan(cat: &Catalog, model: Option<&str>, fallback_auto: bool) -> Vec<String> {
        let needs = Needs {
            model_type: ModelType::Embedding,
            ..Needs::default()
        };
        let ask = Ask {
            model,
            needs: &needs,
            fallback_auto,
            metadata: None,
            max_attempts: 9,
            provider: None,
        };
        match Router::default().plan(cat, &AllHealthy, &ask, Instant::now()) {
            Ok(p) => ids(cat, &p),
            Err(e) => vec![format!("{} {}", e.status, e.message)],
        }
    }

    #[test]
    fn embeddings_stay_in_one_vector_space() {
        let cat = embedding_catalog("a/BAAI/bge-m3");
        for _ in 0..20 {
            // auto = the default first, then its declared equivalent; never another space.
            assert_eq!(
                embed_plan(&cat, None, false),
                vec!["a/BAAI/bge-m3", "b/@cf/baai/bge-m3"]
            );
            let mut same_id = embed_plan(&cat, Some("text-embedding-3-small"), false);
            same_id.sort();
            assert_eq!(
                same_id,
                vec!["a/text-embedding-3-small", "b/text-embedding-3-small"]
            );
        }
        assert_eq!(
            embed_plan(&cat, Some("b/@cf/baai/bge-m3"), false),
            vec!["b/@cf/baai/bge-m3"]
        );
        assert_eq!(
            embed_plan(&cat, Some("b/@cf/baai/bge-m3"), true),
            vec!["b/@cf/baai/bge-m3", "a/BAAI/bge-m3"]
        );
        let wrong = embed_plan(&cat, Some("a/chat"), false);
        assert!(
            wrong[0].starts_with("400") && wrong[0].contains("not an embedding model"),
            "{wrong:?}"
        );
        // Without a default, auto is the first auto = true embedding model.
        let cat = embedding_catalog("");
        assert_eq!(embed_plan(&cat, None, false)[0], "a/BAAI/bge-m3");
        assert_eq!(
            cat.embedding_space(Some("text-embedding-3-small")),
            Some("text-embedding-3-small")
        );
    }

    #[test]
    fn each_endpoint_sees_only_its_model_type() {
        let cat = embedding_catalog("");
        let needs = Needs {
            model_type: ModelType::Transcription,
            ..Needs::default()
        };
        let plan = plan_for(&Router::default(), &cat, None, &needs, false, 9).unwrap();
        assert_eq!(ids(&cat, &plan), vec!["a/whisper"]);
        let plan = plan_for(&Router::default(), &cat, None, &Needs::default(), false, 9).unwrap();
        assert_eq!(ids(&cat, &plan), vec!["a/chat"]);
    }

    #[test]
    fn attempts_are_capped() {
        let cat = catalog();
        let plan = plan_for(&Router::default(), &cat, None, &Needs::default(), false, 2).unwrap();
        assert_eq!(plan.len(), 2);
    }
}
