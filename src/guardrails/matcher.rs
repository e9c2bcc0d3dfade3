//! The matcher: every pattern of one side (prompt or response) in one multi-pattern regex,
//! and the streaming redactor built on it.
//!
//! **What a match is** (whole text): scanning from a position, the next match starts at the
//! smallest position `p` where some pattern, searched *anchored at `p`* within a window of
//! its `max_len` bytes, matches and its check accepts; at `p` the first such pattern in
//! priority order wins; scanning resumes at the match's end. A pattern's verdict at `p` reads
//! only the window and up to two characters on each side (a check peeks at a second one
//! after a separator), never where the scan began — which is what makes the streaming matcher exact.
//!
//! **Streaming**: text arrives in pieces. After each piece the redactor releases everything
//! before a bound `R`: for each pattern, a match that the text so far cannot yet decide must
//! end at or beyond the current end, so all its bytes so far are in the pattern's byte set
//! (every byte any match of it can contain) and it started at most `max_len` bytes back.
//! `R` is the earliest such start over all patterns (the start of the trailing run of bytes
//! in the pattern's set, bounded by `max_len`). Every match starting before `R` is decided
//! by the text already held, so the redactor applies them, emits the text up to `R` and keeps
//! the rest (plus two characters of context for look-behind). Prose usually holds back only
//! its last word; at most the longest possible match is held. The output is therefore the
//! same for every chunking of the stream, and equal to the whole-text redaction.

use super::detect::Check;
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::hybrid::LazyStateID;
use regex_automata::util::start;
use regex_automata::{meta, Anchored, Input, MatchKind};
use regex_syntax::hir::{Class, Hir, HirKind};
use std::collections::VecDeque;

/// Bytes a check may peek past a match's end (the next character and one after it), plus
/// slack for multi-byte characters.
const PEEK: usize = 8;
/// The longest match of a pattern whose own length is unbounded (`\w+`): its window.
pub const WINDOW: usize = 256;

/// One pattern to compile.
pub struct Spec {
    /// The guardrail it belongs to (a bit of the request's mask).
    pub rule: usize,
    /// `[REDACTED:<kind>]`.
    pub kind: String,
    pub pattern: String,
    pub check: Option<Check>,
    /// Bytes, besides the match's own, that a check peeks at (`.` and `,` after a number).
    pub peek: &'static [u8],
    /// The most bytes a match spans (`None`: from the pattern, at most [`WINDOW`]).
    pub max_len: Option<usize>,
}

struct Pattern {
    rule: usize,
    kind: String,
    anchored: meta::Regex,
    check: Option<Check>,
    max_len: usize,
    /// Every byte a match (or a check's peek) can contain.
    bytes: [u64; 4],
    /// Every match contains one of these bytes.
    required: [u64; 4],
}

/// One side's patterns, compiled once per config generation.
#[derive(Default)]
pub struct Matcher {
    any: Option<meta::Regex>,
    patterns: Vec<Pattern>,
    sentinel: Option<Sentinel>,
    /// `None` with more than 64 patterns: [`Matcher::bound`] then scans once per pattern.
    runs: Option<Runs>,
}

/// What [`Matcher::bound`] needs to find every pattern's trailing run in one backward pass,
/// and what lets the sentinel sleep (pattern `i` is bit `i`).
struct Runs {
    /// The patterns whose byte set holds the byte.
    by_byte: [u64; 256],
    /// The patterns every match of which holds a byte of a set that holds this byte (see
    /// [`required`]): a byte that wakes no pattern is in no match unless a waking byte is
    /// in the same run, within the pattern's `max_len`.
    wakes: [u64; 256],
    /// The longest match of a pattern the byte wakes.
    reach: [usize; 256],
    /// `by_depth[d]`: the patterns a match of which, still undecided, may have a byte `d`
    /// bytes before the end of the text (`d < max_len + PEEK`).
    by_depth: Vec<u64>,
    /// The patterns of each guardrail.
    by_rule: [u64; 64],
}

