//! CEA-608 caption encoding: character sets, control codes, layout of a cue on the 32×15 grid
//! and the byte pairs that load it as a pop-on caption. No GStreamer here.
//!
//! * Characters: the basic set (ASCII with 608's replacements: `á é í ó ú ç ÷ Ñ ñ █ ’`), the
//!   special set (`® ° ½ ¿ ™ ¢ £ ♪ à è â ê î ô û`) and the two extended sets (Spanish/French and
//!   Portuguese/German/Danish: `Á É Ó Ú Ü ü ¡ “ ” — À Â Ç … Ã Í Ä Ö ß …`). An extended character
//!   follows a basic-set stand-in that decoders without the extended sets show and that those
//!   with them delete (the backspace convention). Anything else is transliterated
//!   (`deunicode`) to its closest basic characters; what is left becomes `?`.
//! * Control codes (preamble address codes, tab offsets, miscellaneous commands, special and
//!   extended characters) are sent twice in a row, as 608 wants; decoders drop the repeat.
//! * Layout: at most 32 columns per row, words kept whole where they fit, rows balanced, the
//!   lines centred on the bottom rows (row 15 upwards: two lines on rows 14–15). A cue longer than
//!   `max_lines` rows becomes several captions shown one after the other, each for its share of
//!   the cue's time.

/// Columns of a caption row.
pub const COLUMNS: usize = 32;
/// The lowest row; captions sit on the rows just above and including it.
pub const BOTTOM_ROW: u8 = 15;

/// A byte pair as sent in one field, without parity.
pub type Pair = [u8; 2];

/// The padding pair (nulls); [`with_parity`] turns it into `0x80 0x80`.
pub const PADDING: Pair = [0x00, 0x00];

/// One of the four 608 caption channels: CC1 and CC2 in field 1, CC3 and CC4 in field 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Channel {
    #[default]
    Cc1,
    Cc2,
    Cc3,
    Cc4,
}

impl Channel {
    /// Field 1 (CC1, CC2) or field 2 (CC3, CC4).
    pub fn field(self) -> u8 {
        match self {
            Channel::Cc1 | Channel::Cc2 => 1,
            Channel::Cc3 | Channel::Cc4 => 2,
        }
    }

    /// 0x08 for the second channel of a field (CC2, CC4): added to a control code's first byte.
    fn channel_bit(self) -> u8 {
        match self {
            Channel::Cc1 | Channel::Cc3 => 0x00,
            Channel::Cc2 | Channel::Cc4 => 0x08,
        }
    }

    /// First byte of the miscellaneous control codes: 0x14 in field 1, 0x15 in field 2.
    fn misc_base(self) -> u8 {
        (if self.field() == 1 { 0x14 } else { 0x15 }) | self.channel_bit()
    }
}

/// Miscellaneous control commands (second byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Resume caption loading: pop-on mode, characters go to the non-displayed memory.
    ResumeCaptionLoading = 0x20,
    /// Erase displayed memory: the caption on screen disappears.
    EraseDisplayedMemory = 0x2c,
    /// Erase non-displayed memory.
    EraseNonDisplayedMemory = 0x2e,
    /// End of caption: swap the memories, the loaded caption appears.
    EndOfCaption = 0x2f,
}

/// The pair of a miscellaneous command on `channel`.
pub fn command(channel: Channel, cmd: Command) -> Pair {
    [channel.misc_base(), cmd as u8]
}

/// Preamble address code: cursor to `row` (1–15), column `indent` (0, 4, …, 28), white.
pub fn preamble(channel: Channel, row: u8, indent: u8) -> Pair {
    debug_assert!((1..=15).contains(&row) && indent < 32 && indent.is_multiple_of(4));
    // (first byte, second byte's 0x20 bit) of each row, from the standard's table.
    let (first, high) = match row {
        1 => (0x11, false),
        2 => (0x11, true),
        3 => (0x12, false),
        4 => (0x12, true),
        5 => (0x15, false),
        6 => (0x15, true),
        7 => (0x16, false),
        8 => (0x16, true),
        9 => (0x17, false),
        10 => (0x17, true),
        11 => (0x10, false),
        12 => (0x13, false),
        13 => (0x13, true),
        14 => (0x14, false),
        _ => (0x14, true),
    };
    let second = 0x40 | if high { 0x20 } else { 0 } | 0x10 | (indent / 4) << 1;
    [first | channel.channel_bit(), second]
}

