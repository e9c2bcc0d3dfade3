//! Named routes: `model: "dynamic/<name>"` picks models by a route from `[[routes]]`.
//!
//! ```toml
//! [[routes]]
//! name = "support"
//! models = ["groq/llama-3.3-70b-versatile", "cerebras/gpt-oss-120b", "auto"]  # fallback chain
//!
//! [[routes]]
//! name = "ab-test"
//! split = [{ model = "groq/openai/gpt-oss-120b", weight = 90 }, { model = "gemini/gemini-2.5-flash", weight = 10 }]
//!
//! [[routes]]
//! name = "by-plan"
//! models = ["auto"]                       # when no rule matches
//!   [[routes.rules]]
//!   when = { plan = "free" }              # every key must equal the x-gateway-metadata value
//!   models = ["llama-3.1-8b"]
//! ```
//!
//! A chain is tried in order (each entry may itself stand for several models: an alias or
//! `auto`, ordered by weight). A split draws its first entry in proportion to the weights,
//! then falls back to the others by descending weight. Rules are checked in order; the first
//! whose `when` matches replaces the route's own `models`/`split`.

use crate::config::{RouteConfig, RouteTargets};
use serde_json::Value;
use std::collections::HashMap;

#[derive(Debug, Clone)]
struct Targets {
    chain: Vec<String>,
    split: Vec<(String, u32)>,
}

impl From<&RouteTargets> for Targets {
    fn from(t: &RouteTargets) -> Self {
        Targets {
            chain: t.models.clone(),
            split: t
                .split
                .iter()
                .map(|s| (s.model.clone(), s.weight))
                .collect(),
        }
    }
}

impl Targets {
    /// The ordered groups for one request.
    fn draw(&self) -> Vec<String> {
        if self.split.is_empty() {
            return self.chain.clone();
        }
        let total: u64 = self.split.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut pick = fastrand::u64(..total.max(1));
        let mut first = 0;
        for (i, (_, w)) in self.split.iter().enumerate() {
            if pick < u64::from(*w) {
                first = i;
                break;
            }
            pick -= u64::from(*w);
        }
        let mut rest: Vec<&(String, u32)> = self
            .split
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != first)
            .map(|(_, t)| t)
            .collect();
        rest.sort_by_key(|t| std::cmp::Reverse(t.1));
        std::iter::once(self.split[first].0.clone())
            .chain(rest.into_iter().map(|t| t.0.clone()))
            .chain(self.chain.iter().cloned())
            .collect()
    }
}

#[derive(Debug, Clone)]
struct Rule {
    when: Vec<(String, Value)>,
    targets: Targets,
}

#[derive(Debug, Clone)]
struct Route {
    default: Targets,
    rules: Vec<Rule>,
}

/// All named routes.
#[derive(Debug, Default)]
pub struct Routes {
    routes: HashMap<String, Route>,
}

impl Routes {
    pub fn new(configs: &[RouteConfig]) -> Routes {
        let routes = configs
            .iter()
            .map(|r| {
                let rules = r
                    .rules
                    .iter()
                    .map(|rule| Rule {
                        when: rule
                            .when
                            .iter()
                            .map(|(k, v)| {
                                (k.clone(), serde_json::to_value(v).unwrap_or(Value::Null))
                            })
                            .collect(),
                        targets: Targets::from(&rule.targets),
                    })
                    .collect();
                (
                    r.name.clone(),
                    Route {
                        default: Targets::from(&r.targets),
                        rules,
                    },
                )
            })
            .collect();
        Routes { routes }
    }

    /// The ordered targets of route `name` for a request with `metadata`.
    pub fn resolve(&self, name: &str, metadata: Option<&Value>) -> Option<Vec<String>> {
        let route = self.routes.get(name)?;
        let matches = |rule: &Rule| {
            rule.when
                .iter()
                .all(|(k, v)| metadata.and_then(|m| m.get(k)) == Some(v))
        };
        let targets = route
            .rules
            .iter()
            .find(|r| matches(r))
            .map_or(&route.default, |r| &r.targets);
        Some(targets.draw())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn routes() -> Routes {
        let c = Config::parse(
            r#"
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
models = ["a/x", "a/y", "auto"]
[[routes]]
name = "ab"
split = [{ model = "a/x", weight = 90 }, { model = "a/y", weight = 10 }]
[[routes]]
name = "plan"
models = ["a/y"]
  [[routes.rules]]
  when = { plan = "free", region = "eu" }
  models = ["a/x"]
"#,
        )
        .unwrap();
        Routes::new(&c.routes)
    }

    #[test]
    fn chain_is_kept_in_order() {
        assert_eq!(
            routes().resolve("chain", None).unwrap(),
            vec!["a/x", "a/y", "auto"]
        );
        assert!(routes().resolve("missing", None).is_none());
    }

    #[test]
    fn split_draws_in_proportion_and_falls_back() {
        let r = routes();
        let mut first_x = 0;
        for _ in 0..2000 {
            let t = r.resolve("ab", None).unwrap();
            assert_eq!(t.len(), 2);
            first_x += usize::from(t[0] == "a/x");
        }
        assert!((1650..=1950).contains(&first_x), "{first_x}");
    }

    #[test]
    fn rules_match_all_metadata_keys() {
        let r = routes();
        let free_eu = serde_json::json!({"plan": "free", "region": "eu", "user": 7});
        let free_us = serde_json::json!({"plan": "free", "region": "us"});
        assert_eq!(r.resolve("plan", Some(&free_eu)).unwrap(), vec!["a/x"]);
        assert_eq!(r.resolve("plan", Some(&free_us)).unwrap(), vec!["a/y"]);
        assert_eq!(r.resolve("plan", None).unwrap(), vec!["a/y"]);
    }
}