impl Runs {
    fn new(patterns: &[Pattern]) -> Option<Runs> {
        if patterns.len() > 64 {
            return None;
        }
        let deepest = patterns.iter().map(|p| p.max_len + PEEK).max().unwrap_or(0);
        let mut runs = Runs {
            by_byte: [0; 256],
            wakes: [0; 256],
            reach: [0; 256],
            by_depth: vec![0; deepest],
            by_rule: [0; 64],
        };
        for (i, p) in patterns.iter().enumerate() {
            let bit = 1u64 << i;
            for b in 0..=255u8 {
                if has(&p.bytes, b) {
                    runs.by_byte[usize::from(b)] |= bit;
                }
                if has(&p.required, b) {
                    runs.wakes[usize::from(b)] |= bit;
                    let reach = &mut runs.reach[usize::from(b)];
                    *reach = (*reach).max(p.max_len);
                }
            }
            runs.by_depth[..p.max_len + PEEK]
                .iter_mut()
                .for_each(|m| *m |= bit);
            runs.by_rule[p.rule] |= bit;
        }
        Some(runs)
    }

    /// The patterns of the guardrails in `mask`.
    fn patterns(&self, mut mask: u64) -> u64 {
        let mut set = 0;
        while mask != 0 {
            set |= self.by_rule[mask.trailing_zeros() as usize];
            mask &= mask - 1;
        }
        set
    }

    /// The earliest start of a pattern's trailing run, in one pass back from the end: the
    /// position where the last pattern of `mask` still running stops. At least `from`.
    fn bound(&self, b: &[u8], from: usize, mask: u64) -> usize {
        let mut alive = self.patterns(mask);
        let mut s = b.len();
        while s > from {
            let depth = self.by_depth.get(b.len() - s).copied().unwrap_or(0);
            alive &= self.by_byte[usize::from(b[s - 1])] & depth;
            if alive == 0 {
                break;
            }
            s -= 1;
        }
        s
    }
}

/// Every pattern in one lazy DFA that reports every end of every match (overlapping), read
/// once over a stream, byte by byte across its pieces: a stretch of text before which it
/// reported no match end holds nothing for [`Matcher::find`] to find, so most text is
/// released without a search. Its caches go back to a pool, warm, when a stream ends.
///
/// It sleeps through most text: every match of a pattern contains a byte of the pattern's
/// required set (an `@` for an email, a digit for a phone number) and lies in a run of the
/// pattern's bytes, so the DFA reads only the runs around such bytes (a region: back from
/// the byte over the woken patterns' bytes, forward until a byte ends the run of each or
/// their `max_len`), plus the byte after, which reports the matches that end before it.
/// Reading a region right after the last one, it goes on from where it stopped, as if it
/// had never slept; else it starts afresh, with the byte before the region as look-behind.
struct Sentinel {
    dfa: DFA,
    caches: parking_lot::Mutex<Vec<Cache>>,
}

/// What one stream's sentinel has seen: where matches may start.
pub struct Watch {
    /// `None`: no sentinel (every position may start a match).
    cache: Option<Cache>,
    /// It gave up (a byte it cannot read, such as non-ASCII text around a Unicode `\b`):
    /// from now on every position may start a match.
    blind: bool,
    state: LazyStateID,
    /// How many bytes of the text it has read (to wake, or with the DFA).
    read: usize,
    region: Region,
    /// Disjoint spans `[lo, end)`, in order, that hold every match it reported, with the
    /// patterns of those matches (bit `i`: pattern `i`; all bits past 64 patterns): a match of
    /// a pattern ending at `end` starts at or after `end - max_len`.
    spans: Spans,
}

/// Where the sentinel's DFA reads (copied into locals while it reads).
#[derive(Clone, Copy, Default)]
struct Region {
    /// The DFA reads (else it sleeps until a byte wakes a pattern).
    awake: bool,
    /// Awake: the woken patterns whose run of bytes goes on, where the region ends at the
    /// latest, and the last waking byte (it ends no earlier).
    woken: u64,
    until: usize,
    least: usize,
    /// Asleep: where the DFA stopped, in `state` (`None`: it cannot go on from there).
    rest: Option<usize>,
    /// Where the DFA began reading without a break (it has seen every match that starts
    /// there or later, up to where it is).
    from: usize,
}