/// Tab offset by 1–3 columns.
pub fn tab_offset(channel: Channel, columns: u8) -> Pair {
    debug_assert!((1..=3).contains(&columns));
    [0x17 | channel.channel_bit(), 0x20 + columns]
}

/// How one character is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Glyph {
    /// A byte of the basic set.
    Basic(u8),
    /// Special North American character: control pair `0x11 lo`.
    Special(u8),
    /// Extended character: control pair `set lo` (set 0x12 or 0x13) after the basic `fallback`.
    Extended { set: u8, lo: u8, fallback: u8 },
}

/// Basic-set bytes that are not what ASCII has there: 0x2a á, 0x5c é, 0x5e í, 0x5f ó, 0x60 ú,
/// 0x7b ç, 0x7c ÷, 0x7d Ñ, 0x7e ñ, 0x7f █.
fn basic(c: char) -> Option<u8> {
    Some(match c {
        'á' => 0x2a,
        'é' => 0x5c,
        'í' => 0x5e,
        'ó' => 0x5f,
        'ú' => 0x60,
        'ç' => 0x7b,
        '÷' => 0x7c,
        'Ñ' => 0x7d,
        'ñ' => 0x7e,
        '█' => 0x7f,
        '’' | '\'' => 0x27,
        '*' | '\\' | '^' | '_' | '`' | '{' | '|' | '}' | '~' => return None,
        c if (' '..='~').contains(&c) => c as u8,
        _ => return None,
    })
}

const SPECIAL: [(char, u8); 15] = [
    ('®', 0x30),
    ('°', 0x31),
    ('½', 0x32),
    ('¿', 0x33),
    ('™', 0x34),
    ('¢', 0x35),
    ('£', 0x36),
    ('♪', 0x37),
    ('à', 0x38),
    ('è', 0x3a),
    ('â', 0x3b),
    ('ê', 0x3c),
    ('î', 0x3d),
    ('ô', 0x3e),
    ('û', 0x3f),
];

