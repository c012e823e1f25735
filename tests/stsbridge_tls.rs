//! HTTPS to the STS: certificates are verified by default. A server whose certificate comes
//! from a private CA is refused (fallback plus a bus warning) until its CA is given in
//! `tls-ca-file`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use gst::prelude::*;

/// The Python HTTPS echo server, killed on drop.
struct HttpsEcho {
    child: Child,
    port: u16,
}

impl HttpsEcho {
    fn start(cert: &Path, key: &Path) -> HttpsEcho {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/https_echo.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(cert)
            .arg(key)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the server prints its port");
        HttpsEcho { child, port }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/api/v1/sts/process", self.port)
    }
}

impl Drop for HttpsEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(args: &[&str], dir: &Path) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(ok.success(), "openssl {args:?}");
}

/// A private CA (ca.pem) and a server certificate for 127.0.0.1 signed by it. Returns
/// (ca, server cert, server key).
fn private_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=gst-dubbing test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        dir,
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.pem",
            "-extfile",
            "ext.cnf",
        ],
        dir,
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[test]
fn https_verifies_certificates_unless_the_ca_is_given() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = private_ca(&dir);
    let srv = HttpsEcho::start(&cert, &key);

    // Refused: fallback with the original audio, and a warning that says why.
    let url = srv.url();
    let mut b = Bridge::new(false, 16000, 1, 0, |b| {
        b.set_property("url", &url);
        b.set_property("max-retries", 0u32);
    });
    let a = test_audio(0, 1600, 1);
    b.push(&a);
    b.push(&test_audio(1, 1600, 1));
    let out = b.finish(Duration::from_secs(10));
    assert_eq!(out.reasons(), vec!["transport"; 2]);
    assert!(out.frags[0].samples == a);
    let detail = out.fragment_msgs[0].get::<String>("detail").unwrap();
    assert!(detail.contains("certificate"), "{detail}");

    // The warning is on the bus, once.
    init();
    let p = gst::parse::launch(&format!(
        "audiotestsrc num-buffers=3 samplesperbuffer=1600 ! audio/x-raw,format=S16LE,rate=16000,channels=1 \
         ! stsbridge url={url} max-retries=0 ! fakesink"
    ))
    .unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let bus = p.bus().unwrap();
    let mut warnings = Vec::new();
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(10)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{}", e.error()),
            gst::MessageView::Warning(w) => warnings.push(w.error().to_string()),
            _ => {}
        }
    }
    p.set_state(gst::State::Null).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("tls-ca-file"), "{}", warnings[0]);

    // Accepted with its CA.
    let ca = ca.to_str().unwrap().to_owned();
    let mut b = Bridge::new(false, 16000, 1, 0, |b| {
        b.set_property("url", &url);
        b.set_property("tls-ca-file", &ca);
    });
    b.push(&a);
    let out = b.finish(Duration::from_secs(10));
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(
        out.outcomes(),
        vec!["dubbed"],
        "{:?}",
        out.fragment_msgs[0].get::<String>("detail")
    );
    assert!(out.frags[0].samples == a);
}

#[test]
fn unreadable_ca_file_is_a_clear_error() {
    init();
    let p = gst::parse::launch(
        "audiotestsrc num-buffers=1 ! audio/x-raw,format=S16LE ! stsbridge url=https://127.0.0.1:1/x \
         tls-ca-file=/nonexistent/ca.pem ! fakesink",
    )
    .unwrap();
    assert!(p.set_state(gst::State::Paused).is_err());
    let msg = p
        .bus()
        .unwrap()
        .timed_pop_filtered(gst::ClockTime::from_seconds(2), &[gst::MessageType::Error])
        .expect("an error");
    let gst::MessageView::Error(e) = msg.view() else {
        unreachable!()
    };
    let text = format!("{:?}", e.debug());
    assert!(
        text.contains("tls-ca-file") && text.contains("/nonexistent/ca.pem"),
        "{text}"
    );
    p.set_state(gst::State::Null).unwrap();
}
