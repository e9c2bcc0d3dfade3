//! The `story` models (stream resume): they tell one fixed text, and continue it faithfully
//! when a request carries part of it as a partial assistant turn, in the form each format
//! documents — Anthropic's prefill (a last `assistant` message, refused with trailing
//! whitespace as Anthropic does), the `"prefix": true` last assistant message (DeepSeek's
//! beta prefix completion, Mistral), vLLM's `continue_final_message`, or an assistant
//! message followed by a user turn asking to continue.
//!
//! The model name picks the behaviour: `story-die-N` breaks the connection after N words,
//! `story-stall-N` goes silent after N words, `story-error-N` sends an error event after N
//! words (as OpenAI-compatible servers report a failure mid-stream), `story-repeat` starts a continuation by
//! repeating the last two words of the partial answer (a model that overlaps the seam).

use serde_json::Value;

/// The text every story model tells.
pub const STORY: &str = "Once upon a time a small gateway carried every answer to the end, \
     because when one model fell silent in the middle of a sentence another model picked up \
     the very same sentence and finished it without repeating a single word.";

/// What a story model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Story {
    /// Break the connection after this many words.
    pub die_after: Option<usize>,
    /// Go silent after this many words.
    pub stall_after: Option<usize>,
    /// Send an error event (and end the stream) after this many words.
    pub error_after: Option<usize>,
    /// Repeat the last two words of a partial answer before continuing it.
    pub repeat: bool,
}

fn count_after(model: &str, tag: &str) -> Option<usize> {
    let rest = &model[model.find(tag)? + tag.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl Story {
    pub fn of_model(model: &str) -> Option<Story> {
        model.contains("story").then(|| Story {
            die_after: count_after(model, "-die-"),
            stall_after: count_after(model, "-stall-"),
            error_after: count_after(model, "-error-"),
            repeat: model.contains("-repeat"),
        })
    }

    /// The answer: the story, or its rest after `partial` (a prefix of it, whitespace at
    /// its end aside).
    pub fn answer(&self, partial: Option<&str>) -> String {
        let Some(p) = partial.map(str::trim_end).filter(|p| STORY.starts_with(*p)) else {
            return STORY.to_string();
        };
        let rest = &STORY[p.len()..];
        if !self.repeat {
            return rest.to_string();
        }
        let words: Vec<&str> = p.split_whitespace().collect();
        let tail = words[words.len().saturating_sub(2)..].join(" ");
        format!("{tail}{rest}")
    }
}

fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<String>(),
        ),
        _ => None,
    }
}

/// An OpenAI-format request's partial answer and how it was asked: a last assistant
/// message with `"prefix": true` (`prefix`), with `continue_final_message`
/// (`continue_final_message`), or an assistant message then a user turn (`instruct`).
pub fn openai_partial(req: &Value) -> Option<(String, &'static str)> {
    let msgs = req["messages"].as_array()?;
    let last = msgs.last()?;
    if last["role"] == "assistant" {
        let mode = if last["prefix"] == true {
            "prefix"
        } else if req["continue_final_message"] == true {
            "continue_final_message"
        } else {
            return None;
        };
        return Some((text_of(&last["content"])?, mode));
    }
    let before = msgs.get(msgs.len().checked_sub(2)?)?;
    (last["role"] == "user" && before["role"] == "assistant")
        .then(|| text_of(&before["content"]))
        .flatten()
        .map(|t| (t, "instruct"))
}

/// An Anthropic request's prefill: the text of a last `assistant` message. `Err`: the
/// message Anthropic answers 400 with (a prefill may not end in whitespace).
pub fn anthropic_prefill(req: &Value) -> Result<Option<String>, &'static str> {
    let Some(last) = req["messages"].as_array().and_then(|m| m.last()) else {
        return Ok(None);
    };
    if last["role"] != "assistant" {
        return Ok(None);
    }
    let text = text_of(&last["content"]).unwrap_or_default();
    if text.ends_with(char::is_whitespace) {
        return Err("messages: final assistant content cannot end with trailing whitespace");
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_story_continues_from_its_partial_answer() {
        let s = Story::of_model("story").unwrap();
        assert_eq!(s.answer(None), STORY);
        assert_eq!(
            s.answer(Some("Once upon a ")),
            &STORY["Once upon a".len()..]
        );
        let r = Story::of_model("story-repeat").unwrap();
        assert!(r
            .answer(Some("Once upon a time"))
            .starts_with("a time a small"));
        let d = Story::of_model("story-die-4").unwrap();
        assert_eq!((d.die_after, d.stall_after), (Some(4), None));
    }

    #[test]
    fn partial_turns_are_read_per_format() {
        let m = |extra: Value| {
            let mut v = json!({"messages": [{"role": "user", "content": "go"}]});
            v["messages"].as_array_mut().unwrap().push(extra);
            v
        };
        let p = m(json!({"role": "assistant", "content": "Once", "prefix": true}));
        assert_eq!(openai_partial(&p), Some(("Once".into(), "prefix")));
        let mut c = m(json!({"role": "assistant", "content": "Once"}));
        assert_eq!(openai_partial(&c), None);
        c["continue_final_message"] = json!(true);
        assert_eq!(openai_partial(&c).unwrap().1, "continue_final_message");
        let mut i = m(json!({"role": "assistant", "content": "Once"}));
        i["messages"]
            .as_array_mut()
            .unwrap()
            .push(json!({"role": "user", "content": "continue"}));
        assert_eq!(openai_partial(&i), Some(("Once".into(), "instruct")));
        let a = m(json!({"role": "assistant", "content": [{"type": "text", "text": "Once "}]}));
        assert!(anthropic_prefill(&a).is_err());
        let a = m(json!({"role": "assistant", "content": "Once"}));
        assert_eq!(anthropic_prefill(&a), Ok(Some("Once".into())));
    }
}