/// Extended characters: (character, set, code, basic-set stand-in).
const EXTENDED: [(char, u8, u8, u8); 63] = [
    ('Á', 0x12, 0x20, b'A'),
    ('É', 0x12, 0x21, b'E'),
    ('Ó', 0x12, 0x22, b'O'),
    ('Ú', 0x12, 0x23, b'U'),
    ('Ü', 0x12, 0x24, b'U'),
    ('ü', 0x12, 0x25, b'u'),
    ('‘', 0x12, 0x26, b'\''),
    ('¡', 0x12, 0x27, b'!'),
    ('*', 0x12, 0x28, b'.'),
    ('—', 0x12, 0x2a, b'-'),
    ('©', 0x12, 0x2b, b'c'),
    ('℠', 0x12, 0x2c, b's'),
    ('•', 0x12, 0x2d, b'.'),
    ('“', 0x12, 0x2e, b'"'),
    ('”', 0x12, 0x2f, b'"'),
    ('À', 0x12, 0x30, b'A'),
    ('Â', 0x12, 0x31, b'A'),
    ('Ç', 0x12, 0x32, b'C'),
    ('È', 0x12, 0x33, b'E'),
    ('Ê', 0x12, 0x34, b'E'),
    ('Ë', 0x12, 0x35, b'E'),
    ('ë', 0x12, 0x36, b'e'),
    ('Î', 0x12, 0x37, b'I'),
    ('Ï', 0x12, 0x38, b'I'),
    ('ï', 0x12, 0x39, b'i'),
    ('Ô', 0x12, 0x3a, b'O'),
    ('Ù', 0x12, 0x3b, b'U'),
    ('ù', 0x12, 0x3c, b'u'),
    ('Û', 0x12, 0x3d, b'U'),
    ('«', 0x12, 0x3e, b'"'),
    ('»', 0x12, 0x3f, b'"'),
    ('Ã', 0x13, 0x20, b'A'),
    ('ã', 0x13, 0x21, b'a'),
    ('Í', 0x13, 0x22, b'I'),
    ('Ì', 0x13, 0x23, b'I'),
    ('ì', 0x13, 0x24, b'i'),
    ('Ò', 0x13, 0x25, b'O'),
    ('ò', 0x13, 0x26, b'o'),
    ('Õ', 0x13, 0x27, b'O'),
    ('õ', 0x13, 0x28, b'o'),
    ('{', 0x13, 0x29, b'('),
    ('}', 0x13, 0x2a, b')'),
    ('\\', 0x13, 0x2b, b'/'),
    ('^', 0x13, 0x2c, b'\''),
    ('_', 0x13, 0x2d, b'-'),
    ('|', 0x13, 0x2e, b'!'),
    ('~', 0x13, 0x2f, b'-'),
    ('Ä', 0x13, 0x30, b'A'),
    ('ä', 0x13, 0x31, b'a'),
    ('Ö', 0x13, 0x32, b'O'),
    ('ö', 0x13, 0x33, b'o'),
    ('ß', 0x13, 0x34, b's'),
    ('¥', 0x13, 0x35, b'Y'),
    ('¤', 0x13, 0x36, b'$'),
    ('¦', 0x13, 0x37, b'!'),
    ('Å', 0x13, 0x38, b'A'),
    ('å', 0x13, 0x39, b'a'),
    ('Ø', 0x13, 0x3a, b'O'),
    ('ø', 0x13, 0x3b, b'o'),
    ('┌', 0x13, 0x3c, b'+'),
    ('┐', 0x13, 0x3d, b'+'),
    ('└', 0x13, 0x3e, b'+'),
    ('┘', 0x13, 0x3f, b'+'),
];

/// The glyph of a character 608 has, `None` for one it has not.
pub fn glyph(c: char) -> Option<Glyph> {
    if let Some(b) = basic(c) {
        return Some(Glyph::Basic(b));
    }
    if let Some(&(_, lo)) = SPECIAL.iter().find(|(s, _)| *s == c) {
        return Some(Glyph::Special(lo));
    }
    EXTENDED
        .iter()
        .find(|(e, ..)| *e == c)
        .map(|&(_, set, lo, fallback)| Glyph::Extended { set, lo, fallback })
}

/// The glyphs showing `c`: its own, or those of its closest equivalent (`€` → `EUR`, `ā` → `a`,
/// `…` → `...`); `?` when nothing is close. Control characters and zero-width ones give none.
pub fn glyphs(c: char) -> Vec<Glyph> {
    if let Some(g) = glyph(c) {
        return vec![g];
    }
    match c {
        '\u{00a0}' | '\u{2000}'..='\u{200a}' | '\u{202f}' | '\u{3000}' | '\t' => {
            return vec![Glyph::Basic(b' ')];
        }
        '\u{2010}'..='\u{2012}' | '\u{2013}' | '\u{2212}' => return vec![Glyph::Basic(b'-')],
        '\u{201a}' | '\u{201b}' | '\u{2032}' | '´' => return vec![Glyph::Basic(b'\'')],
        '\u{201e}' | '\u{201f}' | '\u{2033}' => return vec![Glyph::Basic(b'"')],
        c if c.is_control() || matches!(c, '\u{200b}'..='\u{200f}' | '\u{feff}') => {
            return Vec::new();
        }
        _ => {}
    }
    let ascii = match deunicode::deunicode_char(c) {
        Some(a) if !a.is_empty() => a,
        _ => "?",
    };
    ascii
        .chars()
        .map(|a| glyph(a).unwrap_or(Glyph::Basic(b'?')))
        .collect()
}

/// A row of text as 608 shows it: one glyph per column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub glyphs: Vec<Glyph>,
}

/// What is sent as one unit: a pair of basic characters (sent once) or a control code (sent
/// twice in a row; nothing may come between the two copies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Chars(Pair),
    Control(Pair),
}