/// Where matches may be: `(lo, end, patterns)`, see [`Watch`].
type Spans = VecDeque<(usize, usize, u64)>;

/// A match: its span and the index of its pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub start: usize,
    pub end: usize,
    pub pattern: usize,
}

fn add(set: &mut [u64; 4], b: u8) {
    set[usize::from(b >> 6)] |= 1 << (b & 63);
}

fn has(set: &[u64; 4], b: u8) -> bool {
    set[usize::from(b >> 6)] & (1 << (b & 63)) != 0
}

fn union(mut a: [u64; 4], b: [u64; 4]) -> [u64; 4] {
    a.iter_mut().zip(b).for_each(|(a, b)| *a |= b);
    a
}

/// Every byte a match of `h` can contain (any non-ASCII character: all bytes ≥ 0x80).
fn collect(h: &Hir, set: &mut [u64; 4]) {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(l) => l.0.iter().for_each(|&b| add(set, b)),
        HirKind::Class(Class::Unicode(c)) => {
            for r in c.ranges() {
                let (lo, hi) = (u32::from(r.start()), u32::from(r.end()));
                for b in lo..=hi.min(0x7f) {
                    add(set, b as u8);
                }
                if hi >= 0x80 {
                    (0x80..=0xff).for_each(|b| add(set, b));
                }
            }
        }
        HirKind::Class(Class::Bytes(c)) => {
            for r in c.ranges() {
                (r.start()..=r.end()).for_each(|b| add(set, b));
            }
        }
        HirKind::Repetition(r) => collect(&r.sub, set),
        HirKind::Capture(c) => collect(&c.sub, set),
        HirKind::Concat(v) | HirKind::Alternation(v) => v.iter().for_each(|x| collect(x, set)),
    }
}

/// How common a byte is in prose and code (a guess): a required set of rare bytes lets the
/// sentinel sleep more.
fn commonness(b: u8) -> u32 {
    match b {
        b' ' => 100,
        b'z' | b'q' | b'x' | b'j' => 6,
        b'a'..=b'z' => 40,
        b'\n' | b'\t' => 20,
        b'A' | b'I' => 12,
        0x80.. => 10,
        b'A'..=b'Z' => 8,
        b'0'..=b'9' | b'.' | b',' | b':' | b'(' | b')' | b'\'' | b'"' => 6,
        b'-' => 5,
        b'@' | b'_' | b'%' | b'#' | b'~' | b'^' | b'|' | b'\\' | b'`' => 1,
        _ => 3,
    }
}

fn cost(set: &[u64; 4]) -> u32 {
    (0..=255u8).filter(|&b| has(set, b)).map(commonness).sum()
}

/// A set of bytes one of which every match of `h` contains, as rare as can be found
/// (`None`: `h` can match without a byte, as a look-around).
fn required(h: &Hir) -> Option<[u64; 4]> {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => None,
        HirKind::Literal(l) => l.0.iter().min_by_key(|&&b| commonness(b)).map(|&b| {
            let mut set = [0; 4];
            add(&mut set, b);
            set
        }),
        HirKind::Class(_) => {
            let mut set = [0; 4];
            collect(h, &mut set);
            Some(set)
        }
        HirKind::Repetition(r) if r.min > 0 => required(&r.sub),
        HirKind::Repetition(_) => None,
        HirKind::Capture(c) => required(&c.sub),
        HirKind::Concat(v) => v.iter().filter_map(required).min_by_key(cost),
        HirKind::Alternation(v) => v
            .iter()
            .try_fold([0u64; 4], |all, x| Some(union(all, required(x)?))),
    }
}

/// The sets of bytes one of which every match of `h` contains: one per element of a
/// concatenation, else one.
fn required_choices(h: &Hir) -> Vec<[u64; 4]> {
    match h.kind() {
        HirKind::Capture(c) => required_choices(&c.sub),
        HirKind::Concat(v) => v.iter().filter_map(required).collect(),
        _ => required(h).into_iter().collect(),
    }
}

