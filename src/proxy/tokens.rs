//! Token counts from backend responses, without buffering streams: a JSON body's `usage` (and
//! llama.cpp's `timings`), or the same in the `data:` events of an SSE stream; and in a stream,
//! which events carry generated text (for time to first token and inter-token latency).
//!
//! Per SSE event the scanner does one forward search for the text's key (`content":` or
//! `"text":`), which stops a few dozen bytes in on a token event; only events that carry no
//! text (the role chunk, the final usage chunk, `[DONE]`) are searched for `usage`. A token
//! event that also carried counts (vLLM's `continuous_usage_stats`) is not read for them: the
//! stream's final usage chunk has the totals.
//!
//! This runs on every proxied request, so it avoids building a `serde_json::Value` of the whole
//! answer (that was 6% of the proxy's CPU): a text that does not mention `"usage"` or `"timings"`
//! is not parsed at all, and one that does is parsed into a probe that borrows the two objects
//! and skips everything else (from those keys on, when that is enough: see `absorb_json`).

use memchr::{memchr, memmem};
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    /// llama.cpp's own measurement of generation speed, when it reports one.
    pub per_second: Option<f64>,
}

/// The two members of a response object that carry counts; the rest is skipped unparsed.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timings: Option<&'a RawValue>,
}

/// OpenAI's `usage`. Numbers are kept as `Number` so a float count does not reject the object.
#[derive(Deserialize)]
struct OaiUsage {
    prompt_tokens: Option<serde_json::Number>,
    completion_tokens: Option<serde_json::Number>,
}

/// llama.cpp's `timings`.
#[derive(Deserialize)]
struct Timings {
    prompt_n: Option<serde_json::Number>,
    predicted_n: Option<serde_json::Number>,
    predicted_per_second: Option<serde_json::Number>,
}

impl Usage {
    /// Folds one response object (a whole JSON body or one SSE event's data) in; later values
    /// win. Text that is not a JSON object, or has no counts, changes nothing.
    ///
    /// Both APIs put `usage` (and llama.cpp `timings`) after `choices`, so the members from the
    /// first of those keys on are parsed first, as an object of their own: that parses, with
    /// nothing left over, only when the keys are members of the outer object, and saves
    /// skipping over the generated text. Otherwise the whole text is parsed.
    pub fn absorb_json(&mut self, text: &[u8]) {
        let start = match (USAGE.find(text), TIMINGS.find(text)) {
            (Some(u), Some(t)) => u.min(t),
            (Some(k), None) | (None, Some(k)) => k,
            (None, None) => return,
        };
        if matches!(text[..start].trim_ascii_end().last(), Some(b',' | b'{')) {
            let mut tail = Vec::with_capacity(text.len() - start + 1);
            tail.push(b'{');
            tail.extend_from_slice(&text[start..]);
            if let Ok(p) = serde_json::from_slice::<Probe>(&tail) {
                return self.absorb_probe(p);
            }
        }
        if let Ok(p) = serde_json::from_slice::<Probe>(text) {
            self.absorb_probe(p);
        }
    }

    fn absorb_probe(&mut self, p: Probe<'_>) {
        if let Some(u) = p
            .usage
            .and_then(|r| serde_json::from_str::<OaiUsage>(r.get()).ok())
        {
            if let Some(n) = u.prompt_tokens.and_then(|n| n.as_u64()) {
                self.prompt = n;
            }
            if let Some(n) = u.completion_tokens.and_then(|n| n.as_u64()) {
                self.completion = n;
            }
        }
        if let Some(t) = p
            .timings
            .and_then(|r| serde_json::from_str::<Timings>(r.get()).ok())
        {
            if self.prompt == 0 {
                self.prompt = t.prompt_n.and_then(|n| n.as_u64()).unwrap_or(0);
            }
            if let Some(n) = t.predicted_n.and_then(|n| n.as_u64()) {
                self.completion = self.completion.max(n);
            }
            self.per_second = t
                .predicted_per_second
                .and_then(|n| n.as_f64())
                .or(self.per_second);
        }
    }
}

