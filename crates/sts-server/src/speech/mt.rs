//! Machine translation with apertium: the stages of a language pair's mode file run as one
//! persistent pipeline of processes, each with `-z` (flush on NUL), driven by one thread.
//!
//! A request is the text escaped for apertium's stream format, a blank and a NUL; the answer
//! is everything up to the next NUL on the last stage's output. (The trailing blank matters:
//! `lt-proc -b` holds a word back until it sees the character after its `$`.) The generator
//! runs with `-n`, as `apertium -u` does, so unknown words carry no `*` mark; the `#` and `@`
//! marks that remain are stripped by [`clean_output`]. A pipeline that dies or misses a
//! deadline is killed and started again for the next request.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

use super::{PAIRS, PairSpec, SpeechError, find_pair};

/// Where Debian's apertium packages put their mode files.
pub const MODES_DIR: &str = "/usr/share/apertium/modes";
/// Longest text accepted for one translation, in bytes.
pub const MAX_TEXT_BYTES: usize = 16 << 10;
/// Longest answer accepted from the pipeline, in bytes.
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Requests waiting for the driver thread.
const QUEUE: usize = 64;
/// How long the warm-up translation at start may take (the stages load their dictionaries).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Characters with a meaning in apertium's stream format, escaped with `\` on input.
const SPECIAL: &[char] = &[
    '^', '$', '@', '*', '/', '<', '>', '{', '}', '[', ']', '\\', '#', '+', '~', '|',
];

/// Escapes plain text for apertium's stream format: the special characters get a `\`, NUL
/// and other control characters become spaces.
pub fn escape_input(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if SPECIAL.contains(&c) {
            out.push('\\');
            out.push(c);
        } else if c.is_control() {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// Turns the pipeline's output back into plain text: drops superblanks (`[…]`) and the
/// unknown-word / generation marks (`*`, `#`, `@`) the stream format may still carry,
/// unescapes `\x`, and collapses whitespace.
pub fn clean_output(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    let mut depth = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next()
                    && depth == 0
                {
                    out.push(n);
                }
            }
            '[' => depth += 1,
            ']' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            '*' | '#' | '@' => {}
            '\0' => {}
            c => out.push(c),
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The command lines of a mode file's stages, with `$1` = `-n` (generation without
/// unknown-word marks, as `apertium -u`) and `$2` (tagger options) empty, each given `-z`.
fn stages(mode_file: &Path) -> Result<Vec<Vec<String>>, SpeechError> {
    let text = std::fs::read_to_string(mode_file)
        .map_err(|e| SpeechError::Failed(format!("{}: {e}", mode_file.display())))?;
    let mut stages = Vec::new();
    for stage in text.trim().split('|') {
        let stage = stage.replace("$1", "-n").replace("$2", "");
        let mut words = shlex::split(&stage).ok_or_else(|| {
            SpeechError::Failed(format!(
                "{}: cannot parse stage {stage:?}",
                mode_file.display()
            ))
        })?;
        if words.is_empty() {
            return Err(SpeechError::Failed(format!(
                "{}: empty stage",
                mode_file.display()
            )));
        }
        words.insert(1, "-z".into());
        stages.push(words);
    }
    if stages.is_empty() {
        return Err(SpeechError::Failed(format!(
            "{}: no stages",
            mode_file.display()
        )));
    }
    Ok(stages)
}

/// The running processes of one pipeline.
struct Pipeline {
    children: Vec<Child>,
    stdin: Option<ChildStdin>,
    answers: Receiver<Vec<u8>>,
    reader: Option<JoinHandle<()>>,
}

impl Pipeline {
    fn spawn(stages: &[Vec<String>]) -> Result<Pipeline, SpeechError> {
        let mut children: Vec<Child> = Vec::with_capacity(stages.len());
        let mut previous: Option<std::process::ChildStdout> = None;
        let mut first_stdin = None;
        for words in stages {
            let stdin = match previous.take() {
                Some(out) => Stdio::from(out),
                None => Stdio::piped(),
            };
            let spawned = Command::new(&words[0])
                .args(&words[1..])
                .stdin(stdin)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn();
            let mut child = match spawned {
                Ok(c) => c,
                Err(e) => {
                    kill_all(&mut children);
                    return Err(if e.kind() == std::io::ErrorKind::NotFound {
                        SpeechError::Missing {
                            package: "apertium",
                            detail: format!("apertium stage program {} not found", words[0]),
                        }
                    } else {
                        SpeechError::Failed(format!("cannot start {}: {e}", words[0]))
                    });
                }
            };
            if first_stdin.is_none() {
                first_stdin = child.stdin.take();
            }
            previous = child.stdout.take();
            children.push(child);
        }
        let mut stdout = previous.expect("at least one stage");
        let (tx, answers) = bounded(4);
        let reader = std::thread::Builder::new()
            .name("sts-mt-reader".into())
            .spawn(move || {
                let mut pending = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let n = match stdout.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(at) = pending.iter().position(|&b| b == 0) {
                        let answer: Vec<u8> = pending.drain(..=at).take(at).collect();
                        if tx.send(answer).is_err() {
                            return;
                        }
                    }
                    if pending.len() > MAX_ANSWER_BYTES {
                        return;
                    }
                }
            })
            .map_err(|e| SpeechError::Failed(format!("cannot start a reader thread: {e}")))?;
        Ok(Pipeline {
            children,
            stdin: first_stdin,
            answers,
            reader: Some(reader),
        })
    }

    fn ask(&mut self, text: &str, deadline: Instant) -> Result<String, SpeechError> {
        let mut request = escape_input(text).into_bytes();
        request.extend_from_slice(b" \0");
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| SpeechError::Failed("apertium pipeline closed".into()))?;
        stdin
            .write_all(&request)
            .and_then(|()| stdin.flush())
            .map_err(|e| SpeechError::Failed(format!("apertium pipeline died ({e})")))?;
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.answers.recv_timeout(wait) {
            Ok(raw) => Ok(clean_output(&String::from_utf8_lossy(&raw))),
            Err(RecvTimeoutError::Timeout) => Err(SpeechError::Timeout(
                "apertium did not answer before the deadline".into(),
            )),
            Err(RecvTimeoutError::Disconnected) => {
                Err(SpeechError::Failed("an apertium stage died".into()))
            }
        }
    }
}

