//! Which models may serve a request, and in which order to try them. Pure logic, no I/O.
//!
//! `plan` turns the `model` field plus what the body needs into an ordered candidate list:
//! resolve the selector (auto, `provider/model`, bare id or alias), keep models that have
//! every needed capability, drop the ones that cannot be used now (unconfigured provider),
//! then order them. Ordering is the seam for the health-aware router: today it is a
//! round-robin rotation for `auto` and multi-provider names.

use crate::config::{Config, Cost, ModelType, ProviderKind, Tier};
use crate::errors::ApiError;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a request needs from a model, inferred from its body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub stream: bool,
    pub tools: bool,
    pub json: bool,
    pub vision: bool,
    /// Estimated prompt tokens (see `request::parse_chat` for the estimator).
    pub prompt_tokens: u32,
    pub max_output_tokens: Option<u32>,
    pub reasoning_effort: Option<Tier>,
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
    pub cost: Cost,
    /// `None` when routable; otherwise why not (missing key, unsupported kind, …).
    pub unavailable: Option<String>,
}

impl ModelEntry {
    /// Why this model cannot serve a chat request with these needs, if it cannot.
    pub fn unfit(&self, needs: &Needs) -> Option<String> {
        if self.model_type != ModelType::Chat {
            return Some(format!(
                "`{}` is a {:?} model, not a chat model",
                self.qualified, self.model_type
            ));
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
                    cost: m.cost,
                    unavailable: unavailable.get(pi).cloned().flatten(),
                });
            }
        }
        cat
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
enum Selection {
    Auto,
    /// `provider/model`: one model; fails over only with `x-gateway-fallback: auto`.
    Pinned,
    /// A bare id or alias: every provider serving it.
    Named,
}

/// Orders candidates. Round-robin today; the health-aware scorer replaces `order`.
#[derive(Debug, Default)]
pub struct Router {
    next: AtomicUsize,
}

impl Router {
    /// The ordered models to try for a chat request, at most `max_attempts` of them.
    pub fn plan(
        &self,
        catalog: &Catalog,
        model: Option<&str>,
        needs: &Needs,
        fallback_auto: bool,
        max_attempts: usize,
    ) -> Result<Vec<usize>, ApiError> {
        let (selection, pool) = select(catalog, model)?;
        let mut unfit = Vec::new();
        let mut unavailable = Vec::new();
        let mut ready = Vec::with_capacity(pool.len());
        for &i in &pool {
            let m = &catalog.models[i];
            if let Some(why) = m.unfit(needs) {
                unfit.push(why);
            } else if let Some(why) = &m.unavailable {
                unavailable.push(format!("`{}`: {why}", m.qualified));
            } else {
                ready.push(i);
            }
        }
        if ready.is_empty() && unavailable.is_empty() {
            return Err(no_model_could(selection, model, needs, &unfit));
        }
        self.order(&mut ready);
        if selection == Selection::Pinned && fallback_auto {
            let mut extra: Vec<usize> = auto_pool(catalog)
                .into_iter()
                .filter(|i| !ready.contains(i))
                .filter(|&i| {
                    let m = &catalog.models[i];
                    m.unfit(needs).is_none() && m.unavailable.is_none()
                })
                .collect();
            self.order(&mut extra);
            ready.extend(extra);
        }
        if ready.is_empty() {
            let mut msg = String::from("No capable model can serve this request now: ");
            msg.push_str(&unavailable.join("; "));
            msg.push('.');
            return Err(ApiError::no_capacity(msg));
        }
        ready.truncate(max_attempts);
        Ok(ready)
    }

    /// Spreads load: rotates the candidate list by a shared counter.
    fn order(&self, candidates: &mut [usize]) {
        if candidates.len() > 1 {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            candidates.rotate_left(n % candidates.len());
        }
    }
}

fn auto_pool(catalog: &Catalog) -> Vec<usize> {
    (0..catalog.models.len())
        .filter(|&i| catalog.models[i].auto && catalog.models[i].model_type == ModelType::Chat)
        .collect()
}

fn select(catalog: &Catalog, model: Option<&str>) -> Result<(Selection, Vec<usize>), ApiError> {
    let name = match model {
        None | Some("auto") | Some("") => return Ok((Selection::Auto, auto_pool(catalog))),
        Some(name) => name,
    };
    if let Some(&i) = catalog.by_qualified.get(name) {
        return Ok((Selection::Pinned, vec![i]));
    }
    if let Some(list) = catalog.by_name.get(name) {
        return Ok((Selection::Named, list.clone()));
    }
    if let Some(route) = name.strip_prefix("dynamic/") {
        return Err(ApiError::unknown_model(format!(
            "No route named `{route}` is configured ([[routes]] in the config)."
        )));
    }
    Err(ApiError::unknown_model(format!(
        "The model `{name}` does not exist on this gateway. Use \"auto\", or an id from GET /v1/models."
    )))
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

    fn ids(cat: &Catalog, plan: &[usize]) -> Vec<String> {
        plan.iter()
            .map(|&i| cat.models[i].qualified.clone())
            .collect()
    }

    #[test]
    fn auto_rotates_over_capable_chat_models() {
        let cat = catalog();
        let r = Router::default();
        let n = Needs::default();
        let first = ids(&cat, &r.plan(&cat, Some("auto"), &n, false, 9).unwrap());
        let second = ids(&cat, &r.plan(&cat, None, &n, false, 9).unwrap());
        assert_eq!(first.len(), 3);
        assert!(!first.contains(&"b/embed".to_string()));
        assert_ne!(first[0], second[0]);
    }

    #[test]
    fn capability_filter_keeps_only_capable_models() {
        let cat = catalog();
        let needs = Needs {
            vision: true,
            ..Needs::default()
        };
        let plan = Router::default()
            .plan(&cat, None, &needs, false, 9)
            .unwrap();
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
        let e = Router::default()
            .plan(&cat, Some("a/small"), &needs, false, 9)
            .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("context window"), "{}", e.message);
    }

    #[test]
    fn alias_spans_providers_and_pinned_stays_pinned() {
        let cat = catalog();
        let r = Router::default();
        let plan = r
            .plan(&cat, Some("llama"), &Needs::default(), false, 9)
            .unwrap();
        assert_eq!(plan.len(), 2);
        let plan = r
            .plan(&cat, Some("b/llama-b"), &Needs::default(), false, 9)
            .unwrap();
        assert_eq!(ids(&cat, &plan), vec!["b/llama-b"]);
        let plan = r
            .plan(&cat, Some("b/llama-b"), &Needs::default(), true, 9)
            .unwrap();
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
        let e = Router::default()
            .plan(&cat, None, &needs, false, 9)
            .unwrap_err();
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
        let e = Router::default()
            .plan(&cat, None, &Needs::default(), false, 9)
            .unwrap_err();
        assert_eq!(e.status, 503);
        assert!(e.message.contains("GROQ_API_KEY"));
    }

    #[test]
    fn unknown_model_is_400() {
        let cat = catalog();
        let e = Router::default()
            .plan(&cat, Some("nope"), &Needs::default(), false, 9)
            .unwrap_err();
        assert_eq!((e.status, e.code), (400, Some("model_not_found")));
    }

    #[test]
    fn attempts_are_capped() {
        let cat = catalog();
        let plan = Router::default()
            .plan(&cat, None, &Needs::default(), false, 2)
            .unwrap();
        assert_eq!(plan.len(), 2);
    }
}
