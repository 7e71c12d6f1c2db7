//! Token counts from backend responses, without buffering streams: a JSON body's `usage` (and
//! llama.cpp's `timings`), or the same in the `data:` events of an SSE stream.

use serde_json::Value;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    /// llama.cpp's own measurement of generation speed, when it reports one.
    pub per_second: Option<f64>,
}

impl Usage {
    /// Folds one response object (a whole JSON body or one SSE event) in; later values win.
    pub fn absorb(&mut self, v: &Value) {
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            if let Some(p) = u.get("prompt_tokens").and_then(Value::as_u64) {
                self.prompt = p;
            }
            if let Some(c) = u.get("completion_tokens").and_then(Value::as_u64) {
                self.completion = c;
            }
        }
        if let Some(t) = v.get("timings").filter(|t| t.is_object()) {
            if self.prompt == 0 {
                self.prompt = t.get("prompt_n").and_then(Value::as_u64).unwrap_or(0);
            }
            if let Some(n) = t.get("predicted_n").and_then(Value::as_u64) {
                self.completion = self.completion.max(n);
            }
            self.per_second = t
                .get("predicted_per_second")
                .and_then(Value::as_f64)
                .or(self.per_second);
        }
    }
}

/// Scans an SSE byte stream event by event; only keeps the incomplete last line.
#[derive(Default)]
pub struct SseScanner {
    line: Vec<u8>,
    pub usage: Usage,
}

impl SseScanner {
    pub fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if b == b'\n' {
                self.line_done();
            } else if self.line.len() < 4 << 20 {
                self.line.push(b);
            }
        }
    }

    fn line_done(&mut self) {
        let line = std::mem::take(&mut self.line);
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches('\r');
        if let Some(data) = text.strip_prefix("data:") {
            let data = data.trim();
            if data.starts_with('{') {
                if let Ok(v) = serde_json::from_str::<Value>(data) {
                    self.usage.absorb(&v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_usage_and_llama_timings() {
        let mut u = Usage::default();
        u.absorb(&json!({"usage": {"prompt_tokens": 32, "completion_tokens": 8}, "timings": {"prompt_n": 32, "predicted_n": 8, "predicted_per_second": 131.5}}));
        assert_eq!(
            u,
            Usage {
                prompt: 32,
                completion: 8,
                per_second: Some(131.5)
            }
        );
        let mut t = Usage::default();
        t.absorb(&json!({"timings": {"prompt_n": 5, "predicted_n": 3}}));
        assert_eq!((t.prompt, t.completion), (5, 3));
    }

    #[test]
    fn sse_split_across_chunks() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
        let mut s = SseScanner::default();
        for piece in stream.as_bytes().chunks(7) {
            s.feed(piece);
        }
        assert_eq!((s.usage.prompt, s.usage.completion), (5, 3));
    }
}