fn kill_all(children: &mut [Child]) {
    for c in children.iter_mut() {
        let _ = c.kill();
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stdin = None;
        kill_all(&mut self.children);
        // Unblock a reader waiting to hand over answers nobody asked for any more (4 late
        // answers fill the channel): with the receiver gone its send fails and it ends.
        drop(std::mem::replace(
            &mut self.answers,
            crossbeam_channel::never(),
        ));
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

struct Request {
    text: String,
    deadline: Instant,
    reply: std::sync::mpsc::SyncSender<Result<String, SpeechError>>,
}

/// One language pair's persistent apertium pipeline and the thread that drives it.
pub struct Translator {
    pair: &'static PairSpec,
    requests: Option<Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Translator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Translator")
            .field("pair", &self.pair)
            .finish_non_exhaustive()
    }
}

impl Translator {
    /// Starts the pipeline of `source` → `target` (see [`PAIRS`]) and checks that it
    /// translates. Fails with [`SpeechError::Missing`] naming the package to install when
    /// apertium or the pair's data is absent.
    pub fn start(source: &str, target: &str) -> Result<Translator, SpeechError> {
        let pair = find_pair(source, target).ok_or_else(|| {
            SpeechError::Input(format!(
                "no apertium pair {source} → {target} is known (known: {})",
                PAIRS
                    .iter()
                    .map(|p| format!("{}→{}", p.source, p.target))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let mode_file = PathBuf::from(MODES_DIR).join(format!("{}.mode", pair.apertium_mode));
        if !mode_file.is_file() {
            return Err(SpeechError::Missing {
                package: pair.apertium_package,
                detail: format!(
                    "the apertium mode {} ({}) is not installed",
                    pair.apertium_mode,
                    mode_file.display()
                ),
            });
        }
        let stages = stages(&mode_file)?;
        let mut pipeline = Pipeline::spawn(&stages)?;
        // The first answer proves every stage loaded its data.
        pipeline
            .ask("Hello.", Instant::now() + START_TIMEOUT)
            .map_err(|e| {
                SpeechError::Failed(format!(
                    "apertium {} does not work: {e}",
                    pair.apertium_mode
                ))
            })?;
        let (tx, rx) = bounded::<Request>(QUEUE);
        let thread = std::thread::Builder::new()
            .name(format!("sts-mt-{}", pair.apertium_mode))
            .spawn(move || drive(stages, Some(pipeline), rx))
            .map_err(|e| SpeechError::Failed(format!("cannot start the MT thread: {e}")))?;
        Ok(Translator {
            pair,
            requests: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn pair(&self) -> &'static PairSpec {
        self.pair
    }

    /// Translates `text`, waiting at most until `deadline`. A timed-out or crashed pipeline
    /// gives [`SpeechError::Timeout`] / [`SpeechError::Failed`] and is restarted.
    pub fn translate(&self, text: &str, deadline: Instant) -> Result<String, SpeechError> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(SpeechError::Input(format!(
                "text of {} bytes is longer than {MAX_TEXT_BYTES}",
                text.len()
            )));
        }
        if text.trim().is_empty() {
            return Ok(String::new());
        }
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let request = Request {
            text: text.to_owned(),
            deadline,
            reply,
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        self.requests
            .as_ref()
            .expect("live until drop")
            .send_timeout(request, wait)
            .map_err(|e| match e {
                crossbeam_channel::SendTimeoutError::Timeout(_) => {
                    SpeechError::Timeout("the MT queue stayed full until the deadline".into())
                }
                crossbeam_channel::SendTimeoutError::Disconnected(_) => {
                    SpeechError::Failed("the MT thread has stopped".into())
                }
            })?;
        // The driver answers every request it takes by its deadline; a little slack covers
        // the hand-over.
        let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(200);
        answer
            .recv_timeout(wait)
            .map_err(|_| SpeechError::Timeout("the MT thread did not answer in time".into()))?
    }
}

impl Drop for Translator {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The driver thread: one request at a time; a pipeline that failed is dropped (killed) and
/// spawned again for the next request.
fn drive(stages: Vec<Vec<String>>, mut pipeline: Option<Pipeline>, requests: Receiver<Request>) {
    for request in requests {
        if Instant::now() >= request.deadline {
            let _ = request.reply.send(Err(SpeechError::Timeout(
                "deadline passed before translation started".into(),
            )));
            continue;
        }
        let result = match pipeline.as_mut() {
            Some(p) => p.ask(&request.text, request.deadline),
            None => match Pipeline::spawn(&stages) {
                Ok(p) => pipeline.insert(p).ask(&request.text, request.deadline),
                Err(e) => Err(e),
            },
        };
        if let Err(e) = &result {
            tracing::warn!("apertium: {e}; restarting the pipeline");
            pipeline = None;
        }
        let _ = request.reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips_through_cleaning() {
        let text = r"a [b] ^c$ d@e *f /g <h> {i} \j #k +l ~m |n";
        let escaped = escape_input(text);
        assert_eq!(
            escaped,
            r"a \[b\] \^c\$ d\@e \*f \/g \<h\> \{i\} \\j \#k \+l \~m \|n"
        );
        assert_eq!(clean_output(&escaped), text);
        assert_eq!(escape_input("a\0b\nc"), "a b c");
    }

    #[test]
    fn cleaning_drops_marks_and_superblanks() {
        assert_eq!(
            clean_output(" El *xyzzy  #votar @bridge[<b>]. \n"),
            "El xyzzy votar bridge."
        );
        assert_eq!(clean_output("[[t:b:1]]hola[]"), "hola");
        assert_eq!(clean_output(r"100 \% \*real\*"), "100 % *real*");
    }

    #[test]
    fn mode_file_stages_get_null_flush() {
        let dir = tempfile::tempdir().unwrap();
        let mode = dir.path().join("x-y.mode");
        std::fs::write(
            &mode,
            "lt-proc -w '/a b/x.bin' | apertium-tagger -g $2 '/p' | lt-proc $1 '/g.bin'\n",
        )
        .unwrap();
        assert_eq!(
            stages(&mode).unwrap(),
            vec![
                vec!["lt-proc", "-z", "-w", "/a b/x.bin"],
                vec!["apertium-tagger", "-z", "-g", "/p"],
                vec!["lt-proc", "-z", "-n", "/g.bin"],
            ]
        );
    }
}
