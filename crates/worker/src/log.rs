//! Logging: `tracing` to stderr (text or JSON lines), and what must never reach a log.

/// Logs to stderr at `RUST_LOG` (default `info`), as JSON lines with `json`.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

/// Input URLs may carry credentials (rtsp://user:pass@host): never log them.
pub fn redact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(['/', '"', ' ']).unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***@");
                out.push_str(&authority[at + 1..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_in_urls_are_hidden() {
        assert_eq!(
            redact("rtsp://user:pa55@cam.example:554/live/x"),
            "rtsp://***@cam.example:554/live/x"
        );
        // Every URL of a longer text (the input as `{:?}`), the host kept.
        assert_eq!(
            redact(r#"Rtsp("rtsp://a:b@h1/x") rtmp://c@h2/y"#),
            r#"Rtsp("rtsp://***@h1/x") rtmp://***@h2/y"#
        );
        // An '@' in the path is not a credential.
        assert_eq!(redact("rtmp://h/live/a@b"), "rtmp://h/live/a@b");
        assert_eq!(redact("no url here"), "no url here");
    }
}
