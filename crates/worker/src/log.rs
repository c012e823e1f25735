//! Logging: `tracing` to stderr (text or JSON lines), GStreamer's own debug log through the same
//! redaction, and what must never reach a log.
//!
//! Secrets that can reach a log line are URL credentials (`rtsp://user:password@…`,
//! `https://user:password@sts…`), query values (`?key=…`), RTMP stream keys (the path after
//! the application: `rtmp://host/app/<key>`) and the STS API key. Everything the worker logs
//! goes through [`redact`], and so does every line of GStreamer's debug log (`GST_DEBUG`),
//! whatever an element prints: [`init_logging`] replaces GStreamer's default log function
//! (`GST_DEBUG_FILE` is not honoured: the log goes to stderr).

use std::sync::RwLock;

/// Values that are replaced by `***` wherever they appear in a log line (the API key, URL
/// passwords, stream keys), registered with [`add_secret`].
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Logs to stderr at `RUST_LOG` (default `info`), as JSON lines with `json`.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

/// Routes GStreamer's debug log (`GST_DEBUG`) through [`redact`] to stderr, in the layout of
/// GStreamer's default log function. Call after `gst::init`.
pub fn redact_gstreamer_log() {
    use std::io::Write;
    let start = std::time::Instant::now();
    gst::log::remove_default_log_function();
    gst::log::add_log_function(move |cat, level, file, function, line, object, message| {
        let Some(text) = message.get() else { return };
        let obj = object.map(|o| format!(":<{o}>")).unwrap_or_default();
        let e = start.elapsed();
        let line = format!(
            "{}:{:02}:{:02}.{:09} {:>6} {:?} {:>7} {:>20} {file}:{line}:{function}{obj} {}\n",
            e.as_secs() / 3600,
            (e.as_secs() / 60) % 60,
            e.as_secs() % 60,
            e.subsec_nanos(),
            std::process::id(),
            std::thread::current().id(),
            level.name(),
            cat.name(),
            redact(text.as_str()),
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    });
}

/// Registers a value never to be logged (empty values and values shorter than 4 characters
/// are ignored: they would blank out ordinary words).
pub fn add_secret(value: &str) {
    if value.len() < 4 {
        return;
    }
    let mut s = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if !s.iter().any(|v| v == value) {
        s.push(value.to_string());
        // Longest first, so that a secret containing another is replaced whole.
        s.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }
}

/// Registers the secrets of `url`: its password, query values and, for RTMP, its stream key
/// ([`gstdubbing::redact::url_secrets`]).
pub fn add_url_secrets(url: &str) {
    for secret in gstdubbing::redact::url_secrets(url) {
        add_secret(&secret);
    }
}

/// `url` for a log: the plugin's rule ([`gstdubbing::redact::redact_url`]): no
/// `user:password@`, query values `***`, an RTMP stream key `***`.
pub use gstdubbing::redact::redact_url;

/// `text` for a log: every URL in it through [`redact_url`], every registered secret
/// replaced by `***`.
pub fn redact(text: &str) -> String {
    let mut out = gstdubbing::redact::redact_urls(text);
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    for s in secrets.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_hidden() {
        assert_eq!(
            redact_url("rtsp://user:pa55@cam.example:554/live/x"),
            "rtsp://***@cam.example:554/live/x"
        );
        assert_eq!(
            redact_url("https://u:p@sts:8000/api/v1/sts/process?token=abc&x=1"),
            "https://***@sts:8000/api/v1/sts/process?token=***&x=***"
        );
        // Every URL of a longer text, the host kept.
        assert_eq!(
            redact(r#"Rtsp("rtsp://a:b@h1/x") rtmp://c@h2/y"#),
            r#"Rtsp("rtsp://***@h1/x") rtmp://***@h2/y"#
        );
        assert_eq!(redact("no url here"), "no url here");
        assert_eq!(redact("a :// b"), "a :// b");
    }

    #[test]
    fn rtmp_stream_keys_are_hidden() {
        assert_eq!(
            redact_url("rtmp://a.rtmp.youtube.com/live2/abcd-1234-efgh"),
            "rtmp://a.rtmp.youtube.com/live2/***"
        );
        assert_eq!(
            redact("publishing to rtmp://h:1935/live/s3cr3t/out live=1"),
            "publishing to rtmp://h:1935/live/*** live=1"
        );
        // No stream path: nothing to hide.
        assert_eq!(redact_url("rtmp://h/live"), "rtmp://h/live");
    }

    #[test]
    fn registered_secrets_are_replaced_anywhere() {
        add_url_secrets("rtmp://h/app/Stream-Key-77?pass=Qwerty99");
        add_secret("sk-test-0123456789");
        add_secret("ab"); // too short to register
        let line = "key Stream-Key-77 in app/Stream-Key-77, Qwerty99, Bearer sk-test-0123456789 ab";
        assert_eq!(redact(line), "key *** in app/***, ***, Bearer *** ab");
    }
}
