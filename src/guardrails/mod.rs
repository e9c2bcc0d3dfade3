//! Guardrails (`[[guardrails]]`): block, redact or flag what goes to a provider (the prompt)
//! and what comes back (the answer), streams included, without buffering them.
//!
//! - `detect`: the built-in PII detectors (email, phone, credit card with Luhn, IBAN with
//!   its checksum, provider API keys, IPv4/IPv6).
//! - `matcher`: one multi-pattern regex per side and config generation; the whole-text and
//!   the streaming redaction (exact for any chunking; holds back at most one match).
//! - `json`: where the text is in the bodies (chat, Responses translated to chat, Anthropic
//!   Messages, and their answers).
//! - `stream`: the [`StreamTranslator`](crate::providers::StreamTranslator) wrapper that
//!   guards the text deltas of a streamed chat answer.
//!
//! A request with no guardrail configured pays one branch ([`Guardrails::start`]).

pub mod detect;
mod json;
pub mod matcher;
pub mod stream;

use crate::config::{GuardAction, GuardrailConfig};
use crate::errors::ApiError;
use matcher::{Matcher, Spec, Watch};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use crate::config::GuardAction as Action;

/// Which way the text goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Prompt,
    Response,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::Prompt => "prompt",
            Side::Response => "response",
        }
    }
}

/// One configured guardrail, as the matcher sees it.
pub struct Rule {
    pub name: String,
    pub action: Action,
    prompt: bool,
    response: bool,
    keys: Vec<String>,
    models: Vec<String>,
    roles: Vec<String>,
    /// Identifies its definition, for the cache key of answers it guarded.
    fingerprint: u64,
}

/// Every guardrail of one config generation, compiled.
#[derive(Default)]
pub struct Guardrails {
    rules: Vec<Rule>,
    actions: Vec<Action>,
    prompt: Matcher,
    response: Matcher,
}

/// A guardrail blocked the text (its index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked(pub usize);

fn rank(a: Action) -> u8 {
    match a {
        Action::Block => 0,
        Action::Redact => 1,
        Action::Flag => 2,
    }
}

/// `[REDACTED:<kind>]` names for word lists and regexes: the guardrail's name.
fn specs(rules: &[GuardrailConfig], side: Side) -> Vec<Spec> {
    let mut order: Vec<usize> = (0..rules.len()).collect();
    order.sort_by_key(|&i| rank(rules[i].action));
    let mut out = Vec::new();
    for i in order {
        let r = &rules[i];
        let on = match side {
            Side::Prompt => r.on.prompt(),
            Side::Response => r.on.response(),
        };
        if !on {
            continue;
        }
        for d in detect::DETECTORS {
            if r.pii.iter().any(|k| k == d.kind) {
                out.push(Spec {
                    rule: i,
                    kind: d.kind.to_string(),
                    pattern: d.pattern.to_string(),
                    check: Some(d.check),
                    peek: b".,",
                    max_len: Some(d.max_len),
                });
            }
        }
        if !r.words.is_empty() {
            let alts: Vec<String> = r.words.iter().map(|w| regex_syntax::escape(w)).collect();
            out.push(Spec {
                rule: i,
                kind: r.name.clone(),
                pattern: format!("(?i)(?:{})", alts.join("|")),
                check: Some(whole_word),
                peek: b"",
                max_len: None,
            });
        }
        for re in &r.regex {
            out.push(Spec {
                rule: i,
                kind: r.name.clone(),
                pattern: re.clone(),
                check: None,
                peek: b"",
                max_len: None,
            });
        }
    }
    out
}

/// A word-list match must not be part of a longer word (where its own edge is a letter or
/// digit).
fn whole_word(h: &str, s: usize, e: usize) -> Option<usize> {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let inner = &h[s..e];
    let first = inner.chars().next();
    let last = inner.chars().next_back();
    let before = h[..s].chars().next_back();
    let after = h[e..].chars().next();
    let bad = (word(first) && word(before)) || (word(last) && word(after));
    (!bad).then_some(e)
}

fn fingerprint(r: &GuardrailConfig) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{r:?}").hash(&mut h);
    h.finish()
}