impl Unit {
    /// The pairs that go on the wire for this unit.
    pub fn pairs(self) -> impl Iterator<Item = Pair> {
        let (p, n) = match self {
            Unit::Chars(p) => (p, 1),
            Unit::Control(p) => (p, 2),
        };
        std::iter::repeat_n(p, n)
    }
}

/// A word of text: glyphs and whether the text had a hard line break after it.
#[derive(Debug, Clone)]
struct Word {
    glyphs: Vec<Glyph>,
    /// Clause-ending punctuation at its end: a good place to break a line or a caption.
    clause_end: bool,
}

fn words(text: &str) -> Vec<Word> {
    text.split_whitespace()
        .map(|w| Word {
            glyphs: w.chars().flat_map(glyphs).collect(),
            clause_end: w.ends_with([',', '.', ';', ':', '?', '!', '…']),
        })
        .filter(|w| !w.glyphs.is_empty())
        .collect()
}

/// Words longer than a row are cut into row-long pieces.
fn split_long(words: Vec<Word>) -> Vec<Word> {
    let mut out = Vec::with_capacity(words.len());
    for w in words {
        if w.glyphs.len() <= COLUMNS {
            out.push(w);
            continue;
        }
        let n = w.glyphs.len().div_ceil(COLUMNS);
        for (i, chunk) in w.glyphs.chunks(COLUMNS).enumerate() {
            out.push(Word {
                glyphs: chunk.to_vec(),
                clause_end: w.clause_end && i + 1 == n,
            });
        }
    }
    out
}

fn line_width(words: &[Word]) -> usize {
    words.iter().map(|w| w.glyphs.len()).sum::<usize>() + words.len().saturating_sub(1)
}

/// Lines needed to fill `words` greedily into rows of [`COLUMNS`].
fn greedy_lines(words: &[Word]) -> usize {
    let mut lines = 0;
    let mut width = 0;
    for w in words {
        let need = if width == 0 {
            w.glyphs.len()
        } else {
            width + 1 + w.glyphs.len()
        };
        if width == 0 || need > COLUMNS {
            lines += 1;
            width = w.glyphs.len();
        } else {
            width = need;
        }
    }
    lines
}

/// Breaks `words` (which fit in `lines` rows) into exactly that many rows, as even as they can
/// be, preferring breaks after clause-ending punctuation and, at equal cost, a longer lower row
/// (the pyramid shape subtitlers use).
fn balance(words: &[Word], lines: usize) -> Vec<Vec<Word>> {
    fn best(words: &[Word], lines: usize) -> Option<(usize, Vec<usize>)> {
        if lines == 1 {
            let w = line_width(words);
            return (w <= COLUMNS).then(|| (w * w, Vec::new()));
        }
        let mut found: Option<(usize, Vec<usize>)> = None;
        for cut in 1..words.len() {
            let head = line_width(&words[..cut]);
            if head > COLUMNS {
                break;
            }
            if let Some((rest_cost, mut cuts)) = best(&words[cut..], lines - 1) {
                // Squared widths favour even rows; a clause end is worth a few columns; a
                // shorter first row wins ties.
                let bonus = if words[cut - 1].clause_end { 40 } else { 0 };
                let cost = (head * head + rest_cost).saturating_sub(bonus) * 2 + 1;
                let cost = if head <= line_width(&words[cut..]) {
                    cost - 1
                } else {
                    cost
                };
                if found.as_ref().is_none_or(|(c, _)| cost < *c) {
                    cuts.iter_mut().for_each(|c| *c += cut);
                    cuts.insert(0, cut);
                    found = Some((cost, cuts));
                }
            }
        }
        found
    }
    if lines <= 1 || words.len() <= 1 {
        return vec![words.to_vec()];
    }
    let lines = lines.min(words.len());
    match best(words, lines) {
        Some((_, cuts)) => {
            let mut rows = Vec::with_capacity(lines);
            let mut start = 0;
            for c in cuts.into_iter().chain(std::iter::once(words.len())) {
                rows.push(words[start..c].to_vec());
                start = c;
            }
            rows
        }
        None => vec![words.to_vec()],
    }
}

