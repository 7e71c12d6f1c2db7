//! Token counts from backend responses, without buffering streams: a JSON body's `usage` (and
//! llama.cpp's `timings`), or the same in the `data:` events of an SSE stream.
//!
//! This runs on every proxied request, so it avoids building a `serde_json::Value` of the whole
//! answer (that was 6% of the proxy's CPU): a text that does not mention `"usage"` or `"timings"`
//! is not parsed at all, and one that does is parsed into a probe that borrows the two objects
//! and skips everything else.

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

fn mentions_counts(text: &[u8]) -> bool {
    memmem::find(text, b"\"usage\"").is_some() || memmem::find(text, b"\"timings\"").is_some()
}

impl Usage {
    /// Folds one response object (a whole JSON body or one SSE event's data) in; later values
    /// win. Text that is not a JSON object, or has no counts, changes nothing.
    pub fn absorb_json(&mut self, text: &[u8]) {
        if !mentions_counts(text) {
            return;
        }
        let Ok(p) = serde_json::from_slice::<Probe>(text) else {
            return;
        };
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

/// Scans an SSE byte stream event by event; only keeps the incomplete last line.
#[derive(Default)]
pub struct SseScanner {
    line: Vec<u8>,
    overlong: bool,
    pub usage: Usage,
}

impl SseScanner {
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while let Some(i) = memchr(b'\n', chunk) {
            let (head, rest) = (&chunk[..i], &chunk[i + 1..]);
            if self.line.is_empty() && !self.overlong {
                // The whole line is in this chunk: scan it in place.
                data_line(&mut self.usage, head);
            } else {
                self.keep(head);
                let line = std::mem::take(&mut self.line);
                if !std::mem::take(&mut self.overlong) {
                    data_line(&mut self.usage, &line);
                }
                // Reuse the allocation for the next split line.
                self.line = line;
                self.line.clear();
            }
            chunk = rest;
        }
        self.keep(chunk);
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

fn data_line(usage: &mut Usage, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(data) = line.strip_prefix(b"data:") {
        let data = data.trim_ascii();
        if data.first() == Some(&b'{') {
            usage.absorb_json(data);
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
    fn sse_split_across_chunks() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\r\n\r\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
        for size in [1, 7, 64, stream.len()] {
            let mut s = SseScanner::default();
            for piece in stream.as_bytes().chunks(size) {
                s.feed(piece);
            }
            assert_eq!(
                (s.usage.prompt, s.usage.completion),
                (5, 3),
                "chunks of {size}"
            );
        }
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