/// Longest SSE line kept across chunks; a longer one is not scanned (it is still forwarded).
const MAX_LINE: usize = 4 << 20;

/// Where a stream's events put generated text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TextKey {
    /// `"content":"…"` — chat completions, llama.cpp's `/completion` and `/infill`; also
    /// matches `"reasoning_content":"…"`, whose tokens are generated text too.
    #[default]
    Content,
    /// `"text":"…"` — completions, and Anthropic's `/v1/messages` (`text_delta`).
    Text,
}

// Searchers built once: building one per search cost more than the search on an event.
static USAGE: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\"usage\""));
static TIMINGS: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\"timings\""));
static CONTENT: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"content\":"));
static TEXT: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\"text\":"));

impl TextKey {
    fn finder(self) -> &'static memmem::Finder<'static> {
        match self {
            TextKey::Content => &CONTENT,
            TextKey::Text => &TEXT,
        }
    }
}

/// Scans an SSE byte stream event by event; only keeps the incomplete last line.
#[derive(Default)]
pub struct SseScanner {
    line: Vec<u8>,
    overlong: bool,
    key: TextKey,
    pub usage: Usage,
}

impl SseScanner {
    pub fn new(key: TextKey) -> Self {
        Self {
            key,
            ..Self::default()
        }
    }

    /// Scans the next piece of the stream; returns how many events that carry generated text
    /// ended in it.
    pub fn feed(&mut self, mut chunk: &[u8]) -> u32 {
        let mut texts = 0u32;
        while let Some(i) = memchr(b'\n', chunk) {
            let (head, rest) = (&chunk[..i], &chunk[i + 1..]);
            if self.line.is_empty() && !self.overlong {
                // The whole line is in this chunk: scan it in place.
                texts += u32::from(self.data_line(head));
            } else {
                self.keep(head);
                let line = std::mem::take(&mut self.line);
                if !std::mem::take(&mut self.overlong) {
                    texts += u32::from(self.data_line(&line));
                }
                // Reuse the allocation for the next split line.
                self.line = line;
                self.line.clear();
            }
            chunk = rest;
        }
        self.keep(chunk);
        texts
    }

