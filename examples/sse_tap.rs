//! The proxy's per-event token tap (`proxy::tokens::SseScanner`) on a recorded llama-server
//! stream, for `bench/sse-tap`, which runs it under callgrind at two commits and prints the
//! instructions per event of each and their ratio.
//!
//! `sse_tap FILE STREAMS`: feeds FILE (an SSE stream) STREAMS times through a fresh scanner, one
//! event per chunk as llama-server sends them. It compiles against the scanner before and after
//! `feed` returned the count of text events, so both commits can be measured with it.

use llamactl::proxy::tokens::SseScanner;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(file), Some(n)) = (args.next(), args.next()) else {
        eprintln!("usage: sse_tap FILE STREAMS");
        std::process::exit(2);
    };
    let text = std::fs::read(&file).unwrap_or_else(|e| {
        eprintln!("{file}: {e}");
        std::process::exit(1)
    });
    let n: u64 = n.parse().unwrap_or_else(|e| {
        eprintln!("STREAMS: {e}");
        std::process::exit(2)
    });
    let events: Vec<&[u8]> = text
        .split_inclusive(|b| *b == b'\n')
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|pair| {
            let len: usize = pair.iter().map(|l| l.len()).sum();
            let start = pair[0].as_ptr() as usize - text.as_ptr() as usize;
            &text[start..start + len]
        })
        .collect();
    let mut completion = 0u64;
    for _ in 0..n {
        let mut s = SseScanner::default();
        for e in &events {
            #[allow(clippy::let_unit_value, clippy::unit_arg)]
            let _ = std::hint::black_box(s.feed(std::hint::black_box(e)));
        }
        completion += s.usage.completion;
    }
    println!(
        "{} events per stream, {completion} completion tokens",
        events.len()
    );
}
