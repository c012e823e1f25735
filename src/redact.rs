//! What a URL shows in logs, error messages, property read-backs and pipeline dumps: the one
//! redaction rule of the plugin and of the worker.
//!
//! Secrets a URL can carry: credentials (`rtsp://user:password@…`), query values
//! (`https://sts/…?api_key=SECRET`) and, for RTMP, the stream key (the path after the
//! application: `rtmp://host/app/<key>`). [`redact_url`] replaces each with `***`, keeping
//! what an operator needs (scheme, host, port, path, the query's names); [`redact_urls`] does
//! it for every URL in a text.

/// `url` without secrets: `user:password@` → `***@`, each query value → `***`, an RTMP stream
/// key → `***`. A string that is not a URL gives `<invalid url>` (it may be one, mangled).
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = reqwest::Url::parse(url) else {
        return "<invalid url>".into();
    };
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_username("***");
        let _ = u.set_password(None);
    }
    if u.query().is_some() {
        let pairs: Vec<String> = u.query_pairs().map(|(k, _)| format!("{k}=***")).collect();
        u.set_query(Some(&pairs.join("&")));
    }
    if let Some(key) = rtmp_stream_key(&u) {
        let app_len = u.path().len() - key.len();
        let app = u.path()[..app_len].to_string();
        u.set_path(&format!("{app}***"));
    }
    u.to_string().replace("%2A%2A%2A", "***")
}

/// The values of `url` that are secrets (its password, user name, query values, RTMP stream
/// key), for a redactor of free text.
pub fn url_secrets(url: &str) -> Vec<String> {
    let Ok(u) = reqwest::Url::parse(url) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(p) = u.password() {
        out.push(p.to_string());
        out.push(percent_decode(p));
    }
    for (_, v) in u.query_pairs() {
        out.push(v.into_owned());
    }
    if let Some(key) = rtmp_stream_key(&u) {
        out.push(key.to_string());
    }
    out
}

fn percent_decode(s: &str) -> String {
    reqwest::Url::parse(&format!("http://h/?x={s}"))
        .ok()
        .and_then(|u| u.query_pairs().next().map(|(_, v)| v.into_owned()))
        .unwrap_or_default()
}

/// The stream key of an RTMP URL: the path after the application (`rtmp://host/app/<key>`).
fn rtmp_stream_key(u: &reqwest::Url) -> Option<&str> {
    if !u.scheme().starts_with("rtmp") {
        return None;
    }
    let path = u.path().trim_start_matches('/');
    let (_, key) = path.split_once('/')?;
    (!key.is_empty()).then_some(key)
}

/// `text` with every URL in it through [`redact_url`].
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        // The scheme: letters, digits, '+', '-', '.' before "://".
        let start = rest[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
            .map_or(0, |p| p + 1);
        let end = rest[i..]
            .find(|c: char| c.is_whitespace() || "\"'<>`),;".contains(c))
            .map_or(rest.len(), |p| i + p);
        out.push_str(&rest[..start]);
        if start == i {
            out.push_str(&rest[start..end]);
        } else {
            out.push_str(&redact_url(&rest[start..end]));
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_query_values_are_hidden() {
        assert_eq!(
            redact_url("rtsp://user:pa55@cam.example:554/live/x"),
            "rtsp://***@cam.example:554/live/x"
        );
        assert_eq!(
            redact_url("https://u:p@sts:8000/api/v1/sts/process?token=abc&x=1"),
            "https://***@sts:8000/api/v1/sts/process?token=***&x=***"
        );
        assert_eq!(
            redact_url("https://sts/api/v1/sts/process?api_key=SECRET"),
            "https://sts/api/v1/sts/process?api_key=***"
        );
        assert_eq!(redact_url("http://sts:8000/p"), "http://sts:8000/p");
        assert_eq!(redact_url("not a url"), "<invalid url>");
        assert_eq!(
            url_secrets("http://u:p%40ss@h/x?k=v1&j=v2"),
            ["p%40ss", "p@ss", "v1", "v2"]
        );
    }

    #[test]
    fn rtmp_stream_keys_are_hidden() {
        assert_eq!(
            redact_url("rtmp://a.rtmp.youtube.com/live2/abcd-1234-efgh"),
            "rtmp://a.rtmp.youtube.com/live2/***"
        );
        assert_eq!(redact_url("rtmp://h/live"), "rtmp://h/live");
        assert_eq!(url_secrets("rtmp://h/app/key-1"), ["key-1"]);
    }

    #[test]
    fn every_url_of_a_text() {
        assert_eq!(
            redact_urls(r#"Rtsp("rtsp://a:b@h1/x") rtmp://c@h2/y"#),
            r#"Rtsp("rtsp://***@h1/x") rtmp://***@h2/y"#
        );
        assert_eq!(
            redact_urls("publishing to rtmp://h:1935/live/s3cr3t/out live=1"),
            "publishing to rtmp://h:1935/live/*** live=1"
        );
        assert_eq!(redact_urls("no url here"), "no url here");
        assert_eq!(redact_urls("a :// b"), "a :// b");
    }
}