/// Each pattern's required set (see [`Runs::wakes`]): of its choices, the one that adds the
/// fewest common bytes to the others' (digits for an IPv4 address rather than its dots, when
/// phone numbers wake on digits anyway); all bytes when it has none.
fn pick_required(choices: &[Vec<[u64; 4]>]) -> Vec<[u64; 4]> {
    let mut picks: Vec<[u64; 4]> = choices
        .iter()
        .map(|c| c.iter().copied().min_by_key(cost).unwrap_or([u64::MAX; 4]))
        .collect();
    // Twice: a pattern's pick may change the best pick of one before it.
    for i in (0..choices.len()).chain(0..choices.len()) {
        let others = picks
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .fold([0u64; 4], |all, (_, s)| union(all, *s));
        let added = |s: &[u64; 4]| {
            let mut new = *s;
            new.iter_mut().zip(others).for_each(|(n, o)| *n &= !o);
            (cost(&new), cost(s))
        };
        if let Some(best) = choices[i].iter().min_by_key(|s| added(s)) {
            picks[i] = *best;
        }
    }
    picks
}

/// Checks a pattern: it parses, compiles, and cannot match empty text. Its longest match
/// (capped at [`WINDOW`]).
pub fn check_pattern(pattern: &str) -> Result<usize, String> {
    let hir = regex_syntax::parse(pattern).map_err(|e| e.to_string())?;
    if hir.properties().minimum_len().unwrap_or(0) == 0 {
        return Err("the pattern can match empty text".into());
    }
    meta::Regex::new(pattern).map_err(|e| e.to_string())?;
    Ok(hir.properties().maximum_len().unwrap_or(WINDOW).min(WINDOW))
}