/// Lays `text` out as captions of at most `max_lines` rows of [`COLUMNS`] columns. Each caption
/// comes with its share of the text (in glyphs), to share the cue's time between them.
pub fn layout(text: &str, max_lines: usize) -> Vec<(Vec<Row>, usize)> {
    let max_lines = max_lines.clamp(1, 4);
    let words = split_long(words(text));
    if words.is_empty() {
        return Vec::new();
    }
    let total_lines = greedy_lines(&words);
    let captions = total_lines.div_ceil(max_lines);
    // Cut the words into `captions` runs of about equal length, at clause ends where one is
    // near, then check each run fits (else fall back to greedy pages).
    let pages = if captions == 1 {
        vec![words.clone()]
    } else {
        let total: usize = line_width(&words);
        let mut pages: Vec<Vec<Word>> = Vec::new();
        let mut current: Vec<Word> = Vec::new();
        let mut done_width = 0;
        for w in &words {
            if pages.len() + 1 < captions && !current.is_empty() {
                let target = total * (pages.len() + 1) / captions;
                let before = done_width + line_width(&current);
                let after = before + 1 + w.glyphs.len();
                current.push(w.clone());
                let overflow = greedy_lines(&current) > max_lines;
                current.pop();
                let clause = current.last().is_some_and(|p| p.clause_end) && before + 6 >= target;
                let nearest = after >= target && target.saturating_sub(before) <= after - target;
                if overflow || clause || nearest {
                    done_width = before + 1;
                    pages.push(std::mem::take(&mut current));
                }
            }
            current.push(w.clone());
        }
        if !current.is_empty() {
            pages.push(current);
        }
        if pages.iter().all(|p| greedy_lines(p) <= max_lines) {
            pages
        } else {
            greedy_pages(&words, max_lines)
        }
    };
    pages
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|page| {
            let lines = greedy_lines(&page);
            let rows = balance(&page, lines)
                .into_iter()
                .map(|words| {
                    let mut glyphs = Vec::new();
                    for (i, w) in words.iter().enumerate() {
                        if i > 0 {
                            glyphs.push(Glyph::Basic(b' '));
                        }
                        glyphs.extend_from_slice(&w.glyphs);
                    }
                    Row { glyphs }
                })
                .collect::<Vec<_>>();
            let share = rows.iter().map(|r| r.glyphs.len()).sum();
            (rows, share)
        })
        .collect()
}

fn greedy_pages(words: &[Word], max_lines: usize) -> Vec<Vec<Word>> {
    let mut pages = Vec::new();
    let mut current: Vec<Word> = Vec::new();
    for w in words {
        current.push(w.clone());
        if greedy_lines(&current) > max_lines {
            current.pop();
            pages.push(std::mem::take(&mut current));
            current.push(w.clone());
        }
    }
    if !current.is_empty() {
        pages.push(current);
    }
    pages
}

/// The units that load `rows` into the non-displayed memory of `channel` (pop-on): resume
/// caption loading, erase non-displayed memory, then per row a preamble (and tab offset) that
/// centres it on its row, rows ending on row 15, then its characters. End of caption is not
/// included: it is sent when the caption is due.
pub fn pop_on_load(channel: Channel, rows: &[Row]) -> Vec<Unit> {
    let mut units = vec![
        Unit::Control(command(channel, Command::ResumeCaptionLoading)),
        Unit::Control(command(channel, Command::EraseNonDisplayedMemory)),
    ];
    let n = rows.len().min(BOTTOM_ROW as usize) as u8;
    for (i, row) in rows.iter().take(n as usize).enumerate() {
        let width = row.glyphs.len().min(COLUMNS);
        let column = ((COLUMNS - width) / 2) as u8;
        units.push(Unit::Control(preamble(
            channel,
            BOTTOM_ROW + 1 - n + i as u8,
            column / 4 * 4,
        )));
        if !column.is_multiple_of(4) {
            units.push(Unit::Control(tab_offset(channel, column % 4)));
        }
        push_glyphs(channel, &row.glyphs[..width], &mut units);
    }
    units
}