impl Guardrails {
    /// Compiles the config's guardrails (validated by `Config::parse`).
    pub fn new(rules: &[GuardrailConfig]) -> Result<Guardrails, String> {
        if rules.is_empty() {
            return Ok(Guardrails::default());
        }
        Ok(Guardrails {
            prompt: Matcher::new(specs(rules, Side::Prompt))?,
            response: Matcher::new(specs(rules, Side::Response))?,
            actions: rules.iter().map(|r| r.action).collect(),
            rules: rules
                .iter()
                .map(|r| Rule {
                    name: r.name.clone(),
                    action: r.action,
                    prompt: r.on.prompt(),
                    response: r.on.response(),
                    keys: r.keys.clone(),
                    models: r.models.clone(),
                    roles: r.roles.clone(),
                    fingerprint: fingerprint(r),
                })
                .collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn matcher(&self, side: Side) -> &Matcher {
        match side {
            Side::Prompt => &self.prompt,
            Side::Response => &self.response,
        }
    }

    /// Every guardrail's bit.
    pub fn all(&self) -> u64 {
        if self.rules.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << self.rules.len()) - 1
        }
    }

    /// The guardrails that apply to a request with this gateway key, or `None` when none
    /// does (the only cost of a request when no guardrail is configured is this call's
    /// first branch).
    pub fn start(self: &Arc<Self>, key: Option<&str>) -> Option<Applied> {
        if self.rules.is_empty() {
            return None;
        }
        let mut mask = 0u64;
        for (i, r) in self.rules.iter().enumerate() {
            if r.keys.is_empty() || key.is_some_and(|k| r.keys.iter().any(|x| x == k)) {
                mask |= 1 << i;
            }
        }
        let side = |f: fn(&Rule) -> bool| {
            self.rules
                .iter()
                .enumerate()
                .filter(|(i, r)| mask & (1 << i) != 0 && f(r))
                .fold(0u64, |m, (i, _)| m | 1 << i)
        };
        let applied = Applied {
            prompt: side(|r| r.prompt),
            response: side(|r| r.response),
            g: self.clone(),
            hits_prompt: AtomicU64::new(0),
            hits_response: AtomicU64::new(0),
        };
        applied.active().then_some(applied)
    }

    /// A whole text through the guardrails of `mask` on `side`: the redacted text (`None`
    /// when unchanged), the guardrails that matched (bits), or the one that blocked it.
    pub fn apply_text(
        &self,
        side: Side,
        mask: u64,
        text: &str,
        hits: &mut u64,
    ) -> Result<Option<String>, Blocked> {
        let m = self.matcher(side);
        let Some(first) = m.find(text, 0, usize::MAX, text.len(), mask, u64::MAX) else {
            return Ok(None);
        };
        let mut out = String::with_capacity(text.len() + 16);
        let mut pos = first.start;
        out.push_str(&text[..pos]);
        apply(
            m,
            &self.actions,
            text,
            &mut pos,
            usize::MAX,
            mask,
            &mut out,
            hits,
            &mut Watch::everywhere(),
        )
        .map_err(Blocked)?;
        // Only flags matched: the text is unchanged.
        Ok((out != text).then_some(out))
    }

    /// A streaming guard over one text (see `matcher`).
    pub fn text_stream(self: &Arc<Self>, side: Side, mask: u64) -> TextStream {
        TextStream {
            watch: self.matcher(side).watch(),
            g: self.clone(),
            side,
            mask,
            buf: String::new(),
            pos: 0,
            hits: 0,
        }
    }
}

/// Applies every match starting in `pos..limit` to `hay`: the text before it and its
/// replacement (or itself, flagged) go to `out`; then the text up to `limit`. Searches
/// only where `watch` says a match may be. Stops at a blocking match, with `pos` at its
/// start.
#[allow(clippy::too_many_arguments)]
fn apply(
    m: &Matcher,
    actions: &[Action],
    hay: &str,
    pos: &mut usize,
    limit: usize,
    mask: u64,
    out: &mut String,
    hits: &mut u64,
    watch: &mut Watch,
) -> Result<(), usize> {
    while let Some((lo, end, patterns)) = watch.next(*pos) {
        if lo >= limit {
            break;
        }
        // No match starts before `lo`.
        let lo = hay.floor_char_boundary(lo);
        out.push_str(&hay[*pos..lo]);
        *pos = lo;
        let until = end.min(hay.len());
        let Some(f) = m.find(hay, lo, limit.min(until), until, mask, patterns) else {
            if end >= limit {
                break;
            }
            out.push_str(&hay[lo..end]);
            *pos = end;
            continue;
        };
        let (rule, kind) = m.pattern(f.pattern);
        *hits |= 1 << rule;
        out.push_str(&hay[*pos..f.start]);
        *pos = f.start;
        match actions[rule] {
            Action::Block => return Err(rule),
            Action::Redact => {
                out.push_str("[REDACTED:");
                out.push_str(kind);
                out.push(']');
            }
            Action::Flag => out.push_str(&hay[f.start..f.end]),
        }
        *pos = f.end;
    }
    let r = limit.min(hay.len()).max(*pos);
    out.push_str(&hay[*pos..r]);
    *pos = r;
    Ok(())
}

/// Released text a stream keeps before dropping it (all but two characters of context):
/// once per few hundred pieces rather than a move of the held text on every piece.
const DRAIN_AT: usize = 4096;

/// The guard of one streamed text: feed it pieces, it releases what is decided.
pub struct TextStream {
    /// Where matches may be (read once, piece by piece).
    watch: Watch,
    g: Arc<Guardrails>,
    side: Side,
    mask: u64,
    /// Undecided text, after released text kept as context (at least two characters).
    buf: String,
    pos: usize,
    hits: u64,
}

impl TextStream {
    /// Adds `text`; appends to `out` what can be released. `Err` when a guardrail blocks:
    /// `out` then holds the text before the match, and nothing after it is ever released.
    pub fn push(&mut self, text: &str, out: &mut String) -> Result<(), Blocked> {
        self.buf.push_str(text);
        let m = self.g.matcher(self.side);
        m.read(&mut self.watch, self.buf.as_bytes(), false, self.mask);
        let limit = m.bound(&self.buf, self.pos, self.mask);
        self.run(limit, out)
    }