    /// One line: true for a `data:` event with generated text; an event without is read for
    /// token counts.
    fn data_line(&mut self, line: &[u8]) -> bool {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return false;
        };
        let data = data.trim_ascii();
        if data.first() != Some(&b'{') {
            return false;
        }
        let key = self.key.finder();
        if let Some(i) = key.find(data) {
            // A non-empty string value: `"content":null`, `"content":""` or `"content":[`
            // carry no text.
            let value = data[i + key.needle().len()..].trim_ascii_start();
            if value.first() == Some(&b'"') && value.get(1).is_some_and(|b| *b != b'"') {
                return true;
            }
        }
        self.usage.absorb_json(data);
        false
    }

    fn keep(&mut self, part: &[u8]) {
        if self.overlong || part.is_empty() {
            return;
        }
        if self.line.len() + part.len() > MAX_LINE {
            self.overlong = true;
            self.line.clear();
        } else {
            self.line.extend_from_slice(part);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_usage_and_llama_timings() {
        let mut u = Usage::default();
        u.absorb_json(br#"{"choices":[{"message":{"content":"the \"usage\" word"}}],"usage": {"prompt_tokens": 32, "completion_tokens": 8}, "timings": {"prompt_n": 32, "predicted_n": 8, "predicted_per_second": 131.5}}"#);
        assert_eq!(
            u,
            Usage {
                prompt: 32,
                completion: 8,
                per_second: Some(131.5)
            }
        );
        let mut t = Usage::default();
        t.absorb_json(br#"{"timings": {"prompt_n": 5, "predicted_n": 3}}"#);
        assert_eq!((t.prompt, t.completion), (5, 3));
    }

    #[test]
    fn no_counts_or_odd_shapes_change_nothing() {
        let mut u = Usage::default();
        for text in [
            &br#"{"choices":[]}"#[..],
            br#"{"usage": null}"#,
            br#"{"usage": "many"}"#,
            br#"{"usage": {"prompt_tokens": -1}}"#,
            br#"{"usage": {"prompt_tokens": 3"#,
            br#"["usage"]"#,
            b"not json \"usage\"",
        ] {
            u.absorb_json(text);
        }
        assert_eq!(u, Usage::default());
    }

    #[test]
    fn a_string_that_mentions_usage_is_not_mistaken_for_it() {
        let mut u = Usage::default();
        u.absorb_json(br#"{"content":"{\"usage\": {\"prompt_tokens\": 9}}"}"#);
        assert_eq!(u, Usage::default());
    }

    #[test]
    fn only_the_outer_objects_counts_count() {
        for nested in [
            &br#"{"choices":[{"usage":{"prompt_tokens":9}}],"x":1}"#[..],
            br#"{"x":{"usage":{"prompt_tokens":9}}}"#,
            br#"[{"usage":{"prompt_tokens":9}}]"#,
        ] {
            let mut u = Usage::default();
            u.absorb_json(nested);
            assert_eq!(u, Usage::default(), "{}", String::from_utf8_lossy(nested));
        }
        let mut u = Usage::default();
        u.absorb_json(br#"{"usage":{"prompt_tokens":2,"completion_tokens":1},"note":"a \"usage"}"#);
        assert_eq!((u.prompt, u.completion), (2, 1), "found by the whole parse");
        let mut u = Usage::default();
        u.absorb_json(br#"{"timings":{"predicted_per_second":5.5},"choices":[], "usage" : {"prompt_tokens":1,"completion_tokens":2}}"#);
        assert_eq!(
            u,
            Usage {
                prompt: 1,
                completion: 2,
                per_second: Some(5.5)
            }
        );
    }

    #[test]
    fn sse_split_across_chunks() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\r\n\r\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
        for size in [1, 7, 64, stream.len()] {
            let mut s = SseScanner::default();
            let texts: u32 = stream.as_bytes().chunks(size).map(|p| s.feed(p)).sum();
            assert_eq!(texts, 1);
            assert_eq!(
                (s.usage.prompt, s.usage.completion),
                (5, 3),
                "chunks of {size}"
            );
        }
    }

    #[test]
    fn text_events_are_counted_and_not_mistaken() {
        let chat = concat!(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"hmm\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\": \"Hi\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"\\\"content\\\":\\\"\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":3}}\n\n",
            "data: [DONE]\n\n",
        );
        for size in [1, 5, 64, chat.len()] {
            let mut s = SseScanner::new(TextKey::Content);
            let n: u32 = chat.as_bytes().chunks(size).map(|c| s.feed(c)).sum();
            assert_eq!(n, 3, "chunks of {size}");
            assert_eq!((s.usage.prompt, s.usage.completion), (4, 3));
        }
        let completions = concat!(
            "data: {\"choices\":[{\"text\":\"Hi\",\"index\":0}]}\n\n",
            "data: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1}}\n\n",
        );
        let mut s = SseScanner::new(TextKey::Text);
        assert_eq!(s.feed(completions.as_bytes()), 1);
        assert_eq!((s.usage.prompt, s.usage.completion), (2, 1));
        let mut s = SseScanner::new(TextKey::Content);
        assert_eq!(s.feed(completions.as_bytes()), 0, "the other key");
    }

    #[test]
    fn sse_overlong_line_is_skipped_and_scanning_resumes() {
        let mut s = SseScanner::default();
        s.feed(b"data: {\"usage\":{\"prompt_tokens\":1,");
        s.feed(&vec![b'x'; MAX_LINE]);
        s.feed(b"}}\n\ndata: {\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":4}}\n\n");
        assert_eq!((s.usage.prompt, s.usage.completion), (2, 4));
        assert!(s.line.is_empty());
    }
}