fn push_glyphs(channel: Channel, glyphs: &[Glyph], units: &mut Vec<Unit>) {
    let mut pending: Option<u8> = None;
    let push_char = |b: u8, units: &mut Vec<Unit>, pending: &mut Option<u8>| match pending.take() {
        Some(first) => units.push(Unit::Chars([first, b])),
        None => *pending = Some(b),
    };
    for g in glyphs {
        match *g {
            Glyph::Basic(b) => push_char(b, units, &mut pending),
            Glyph::Special(lo) => {
                if let Some(first) = pending.take() {
                    units.push(Unit::Chars([first, 0x00]));
                }
                units.push(Unit::Control([0x11 | channel.channel_bit(), lo]));
            }
            Glyph::Extended { set, lo, fallback } => {
                push_char(fallback, units, &mut pending);
                if let Some(first) = pending.take() {
                    units.push(Unit::Chars([first, 0x00]));
                }
                units.push(Unit::Control([set | channel.channel_bit(), lo]));
            }
        }
    }
    if let Some(first) = pending {
        units.push(Unit::Chars([first, 0x00]));
    }
}

/// `b` with odd parity in bit 7, as every 608 byte is sent.
pub fn with_parity(b: u8) -> u8 {
    let b = b & 0x7f;
    if b.count_ones().is_multiple_of(2) {
        b | 0x80
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_text(row: &Row) -> String {
        row.glyphs
            .iter()
            .map(|g| match *g {
                Glyph::Basic(b) => match b {
                    0x2a => "á".into(),
                    0x5c => "é".into(),
                    0x5e => "í".into(),
                    0x5f => "ó".into(),
                    0x60 => "ú".into(),
                    0x7b => "ç".into(),
                    0x7c => "÷".into(),
                    0x7d => "Ñ".into(),
                    0x7e => "ñ".into(),
                    0x7f => "█".into(),
                    b => (b as char).to_string(),
                },
                Glyph::Special(lo) => SPECIAL
                    .iter()
                    .find(|(_, l)| *l == lo)
                    .map(|(c, _)| c.to_string())
                    .unwrap(),
                Glyph::Extended { set, lo, .. } => EXTENDED
                    .iter()
                    .find(|(_, s, l, _)| (*s, *l) == (set, lo))
                    .map(|(c, ..)| c.to_string())
                    .unwrap(),
            })
            .collect()
    }

    #[test]
    fn parity_is_odd() {
        assert_eq!(with_parity(0x00), 0x80);
        assert_eq!(with_parity(0x14), 0x94);
        assert_eq!(with_parity(0x2c), 0x2c);
        assert_eq!(with_parity(0x21), 0xa1);
        assert_eq!(with_parity(0x2f), 0x2f);
        assert_eq!(with_parity(b'A'), 0xc1);
        for b in 0..=0x7f_u8 {
            assert_eq!(with_parity(b).count_ones() % 2, 1);
            assert_eq!(with_parity(b) & 0x7f, b);
        }
    }

    #[test]
    fn control_codes_per_channel() {
        assert_eq!(command(Channel::Cc1, Command::EndOfCaption), [0x14, 0x2f]);
        assert_eq!(command(Channel::Cc2, Command::EndOfCaption), [0x1c, 0x2f]);
        assert_eq!(
            command(Channel::Cc3, Command::ResumeCaptionLoading),
            [0x15, 0x20]
        );
        assert_eq!(
            command(Channel::Cc4, Command::EraseDisplayedMemory),
            [0x1d, 0x2c]
        );
        // Rows 14 and 15, column 0; row 15 column 8; row 1; row 11.
        assert_eq!(preamble(Channel::Cc1, 14, 0), [0x14, 0x50]);
        assert_eq!(preamble(Channel::Cc1, 15, 0), [0x14, 0x70]);
        assert_eq!(preamble(Channel::Cc1, 15, 8), [0x14, 0x74]);
        assert_eq!(preamble(Channel::Cc1, 1, 28), [0x11, 0x5e]);
        assert_eq!(preamble(Channel::Cc1, 11, 0), [0x10, 0x50]);
        assert_eq!(preamble(Channel::Cc2, 15, 0), [0x1c, 0x70]);
        assert_eq!(tab_offset(Channel::Cc1, 2), [0x17, 0x22]);
    }

    #[test]
    fn spanish_characters() {
        assert_eq!(glyph('a'), Some(Glyph::Basic(b'a')));
        assert_eq!(glyph('á'), Some(Glyph::Basic(0x2a)));
        assert_eq!(glyph('é'), Some(Glyph::Basic(0x5c)));
        assert_eq!(glyph('í'), Some(Glyph::Basic(0x5e)));
        assert_eq!(glyph('ó'), Some(Glyph::Basic(0x5f)));
        assert_eq!(glyph('ú'), Some(Glyph::Basic(0x60)));
        assert_eq!(glyph('ñ'), Some(Glyph::Basic(0x7e)));
        assert_eq!(glyph('Ñ'), Some(Glyph::Basic(0x7d)));
        assert_eq!(glyph('¿'), Some(Glyph::Special(0x33)));
        assert_eq!(
            glyph('¡'),
            Some(Glyph::Extended {
                set: 0x12,
                lo: 0x27,
                fallback: b'!'
            })
        );
        assert_eq!(
            glyph('Á'),
            Some(Glyph::Extended {
                set: 0x12,
                lo: 0x20,
                fallback: b'A'
            })
        );
        assert_eq!(
            glyph('ü'),
            Some(Glyph::Extended {
                set: 0x12,
                lo: 0x25,
                fallback: b'u'
            })
        );
        assert_eq!(
            glyph('Í'),
            Some(Glyph::Extended {
                set: 0x13,
                lo: 0x22,
                fallback: b'I'
            })
        );
        // ASCII that 608's basic set replaced goes through the extended sets.
        assert!(matches!(glyph('*'), Some(Glyph::Extended { .. })));
        assert!(matches!(glyph('~'), Some(Glyph::Extended { .. })));
    }

    #[test]
    fn closest_equivalents() {
        let text = |c| row_text(&Row { glyphs: glyphs(c) });
        assert_eq!(text('€'), "EUR");
        assert_eq!(text('ā'), "a");
        assert_eq!(text('…'), "...");
        assert_eq!(text('–'), "-");
        assert_eq!(text('\u{a0}'), " ");
        assert_eq!(text('ł'), "l");
        assert_eq!(text('\u{200b}'), "");
        assert_eq!(text('Œ'), "OE");
    }

    #[test]
    fn every_table_entry_is_distinct_and_in_range() {
        let mut seen = std::collections::HashSet::new();
        for (c, set, lo, fallback) in EXTENDED {
            assert!(set == 0x12 || set == 0x13);
            assert!((0x20..=0x3f).contains(&lo));
            assert!(seen.insert((set, lo)), "{c}");
            assert!(matches!(glyph(fallback as char), Some(Glyph::Basic(_))));
            assert_eq!(glyph(c), Some(Glyph::Extended { set, lo, fallback }));
        }
        for (c, lo) in SPECIAL {
            assert_eq!(glyph(c), Some(Glyph::Special(lo)));
        }
    }

    fn lines(text: &str, max: usize) -> Vec<Vec<String>> {
        layout(text, max)
            .into_iter()
            .map(|(rows, _)| rows.iter().map(row_text).collect())
            .collect()
    }

    #[test]
    fn short_text_is_one_row() {
        assert_eq!(lines("Buenas noches.", 2), vec![vec!["Buenas noches."]]);
        assert_eq!(lines("  \n ", 2), Vec::<Vec<String>>::new());
    }

    #[test]
    fn two_balanced_rows() {
        let l = lines(
            "El ayuntamiento votó esta noche ampliar el puente del puerto.",
            2,
        );
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].len(), 2);
        for row in &l[0] {
            assert!(row.chars().count() <= COLUMNS, "{row}");
        }
        let (a, b) = (l[0][0].chars().count(), l[0][1].chars().count());
        assert!(a.abs_diff(b) <= 12, "{l:?}");
        assert_eq!(
            l[0].join(" "),
            "El ayuntamiento votó esta noche ampliar el puente del puerto."
        );
    }

    #[test]
    fn long_text_becomes_several_captions() {
        let text = "Las fuertes lluvias causaron largos retrasos en la línea de ferrocarril \
                    del norte esta tarde, y los ingenieros dicen que las vías deberían reabrir \
                    mañana temprano.";
        let l = lines(text, 2);
        assert!(l.len() >= 2, "{l:?}");
        for page in &l {
            assert!(page.len() <= 2);
            for row in page {
                assert!(row.chars().count() <= COLUMNS, "{row}");
            }
        }
        let joined: Vec<String> = l.iter().map(|p| p.join(" ")).collect();
        assert_eq!(
            joined.join(" "),
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        // One row per caption.
        let l1 = lines(text, 1);
        assert!(l1.iter().all(|p| p.len() == 1));
    }

    #[test]
    fn very_long_word_is_cut() {
        let w = "a".repeat(40);
        let l = lines(&w, 2);
        assert_eq!(l, vec![vec!["a".repeat(32), "a".repeat(8)]]);
    }

    #[test]
    fn load_sequence() {
        let (rows, _) = layout("Hola, ¿qué tal?", 2).remove(0);
        let units = pop_on_load(Channel::Cc1, &rows);
        let ctl = |p| Unit::Control(p);
        // 15 columns: centred from column 8 (preamble 8, tab 0).
        assert_eq!(
            units,
            vec![
                ctl([0x14, 0x20]),
                ctl([0x14, 0x2e]),
                ctl([0x14, 0x74]),
                Unit::Chars([b'H', b'o']),
                Unit::Chars([b'l', b'a']),
                Unit::Chars([b',', b' ']),
                ctl([0x11, 0x33]),
                Unit::Chars([b'q', b'u']),
                Unit::Chars([0x5c, b' ']),
                Unit::Chars([b't', b'a']),
                Unit::Chars([b'l', b'?']),
            ]
        );
        let doubled: Vec<Pair> = units.iter().flat_map(|u| u.pairs()).collect();
        assert_eq!(
            &doubled[..4],
            &[[0x14, 0x20], [0x14, 0x20], [0x14, 0x2e], [0x14, 0x2e]]
        );
    }

    #[test]
    fn extended_character_follows_its_stand_in() {
        let rows = vec![Row {
            glyphs: "¡Sí!".chars().flat_map(glyphs).collect(),
        }];
        let units = pop_on_load(Channel::Cc1, &rows);
        assert_eq!(
            &units[4..],
            &[
                Unit::Chars([b'!', 0x00]),
                Unit::Control([0x12, 0x27]),
                Unit::Chars([b'S', 0x5e]),
                Unit::Chars([b'!', 0x00]),
            ]
        );
        // Centred: 4 columns from column 14 = preamble 12 + tab offset 2.
        assert_eq!(units[2], Unit::Control([0x14, 0x76]));
        assert_eq!(units[3], Unit::Control([0x17, 0x22]));
    }

    #[test]
    fn rows_end_on_row_15() {
        let (rows, _) = layout(&"palabra ".repeat(14), 4).remove(0);
        assert_eq!(rows.len(), 4);
        let units = pop_on_load(Channel::Cc1, &rows);
        let pacs: Vec<Pair> = units
            .iter()
            .filter_map(|u| match u {
                Unit::Control(p) if p[1] >= 0x40 => Some(*p),
                _ => None,
            })
            .collect();
        let rows: Vec<u8> = pacs
            .iter()
            .map(|p| match (p[0], p[1] & 0x20 != 0) {
                (0x13, false) => 12,
                (0x13, true) => 13,
                (0x14, false) => 14,
                (0x14, true) => 15,
                _ => 0,
            })
            .collect();
        assert_eq!(rows, vec![12, 13, 14, 15]);
    }
}