    /// The text ended: releases the rest.
    pub fn finish(&mut self, out: &mut String) -> Result<(), Blocked> {
        let m = self.g.matcher(self.side);
        m.read(&mut self.watch, self.buf.as_bytes(), true, self.mask);
        self.run(usize::MAX, out)
    }

    /// Whether text is held back.
    pub fn holding(&self) -> bool {
        self.pos < self.buf.len()
    }

    /// The guardrails that matched so far (bits).
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Whether it searches all the text, not only where the sentinel saw a match.
    pub fn searches_everywhere(&self) -> bool {
        self.watch.blind()
    }

    fn run(&mut self, limit: usize, out: &mut String) -> Result<(), Blocked> {
        let m = self.g.matcher(self.side);
        let r = apply(
            m,
            &self.g.actions,
            &self.buf,
            &mut self.pos,
            limit,
            self.mask,
            out,
            &mut self.hits,
            &mut self.watch,
        );
        if r.is_err() {
            // Nothing more is ever released.
            self.buf.clear();
            self.pos = 0;
            self.mask = 0;
            m.unwatch(&mut self.watch);
            self.watch = Watch::everywhere();
        } else if self.pos >= DRAIN_AT {
            // Two characters of context for the checks' look-behind.
            let keep = self.buf[..self.pos]
                .char_indices()
                .rev()
                .nth(1)
                .map_or(0, |(i, _)| i);
            self.buf.drain(..keep);
            self.pos -= keep;
            self.watch.shift(keep);
        }
        r.map_err(Blocked)
    }
}

impl Drop for TextStream {
    fn drop(&mut self) {
        self.g.matcher(self.side).unwatch(&mut self.watch);
    }
}

/// The guardrails applying to one request, and what they matched.
pub struct Applied {
    g: Arc<Guardrails>,
    /// Guardrails applying to the prompt, and to the answer.
    prompt: u64,
    response: u64,
    hits_prompt: AtomicU64,
    hits_response: AtomicU64,
}

impl Applied {
    /// Whether any guardrail still applies.
    pub fn active(&self) -> bool {
        self.prompt | self.response != 0
    }

    /// Narrows to the guardrails scoped to this model (`models = [...]`, as the client
    /// named it).
    fn scope_model(&mut self, model: Option<&str>) {
        for (i, r) in self.g.rules.iter().enumerate() {
            if !r.models.is_empty() && !model.is_some_and(|m| r.models.iter().any(|x| x == m)) {
                self.prompt &= !(1 << i);
                self.response &= !(1 << i);
            }
        }
    }

    /// The prompt guardrails that read messages of `role` (tool results always).
    fn role_mask(&self, role: &str) -> u64 {
        let mut mask = 0;
        for (i, r) in self.g.rules.iter().enumerate() {
            if self.prompt & (1 << i) != 0 && (role == "tool" || r.roles.iter().any(|x| x == role))
            {
                mask |= 1 << i;
            }
        }
        mask
    }

    pub fn guards_response(&self) -> bool {
        self.response != 0
    }