impl Matcher {
    /// Compiles `specs`, in priority order.
    pub fn new(specs: Vec<Spec>) -> Result<Matcher, String> {
        if specs.is_empty() {
            return Ok(Matcher::default());
        }
        let hirs = specs
            .iter()
            .map(|s| regex_syntax::parse(&s.pattern).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let choices: Vec<_> = hirs.iter().map(required_choices).collect();
        let mut patterns = Vec::with_capacity(specs.len());
        for ((s, hir), required) in specs.iter().zip(&hirs).zip(pick_required(&choices)) {
            let longest = check_pattern(&s.pattern)?;
            let mut bytes = [0u64; 4];
            collect(hir, &mut bytes);
            s.peek.iter().for_each(|&b| add(&mut bytes, b));
            patterns.push(Pattern {
                rule: s.rule,
                kind: s.kind.clone(),
                anchored: meta::Regex::new(&s.pattern).map_err(|e| e.to_string())?,
                check: s.check,
                max_len: s.max_len.unwrap_or(longest),
                bytes,
                required,
            });
        }
        let all: Vec<&str> = specs.iter().map(|s| s.pattern.as_str()).collect();
        let any = meta::Regex::new_many(&all).map_err(|e| e.to_string())?;
        // Without it (a pattern the lazy DFA cannot take), streams search everywhere.
        let sentinel = DFA::builder()
            .configure(
                DFA::config()
                    .match_kind(MatchKind::All)
                    .unicode_word_boundary(true),
            )
            .build_many(&all)
            .ok()
            .map(|dfa| Sentinel {
                dfa,
                caches: parking_lot::Mutex::new(Vec::new()),
            });
        Ok(Matcher {
            any: Some(any),
            runs: Runs::new(&patterns),
            patterns,
            sentinel,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The guardrail and the redaction label of pattern `i`.
    pub fn pattern(&self, i: usize) -> (usize, &str) {
        let p = &self.patterns[i];
        (p.rule, &p.kind)
    }

    /// The longest match of any pattern of `mask`'s guardrails.
    pub fn max_len(&self, mask: u64) -> usize {
        self.patterns
            .iter()
            .filter(|p| mask & (1 << p.rule) != 0)
            .map(|p| p.max_len)
            .max()
            .unwrap_or(0)
    }

    /// The first match starting in `from..limit` (see the module doc), for the guardrails
    /// in `mask`, of `patterns` (bit `i`: pattern `i`; `u64::MAX`: any). `hay[..from]` is
    /// context only; `until`: no match starting before `limit` ends after it (`hay.len()`
    /// when nothing is known).
    pub fn find(
        &self,
        hay: &str,
        from: usize,
        limit: usize,
        until: usize,
        mask: u64,
        patterns: u64,
    ) -> Option<Found> {
        let any = self.any.as_ref()?;
        // One pattern (the sentinel saw only its matches here): its own regex searches.
        let single = Some(patterns.trailing_zeros() as usize)
            .filter(|&i| patterns.count_ones() == 1 && i < self.patterns.len());
        let wanted = |i: usize| i >= 64 || patterns & (1 << i) != 0;
        let mut at = from;
        while at < limit.min(until + 1) {
            let input = Input::new(hay).range(at..until);
            let (m, first) = match single {
                Some(i) => (self.patterns[i].anchored.search(&input)?, i),
                None => {
                    let m = any.search(&input)?;
                    (m, m.pattern().as_usize())
                }
            };
            let p = m.start();
            if p >= limit {
                return None;
            }
            // Leftmost-first: no pattern before the one reported matches at `p` (a match
            // within a window is a match), and the reported match is the anchored one
            // when it fits the window.
            for (i, pat) in self.patterns.iter().enumerate().skip(first) {
                if mask & (1 << pat.rule) == 0 || !wanted(i) {
                    continue;
                }
                let end = if i == first && m.end() - p <= pat.max_len {
                    m.end()
                } else {
                    let window = Input::new(hay)
                        .range(p..hay.len().min(p + pat.max_len))
                        .anchored(Anchored::Yes);
                    match pat.anchored.search(&window) {
                        Some(a) => a.end(),
                        None => continue,
                    }
                };
                let end = match pat.check {
                    Some(check) => check(hay, p, end),
                    None => Some(end),
                };
                if let Some(end) = end.filter(|&e| e > p) {
                    return Some(Found {
                        start: p,
                        end,
                        pattern: i,
                    });
                }
            }
            at = p + hay[p..].chars().next().map_or(1, char::len_utf8);
        }
        None
    }

    /// Where the text held so far stops being decided: no match that more text could
    /// still change covers a byte before it (see the module doc). At least `from`.
    pub fn bound(&self, hay: &str, from: usize, mask: u64) -> usize {
        let b = hay.as_bytes();
        let len = b.len();
        let mut r = len;
        if let Some(runs) = &self.runs {
            r = runs.bound(b, from, mask);
        } else {
            for p in self.patterns.iter().filter(|p| mask & (1 << p.rule) != 0) {
                let floor = len.saturating_sub(p.max_len + PEEK).max(from);
                r = r.min(run_start(b, &p.bytes, len, floor));
            }
        }
        if r <= from {
            return from;
        }
        while !hay.is_char_boundary(r) {
            r -= 1;
        }
        r.max(from)
    }

    /// A stream's watch, with a cache from the pool.
    pub fn watch(&self) -> Watch {
        let Some(s) = &self.sentinel else {
            return Watch::everywhere();
        };
        let mut cache = s
            .caches
            .lock()
            .pop()
            .unwrap_or_else(|| s.dfa.create_cache());
        let unanchored = start::Config::new().anchored(Anchored::No);
        match s.dfa.start_state(&mut cache, &unanchored) {
            Ok(state) => Watch {
                cache: Some(cache),
                blind: false,
                state,
                read: 0,
                region: Region {
                    // Over 64 patterns it never sleeps.
                    awake: self.runs.is_none(),
                    rest: Some(0),
                    ..Region::default()
                },
                spans: Spans::new(),
            },
            Err(_) => {
                s.caches.lock().push(cache);
                Watch::everywhere()
            }
        }
    }

    /// A stream ended: its cache goes back to the pool.
    pub fn unwatch(&self, w: &mut Watch) {
        if let (Some(s), Some(cache)) = (&self.sentinel, w.cache.take()) {
            s.caches.lock().push(cache);
        }
    }

    /// Reads the text `w` has not read yet (`end`: the text is complete), noting where the
    /// matches of the guardrails in `mask` may be.
    pub fn read(&self, w: &mut Watch, hay: &[u8], end: bool, mask: u64) {
        let (Some(s), Some(cache), false) = (&self.sentinel, w.cache.as_mut(), w.blind) else {
            return;
        };
        let dfa = &s.dfa;
        let pats = self.runs.as_ref().map_or(0, |r| r.patterns(mask));
        let mut state = w.state;
        let mut i = w.read;
        let mut r = w.region;
        while i < hay.len() {
            let Some(runs) = &self.runs else {
                // Never asleep.
                if !step(self, dfa, cache, &mut state, hay, i, mask, &mut w.spans) {
                    w.blind = true;
                    return;
                }
                i += 1;
                continue;
            };
            if !r.awake {
                match hay[i..]
                    .iter()
                    .position(|&b| runs.wakes[usize::from(b)] & pats != 0)
                {
                    Some(k) => i += k,
                    None => break,
                }
            }
            let b = usize::from(hay[i]);
            let wakes = runs.wakes[b] & pats;
            let new = wakes & !r.woken;
            if wakes != 0 {
                r.until = r.until.max(i + runs.reach[b]);
            }
            if new != 0 {
                // Matches of the patterns it wakes start no earlier than the run of their
                // bytes that ends here: the DFA must have read from there.
                let floor = (i + 1).saturating_sub(runs.reach[b]);
                let mut start = i;
                while start > floor && runs.by_byte[usize::from(hay[start - 1])] & new != 0 {
                    start -= 1;
                }
                let read_from_start = r.from <= start;
                let was_awake = std::mem::replace(&mut r.awake, true);
                r.woken |= wakes;
                r.least = r.least.max(i);
                match (was_awake, r.rest) {
                    // Reading since `from`, up to here.
                    (true, _) if read_from_start => {}
                    // It slept at `rest`: go on from there, as if it had never slept.
                    (false, Some(rest)) if read_from_start && start <= rest => {
                        i = rest;
                        continue;
                    }
                    _ => {
                        let behind = start::Config::new()
                            .anchored(Anchored::No)
                            .look_behind(start.checked_sub(1).map(|j| hay[j]));
                        match dfa.start_state(cache, &behind) {
                            Ok(s0) => state = s0,
                            Err(_) => {
                                w.blind = true;
                                return;
                            }
                        }
                        r.from = start;
                        i = start;
                        continue;
                    }
                }
            }
            // Awake: the region goes on while its patterns' bytes do, within their reach;
            // the byte after it is read too.
            r.woken &= runs.by_byte[b];
            let last = wakes == 0 && i > r.least && (i >= r.until || r.woken == 0);
            if !step(self, dfa, cache, &mut state, hay, i, mask, &mut w.spans) {
                w.blind = true;
                return;
            }
            i += 1;
            if last {
                // Asleep: it stopped here, and has read without a break since `from`.
                r = Region {
                    rest: Some(i),
                    from: r.from,
                    ..Region::default()
                };
            }
        }
        if end && r.awake {
            match dfa.next_eoi_state(cache, state) {
                Ok(eoi) if eoi.is_match() => {
                    self.note(dfa, cache, eoi, hay, hay.len(), mask, &mut w.spans)
                }
                Ok(_) => {}
                Err(_) => w.blind = true,
            }
        }
        w.state = state;
        w.read = hay.len();
        w.region = r;
    }

    /// Matches of the patterns in `state` end at `at`: each starts within its pattern's
    /// `max_len` and inside the run of its pattern's bytes that ends there.
    #[allow(clippy::too_many_arguments)]
    fn note(
        &self,
        dfa: &DFA,
        cache: &Cache,
        state: LazyStateID,
        hay: &[u8],
        at: usize,
        mask: u64,
        spans: &mut Spans,
    ) {
        let mut lo = None;
        let mut patterns = 0u64;
        for k in 0..dfa.match_len(cache, state) {
            let i = dfa.match_pattern(cache, state, k).as_usize();
            let p = &self.patterns[i];
            if mask & (1 << p.rule) != 0 {
                let s = run_start(hay, &p.bytes, at, at.saturating_sub(p.max_len));
                lo = Some(lo.map_or(s, |l: usize| l.min(s)));
                patterns |= 1u64.checked_shl(i as u32).unwrap_or(u64::MAX);
            }
        }
        let Some(mut lo) = lo else { return };
        let mut end = at;
        while let Some(&(l, e, p)) = spans.back() {
            if lo > e {
                break;
            }
            lo = lo.min(l);
            end = end.max(e);
            patterns |= p;
            spans.pop_back();
        }
        spans.push_back((lo, end, patterns));
    }
}

/// The sentinel's DFA reads byte `i`, noting the matches that end before it; `false` when
/// it gives up (a byte it cannot read).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn step(
    m: &Matcher,
    dfa: &DFA,
    cache: &mut Cache,
    state: &mut LazyStateID,
    hay: &[u8],
    i: usize,
    mask: u64,
    spans: &mut Spans,
) -> bool {
    // The common case: a known transition to an ordinary state.
    if !state.is_tagged() {
        let next = dfa.next_state_untagged(cache, *state, hay[i]);
        if !next.is_tagged() {
            *state = next;
            return true;
        }
    }
    match dfa.next_state(cache, *state, hay[i]) {
        Ok(next) if !next.is_quit() && !next.is_dead() => *state = next,
        _ => return false,
    }
    // Matches are reported one byte late: this one ended before byte `i`.
    if state.is_match() {
        m.note(dfa, cache, *state, hay, i, mask, spans);
    }
    true
}

/// The start of the run of bytes in `set` that ends at `end`, no earlier than `floor`.
fn run_start(b: &[u8], set: &[u64; 4], end: usize, floor: usize) -> usize {
    let mut s = end;
    while s > floor && has(set, b[s - 1]) {
        s -= 1;
    }
    s
}

impl Watch {
    /// No sentinel: every position may start a match.
    pub fn everywhere() -> Watch {
        Watch {
            cache: None,
            blind: true,
            state: LazyStateID::default(),
            read: 0,
            region: Region::default(),
            spans: Spans::new(),
        }
    }

    /// Where the first match at or after `pos` may be: `(lo, end, patterns)`, a match
    /// starting in `lo..end` ends by `end` (`usize::MAX`: anywhere) and is one of
    /// `patterns` (bit `i`: pattern `i`), and none starts in `pos..lo`.
    /// `None`: no match starts at or after `pos` in the text read so far.
    pub fn next(&mut self, pos: usize) -> Option<(usize, usize, u64)> {
        if self.blind {
            return Some((pos, usize::MAX, u64::MAX));
        }
        while self.spans.front().is_some_and(|&(_, e, _)| e <= pos) {
            self.spans.pop_front();
        }
        self.spans
            .front()
            .map(|&(lo, e, patterns)| (lo.max(pos), e, patterns))
    }

    /// Whether every position may start a match (no sentinel, or it gave up).
    pub fn blind(&self) -> bool {
        self.blind
    }

    /// The text lost its first `n` bytes.
    pub fn shift(&mut self, n: usize) {
        self.read = self.read.saturating_sub(n);
        let r = &mut self.region;
        r.until = r.until.saturating_sub(n);
        r.least = r.least.saturating_sub(n);
        r.rest = r.rest.and_then(|r| r.checked_sub(n));
        // Still before every position the text has: reading since before them.
        r.from = r.from.saturating_sub(n);
        for (lo, e, _) in &mut self.spans {
            *lo = lo.saturating_sub(n);
            *e = e.saturating_sub(n);
        }
    }
}
