//! Subtitles of a dubbed file: the translation cues `stsbridge` puts on its text pad, written
//! as SubRip (`.srt`) next to the output.

/// One subtitle: the translation of a dub, where its speech plays in the output file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cue {
    pub start_ns: u64,
    pub end_ns: u64,
    pub text: String,
}

/// `HH:MM:SS,mmm`, rounded to the nearest millisecond.
fn timestamp(ns: u64) -> String {
    let ms = (ns + 500_000) / 1_000_000;
    format!(
        "{:02}:{:02}:{:02},{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// The cues as a SubRip document (numbered from 1, blank line between cues; empty cues left
/// out, line breaks inside a text kept, blank lines inside it removed since they end a cue).
pub fn to_srt(cues: &[Cue]) -> String {
    let mut out = String::new();
    let mut n = 0;
    for c in cues {
        let text: Vec<&str> = c
            .text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if text.is_empty() || c.end_ns <= c.start_ns {
            continue;
        }
        n += 1;
        out.push_str(&format!(
            "{n}\n{} --> {}\n{}\n\n",
            timestamp(c.start_ns),
            timestamp(c.end_ns),
            text.join("\n")
        ));
    }
    out
}

/// Where the `.srt` of `output` goes for `language`: `out/x.mp4` → `out/x.srt`, or
/// `out/x.de.srt` for the languages after the first.
pub fn srt_path(output: &std::path::Path, language: Option<&str>) -> std::path::PathBuf {
    match language {
        None => output.with_extension("srt"),
        Some(l) => output.with_extension(format!("{l}.srt")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_numbered_cues_in_subrip_form() {
        let cues = [
            Cue {
                start_ns: 1_234_567_890,
                end_ns: 3_600_000_000_000 + 61_005_000_000,
                text: "Buenas noches,\n\n y bienvenidos ".into(),
            },
            Cue {
                start_ns: 5_000_000_000,
                end_ns: 5_000_000_000,
                text: "zero length: left out".into(),
            },
            Cue {
                start_ns: 6_000_000_000,
                end_ns: 7_500_000_000,
                text: "  ".into(),
            },
            Cue {
                start_ns: 8_000_000_000,
                end_ns: 9_000_000_000,
                text: "¡Gol!".into(),
            },
        ];
        assert_eq!(
            to_srt(&cues),
            "1\n00:00:01,235 --> 01:01:01,005\nBuenas noches,\ny bienvenidos\n\n\
             2\n00:00:08,000 --> 00:00:09,000\n¡Gol!\n\n"
        );
    }

    #[test]
    fn srt_files_sit_next_to_the_output() {
        let p = std::path::Path::new("out/dubbed-translate.mp4");
        assert_eq!(
            srt_path(p, None),
            std::path::Path::new("out/dubbed-translate.srt")
        );
        assert_eq!(
            srt_path(p, Some("de")),
            std::path::Path::new("out/dubbed-translate.de.srt")
        );
    }
}