    /// Runs `text` through the guardrails of `mask`; `true` when it was rewritten.
    fn text(&self, side: Side, mask: u64, text: &mut String) -> Result<bool, Blocked> {
        if mask == 0 {
            return Ok(false);
        }
        let mut hits = 0;
        let r = self.g.apply_text(side, mask, text, &mut hits);
        self.hit(side, hits);
        match r? {
            Some(new) => {
                *text = new;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub fn hit(&self, side: Side, bits: u64) {
        if bits != 0 {
            match side {
                Side::Prompt => self.hits_prompt.fetch_or(bits, Ordering::Relaxed),
                Side::Response => self.hits_response.fetch_or(bits, Ordering::Relaxed),
            };
        }
    }

    /// The names of the guardrails that matched so far, in config order.
    pub fn names(&self) -> Vec<&str> {
        let bits =
            self.hits_prompt.load(Ordering::Relaxed) | self.hits_response.load(Ordering::Relaxed);
        self.g
            .rules
            .iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, r)| r.name.as_str())
            .collect()
    }

    /// Every (guardrail, action, side) that matched, for the metrics.
    pub fn hits(&self) -> Vec<(&str, &'static str, &'static str)> {
        let mut out = Vec::new();
        for (side, bits) in [
            (Side::Prompt, self.hits_prompt.load(Ordering::Relaxed)),
            (Side::Response, self.hits_response.load(Ordering::Relaxed)),
        ] {
            for (i, r) in self.g.rules.iter().enumerate() {
                if bits & (1 << i) != 0 {
                    out.push((r.name.as_str(), r.action.label(), side.label()));
                }
            }
        }
        out
    }

    /// What identifies the answer guardrails applied to this request (cache keys of
    /// guarded answers include it); 0 when none.
    pub fn response_fingerprint(&self) -> u64 {
        self.g
            .rules
            .iter()
            .enumerate()
            .filter(|(i, _)| self.response & (1 << i) != 0)
            .fold(0, |h, (_, r)| h.rotate_left(5) ^ r.fingerprint)
    }

    /// The error for a block by guardrail `b`: it names the guardrail, never the text.
    pub fn blocked(&self, b: Blocked) -> ApiError {
        content_blocked(&self.g.rules[b.0].name)
    }

    /// A chat completion request body (also the Responses API's translation): the text of
    /// the messages of the roles each guardrail names, and tool results. The new body
    /// when something was redacted.
    pub fn chat_prompt(&mut self, body: &[u8]) -> Result<Option<Vec<u8>>, Blocked> {
        json::chat_prompt(self, body)
    }

    /// An Anthropic Messages request body: `system` (role `system`), the messages' text
    /// blocks and tool results.
    pub fn messages_prompt(&mut self, body: &[u8]) -> Result<Option<Vec<u8>>, Blocked> {
        json::messages_prompt(self, body)
    }

    /// An image generation request body: `prompt` and `negative_prompt`, read as a user's
    /// text.
    pub fn image_prompt(&mut self, body: &[u8]) -> Result<Option<Vec<u8>>, Blocked> {
        json::image_prompt(self, body)
    }

    /// A chat completion answer: the message text and tool-call arguments.
    pub fn chat_answer(&self, body: &[u8]) -> Result<Option<Vec<u8>>, Blocked> {
        json::chat_answer(self, body)
    }

    /// An Anthropic `message` answer: text blocks and tool inputs.
    pub fn messages_answer(&self, body: &[u8]) -> Result<Option<Vec<u8>>, Blocked> {
        json::messages_answer(self, body)
    }

    /// A whole answer text (speech-to-speech's reply).
    pub fn answer_text(&self, text: &mut String) -> Result<(), Blocked> {
        self.text(Side::Response, self.response, text).map(|_| ())
    }

    /// A streaming guard for the answer's text.
    pub fn answer_stream(&self) -> TextStream {
        self.g.text_stream(Side::Response, self.response)
    }
}

/// 400 `content_blocked`, naming the guardrail.
pub fn content_blocked(name: &str) -> ApiError {
    let mut e = ApiError::invalid(format!(
        "The content was blocked by the guardrail `{name}`."
    ));
    e.code = Some("content_blocked");
    e
}

impl GuardAction {
    pub fn label(self) -> &'static str {
        match self {
            GuardAction::Block => "block",
            GuardAction::Redact => "redact",
            GuardAction::Flag => "flag",
        }
    }
}

#[cfg(test)]
mod tests;
