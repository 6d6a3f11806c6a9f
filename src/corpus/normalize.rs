//! Note normalization: de-identification placeholders become the paper's typed tags, and the
//! dirt found in the real files (control characters, `JavaScript:parent.POPUP` lines) goes.
//!
//! Pure functions over one note's text, so the pipeline can run them in parallel and tests can
//! pin their output with snapshots.

use std::borrow::Cow;
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use memchr::memmem;
use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};

use crate::Source;

/// What to do with de-identification placeholders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Deid {
    /// Replace placeholders with the paper's typed tags (`[Name]`, `[LOC]`, ...).
    #[default]
    Tags,
    /// Leave placeholders exactly as they are in the source.
    Keep,
}

/// The paper's de-identification tags. Each becomes one token in the tokenizer.
pub const TAGS: [&str; 15] = [
    "[Name]",
    "[Company]",
    "[Reg#]",
    "[LOC]",
    "[#]",
    "[CI]",
    "[DR]",
    "[YR]",
    "[MO]",
    "[DAY]",
    "[Age]",
    "[State]",
    "[Country]",
    "[URL]",
    "[MISC]",
];

/// Placeholder type names, in the order the paper's released code tries them
/// (`convert_deid_to_tag.py`): the first whose text, or its lowercase, occurs anywhere in the
/// placeholder decides. Order matters: `Hospital Ward Name` is a hospital (`[Company]`), and
/// `Month/Day/Year` a year.
const TYPE_NAMES: &[(&str, &str)] = &[
    ("First Name", "[Name]"),
    ("Last Name", "[Name]"),
    ("Clip Number (Radiology)", "[Reg#]"),
    ("Hospital", "[Company]"),
    ("Numeric Identifier", "[Reg#]"),
    ("Location", "[LOC]"),
    ("Initials", "[Name]"),
    ("Known lastname", "[Name]"),
    ("Known firstname", "[Name]"),
    ("Age over 90", "[Age]"),
    ("Medical Record Number", "[Reg#]"),
    ("Telephone/Fax", "[#]"),
    ("Name", "[Name]"),
    ("Street Address", "[LOC]"),
    ("Date Range", "[DR]"),
    ("Date range", "[DR]"),
    ("Serial Number", "[#]"),
    ("Social Security Number", "[#]"),
    ("State", "[State]"),
    ("E-mail address", "[CI]"),
    ("Company", "[Company]"),
    ("Pager number", "[#]"),
    ("Country", "[Country]"),
    ("MD Number", "[Reg#]"),
    ("Wardname", "[LOC]"),
    ("College", "[Company]"),
    ("Apartment Address", "[LOC]"),
    ("URL", "[URL]"),
    ("CC Contact Info", "[CI]"),
    ("Attending Info", "[CI]"),
    ("Job Number", "[Reg#]"),
    ("Year", "[YR]"),
    ("Month", "[MO]"),
    ("Day", "[DAY]"),
    ("Holiday", "[DAY]"),
    ("Unit Number", "[Reg#]"),
    ("PO Box", "[LOC]"),
    ("Dictator Info", "[CI]"),
    ("Provider Number", "[#]"),
];

/// Each type name and its lowercase, as patterns; pattern `i` is type `i % TYPE_NAMES.len()`.
static TYPE_MATCHER: LazyLock<AhoCorasick> = LazyLock::new(|| {
    let names = TYPE_NAMES.iter().map(|(name, _)| name.to_string());
    let lower = TYPE_NAMES.iter().map(|(name, _)| name.to_lowercase());
    AhoCorasickBuilder::new()
        .match_kind(MatchKind::Standard)
        .build(names.chain(lower))
        .expect("placeholder type names form a valid automaton")
});

/// Month names: a placeholder holding one is a shifted date, kept as text.
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

static PLACEHOLDER_OPEN: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new("[**"));

/// Most characters the inside of a `[**...**]` placeholder may have.
const PLACEHOLDER_CHARS: usize = 120;

static WHITESPACE_RUN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\s+").expect("valid regex"));

/// Context right before a MIMIC-IV `___` that tells its type unambiguously; the first
/// rule that matches wins. One set, searched once: `___` is common in MIMIC-IV, and five
/// separate searches of the same few bytes cost normalization a tenth of its time.
static IV_BEFORE: LazyLock<(RegexSet, [&'static str; 5])> = LazyLock::new(|| {
    let rules = [
        (
            r"(?i)(?:\bname|\battending|\bdictated by|\bsigned by):\s*$",
            "[Name]",
        ),
        (r"(?:\bDr|\bMr|\bMrs|\bMs|\bMiss)\.?\s+$", "[Name]"),
        (
            r"(?i)(?:\bunit no|\bmrn|\bmedical record number):?\s*$",
            "[Reg#]",
        ),
        (
            r"(?i)(?:\btelephone|\bphone|\bfax|\bpager)(?: number)?:?\s*(?:#\s*)?$",
            "[#]",
        ),
        (r"(?i)\bage:\s*$", "[Age]"),
    ];
    (
        RegexSet::new(rules.map(|(re, _)| re)).expect("valid regexes"),
        rules.map(|(_, tag)| tag),
    )
});

/// Context right after a MIMIC-IV `___`.
static IV_AFTER: LazyLock<[(Regex, &'static str); 1]> = LazyLock::new(|| {
    [(
        Regex::new(r"^(?:[- ]?(?:year|yr)s?[- ]old\b|\s*y/?o\b|\s*yo\b)").expect("valid regex"),
        "[Age]",
    )]
});

/// How far around a `___` the context rules look, in bytes.
const CONTEXT_BYTES: usize = 32;

/// Normalizes one note. Returns the cleaned text; an empty string means nothing was left.
///
/// Each step borrows its input when it has nothing to change, which is the common case, so
/// most notes are copied once, by the last step.
pub fn normalize(text: &str, source: Source, deid: Deid) -> String {
    let cleaned = strip_junk(text);
    match deid {
        Deid::Keep => tidy_lines(&cleaned),
        Deid::Tags => {
            let text = replace_mimic3_placeholders(&cleaned);
            match source {
                Source::MimicIv => tidy_lines(&replace_mimic4_placeholders(&text)),
                Source::MimicIii => tidy_lines(&text),
            }
        }
    }
}

static POPUP: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new("JavaScript:parent.POPUP"));

/// Whether `text` has nothing [`strip_junk`] removes or rewrites: no control character
/// other than tab and newline (C0, DEL, or C1, which UTF-8 spells `C2 80..=C2 9F`), no
/// `\r`, no POPUP line.
fn is_clean(text: &str) -> bool {
    let bytes = text.as_bytes();
    // Bitwise, with no early exit inside a chunk, so the compiler vectorizes the scan.
    let suspect = |b: u8| ((b < 0x20) & (b != b'\t') & (b != b'\n')) | (b == 0x7f) | (b == 0xc2);
    let any_suspect = bytes
        .chunks(64)
        .any(|chunk| chunk.iter().fold(false, |found, &b| found | suspect(b)));
    if any_suspect {
        // 0xC2 also starts common characters such as `°`: look again, exactly.
        let control = bytes.iter().enumerate().any(|(i, &b)| match b {
            0xc2 => bytes.get(i + 1).is_some_and(|&n| n < 0xa0),
            b => suspect(b),
        });
        if control {
            return false;
        }
    }
    POPUP.find(bytes).is_none()
}

/// Drops `JavaScript:parent.POPUP` lines and control characters other than tab and newline;
/// `\r\n` and lone `\r` become `\n`.
fn strip_junk(text: &str) -> Cow<'_, str> {
    if is_clean(text) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(remove_junk(text))
    }
}

/// [`strip_junk`]'s work, line by line; every line gets a `\n`.
fn remove_junk(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.contains("JavaScript:parent.POPUP") {
            continue;
        }
        for c in line.chars() {
            match c {
                '\t' => out.push(c),
                '\r' => out.push('\n'),
                c if c.is_control() => {}
                c => out.push(c),
            }
        }
        out.push('\n');
    }
    out
}

/// Trims trailing whitespace on every line and blank lines at both ends; keeps leading
/// indentation, which carries structure in radiology reports.
///
/// Most lines need no trimming: runs of such lines are copied in one piece.
fn tidy_lines(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    // Start of the lines passed over so far that are copied as they are.
    let mut verbatim: Option<usize> = None;
    let mut start = 0;
    while start < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |i| start + i);
        let line = &text[start..end];
        // A last byte that is printable ASCII is not whitespace: nothing to trim.
        let kept = match line.as_bytes().last() {
            Some(b'!'..=b'~') => line.len(),
            _ => line.trim_end().len(),
        };
        if kept < line.len() || (kept == 0 && out.is_empty() && verbatim.is_none()) {
            if let Some(from) = verbatim.take() {
                out.push_str(&text[from..start]);
            }
            // A blank line before anything is kept is dropped.
            if kept > 0 || !out.is_empty() {
                out.push_str(&line[..kept]);
                out.push('\n');
            }
        } else if verbatim.is_none() {
            verbatim = Some(start);
        }
        start = end + 1;
    }
    if let Some(from) = verbatim {
        out.push_str(&text[from..]);
    }
    out.truncate(out.trim_end().len());
    out
}

fn replace_mimic3_placeholders(text: &str) -> Cow<'_, str> {
    let Some(first) = next_placeholder(text, 0) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut found = Some(first);
    while let Some((start, end)) = found {
        out.push_str(&text[last..start]);
        out.push_str(&mimic3_tag(&text[start + 3..end - 3]));
        last = end;
        found = next_placeholder(text, end);
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

/// The first `[**...**]` placeholder at or after byte `from`, where the inside has at most
/// [`PLACEHOLDER_CHARS`] characters, may span a line break, but never has a bracket: the
/// leftmost match of `\[\*\*[^\[\]]{0,120}?\*\*\]`, found without a regex engine (its
/// forward and reverse scans were a third of normalization's time).
fn next_placeholder(text: &str, from: usize) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut at = from;
    while let Some(i) = PLACEHOLDER_OPEN.find(&bytes[at..]) {
        let start = at + i;
        let inside = start + 3;
        // The inside ends at the first bracket after `[**`, which must be the `]` of `**]`;
        // 120 characters are at most 480 bytes.
        let window = &bytes[inside..bytes.len().min(inside + 4 * PLACEHOLDER_CHARS + 3)];
        if let Some(j) = memchr::memchr2(b'[', b']', window) {
            let close = inside + j;
            if bytes[close] == b']'
                && j >= 2
                && &bytes[close - 2..close] == b"**"
                && text[inside..close - 2].chars().count() <= PLACEHOLDER_CHARS
            {
                return Some((start, close + 1));
            }
        }
        at = start + 1;
    }
    None
}

/// The replacement for the inside of one `[**...**]` placeholder, by the paper's released
/// rules: a type name anywhere in it gives its tag (the first in [`TYPE_NAMES`] order);
/// otherwise a date (three `-` parts, or digits with `-` and `/`, or a month's name) stays
/// as text, a bare number is an identifier (`[Reg#]`, shifted years included), an empty
/// placeholder goes, and anything else, which the released code refuses, is `[MISC]`.
pub fn mimic3_tag(inner: &str) -> Cow<'static, str> {
    let trimmed = inner.trim();
    // A placeholder split over a line break reads as one line.
    let collapsed =
        if trimmed.contains("  ") || trimmed.contains(|c: char| c.is_whitespace() && c != ' ') {
            WHITESPACE_RUN.replace_all(trimmed, " ")
        } else {
            Cow::Borrowed(trimmed)
        };
    let text = collapsed.as_ref();
    let types = TYPE_NAMES.len();
    if let Some(first) = TYPE_MATCHER
        .find_overlapping_iter(text)
        .map(|m| m.pattern().as_usize() % types)
        .min()
    {
        return TYPE_NAMES[first].1.into();
    }
    if text.is_empty() {
        return "".into();
    }
    // A date split over a line break is joined again.
    if text.split('-').count() == 3 {
        return text
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .into();
    }
    if text.chars().all(char::is_numeric) {
        return "[Reg#]".into();
    }
    let digits: String = text.chars().filter(|&c| c != '-' && c != '/').collect();
    if !digits.is_empty() && digits.chars().all(char::is_numeric) {
        return collapsed.into_owned().into();
    }
    if MONTHS.iter().any(|m| text.contains(m)) {
        return collapsed.into_owned().into();
    }
    "[MISC]".into()
}

/// Replaces each run of exactly three underscores.
fn replace_mimic4_placeholders(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let (mut at, mut last) = (0, 0);
    while let Some(found) = memchr::memchr(b'_', &bytes[at..]) {
        let start = at + found;
        let end = start + bytes[start..].iter().take_while(|&&b| b == b'_').count();
        if end - start == 3 {
            let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
            out.push_str(&text[last..start]);
            out.push_str(mimic4_tag(text, start, end));
            last = end;
        }
        at = end;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut out) => {
            out.push_str(&text[last..]);
            Cow::Owned(out)
        }
    }
}

/// The tag for the `___` at `start..end`, from the text around it on the same line.
fn mimic4_tag(text: &str, start: usize, end: usize) -> &'static str {
    let before_start = floor_char_boundary(text, start.saturating_sub(CONTEXT_BYTES));
    let before = &text[before_start..start];
    let before = before.rsplit('\n').next().unwrap_or(before);
    let after_end = floor_char_boundary(text, (end + CONTEXT_BYTES).min(text.len()));
    let after = &text[end..after_end];
    let after = after.split('\n').next().unwrap_or(after);
    let (before_rules, before_tags) = &*IV_BEFORE;
    if let Some(rule) = before_rules.matches(before).iter().next() {
        return before_tags[rule];
    }
    IV_AFTER
        .iter()
        .find(|(re, _)| re.is_match(after))
        .map_or("[MISC]", |(_, tag)| tag)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The released code's rules, written plainly: the reference for [`mimic3_tag`]'s
    /// automaton and shortcuts.
    fn mimic3_tag_reference(inner: &str) -> String {
        let text = WHITESPACE_RUN.replace_all(inner.trim(), " ").into_owned();
        for (name, tag) in TYPE_NAMES {
            if text.contains(name) || text.contains(&name.to_lowercase()) {
                return tag.to_string();
            }
        }
        if text.is_empty() {
            String::new()
        } else if text.split('-').count() == 3 {
            text.chars().filter(|c| !c.is_whitespace()).collect()
        } else if text.chars().all(char::is_numeric) {
            "[Reg#]".into()
        } else if (!text.replace(['-', '/'], "").is_empty()
            && text.replace(['-', '/'], "").chars().all(char::is_numeric))
            || MONTHS.iter().any(|m| text.contains(m))
        {
            text
        } else {
            "[MISC]".into()
        }
    }

    /// Uniform picks in `0..n` from the crate's seeded generator.
    fn picker(seed: u64) -> impl FnMut(usize) -> usize {
        let mut rng = ehrprep_data::rng::Rng::new(seed);
        move |n| rng.below(n as u64) as usize
    }

    #[test]
    fn placeholders_are_found_as_the_regex_finds_them() {
        let regex = Regex::new(r"\[\*\*([^\[\]]{0,120}?)\*\*\]").expect("valid regex");
        // Pieces that open, close and break placeholders, and runs that put the inside's
        // length on both sides of 120 characters, in ASCII and in two-byte characters.
        let x40 = "x".repeat(40);
        let e40 = "é".repeat(40);
        let alphabet = [
            "[", "]", "*", "**", "[**", "**]", "[***", "***]", "a", " ", "\n", "é", &x40, &e40,
        ];
        let mut pick = picker(3);
        for _ in 0..20000 {
            let len = pick(14);
            let text: String = (0..len).map(|_| alphabet[pick(alphabet.len())]).collect();
            let want: Vec<(usize, usize)> = regex
                .find_iter(&text)
                .map(|m| (m.start(), m.end()))
                .collect();
            let mut got = Vec::new();
            let mut at = 0;
            while let Some((start, end)) = next_placeholder(&text, at) {
                got.push((start, end));
                at = end;
            }
            assert_eq!(got, want, "{text:?}");
        }
        // Insides of exactly 115 to 125 characters, of one to four bytes each.
        for n in 115..=125 {
            for fill in ["x", "é", "x é", "€", "😀"] {
                let inside: String = fill.chars().cycle().take(n).collect();
                let text = format!("a [**{inside}**] b");
                let want = regex.find(&text).map(|m| (m.start(), m.end()));
                assert_eq!(
                    next_placeholder(&text, 0),
                    want,
                    "{n} characters of {fill:?}"
                );
            }
        }
    }

    #[test]
    fn mimic3_tag_agrees_with_the_released_rules_written_plainly() {
        let alphabet = [
            "Known", "lastname", "Name", "hospital", "Ward", "Day", "Month", "Year", "May", "1",
            "2151", "-", "/", "7", " ", "  ", "\n", "\t", "\u{a0}", "(", "é", "٣",
        ];
        let mut pick = picker(5);
        for _ in 0..20000 {
            let len = pick(7);
            let inner: String = (0..len).map(|_| alphabet[pick(alphabet.len())]).collect();
            assert_eq!(
                mimic3_tag(&inner),
                mimic3_tag_reference(&inner),
                "{inner:?}"
            );
        }
    }

    /// [`tidy_lines`] as first written, line by line: the reference for its fast path.
    fn tidy_lines_reference(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for line in text.lines() {
            let line = line.trim_end();
            if out.is_empty() && line.is_empty() {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        out.truncate(out.trim_end().len());
        out
    }

    #[test]
    fn tidy_lines_agrees_with_the_line_by_line_reference() {
        // Whitespace of every kind (ASCII, NBSP, U+0085, em space), printable ASCII at line
        // ends, non-ASCII letters, blank lines at both ends and inside.
        let alphabet = [
            "a", "~", " ", "\t", "\n", "\n\n", "\r", "\u{a0}", "\u{85}", "\u{2003}", "é",
        ];
        let mut pick = picker(11);
        for _ in 0..20000 {
            let len = pick(16);
            let text: String = (0..len).map(|_| alphabet[pick(alphabet.len())]).collect();
            assert_eq!(tidy_lines(&text), tidy_lines_reference(&text), "{text:?}");
        }
    }

    #[test]
    fn clean_notes_are_exactly_the_ones_junk_removal_leaves_alone() {
        // Notes drawn from characters on both sides of every fast-path test: C0, DEL, C1
        // (U+0085), characters that share C1's first byte (`°`, NBSP), CR, tab, POPUP.
        let alphabet = [
            "a",
            " ",
            "\n",
            "\t",
            "\r",
            "\u{1}",
            "\u{1f}",
            "\u{7f}",
            "\u{85}",
            "\u{9f}",
            "\u{a0}",
            "°",
            "é",
            "JavaScript:parent.POPUP",
            "JavaScript:parent",
            "_",
        ];
        let mut pick = picker(7);
        for _ in 0..5000 {
            let len = pick(12);
            let text: String = (0..len).map(|_| alphabet[pick(alphabet.len())]).collect();
            let removed = remove_junk(&text);
            let unchanged = removed == format!("{text}\n");
            assert_eq!(is_clean(&text), unchanged, "{text:?}");
            assert_eq!(
                tidy_lines(&strip_junk(&text)),
                tidy_lines(&removed),
                "{text:?}"
            );
        }
    }

    fn iii(text: &str) -> String {
        normalize(text, Source::MimicIii, Deid::Tags)
    }

    fn iv(text: &str) -> String {
        normalize(text, Source::MimicIv, Deid::Tags)
    }

    #[test]
    fn every_tag_family_of_mimic3() {
        // One row per placeholder family and its tag, as the README's table lists them.
        let cases = [
            ("Known lastname 1234", "[Name]"),
            ("Known firstname 7", "[Name]"),
            ("First Name3 (LF) 1893", "[Name]"),
            ("Last Name (STitle) 12", "[Name]"),
            ("Name6 (MD) 4789", "[Name]"),
            ("Initials (NamePattern4) 5", "[Name]"),
            ("Doctor First Name 3", "[Name]"),
            ("Hospital1 18", "[Company]"),
            ("Hospital Ward Name 3", "[Company]"),
            ("Hospital Unit Name 10", "[Company]"),
            ("Company 123", "[Company]"),
            ("University/College 77", "[Company]"),
            ("Medical Record Number 1", "[Reg#]"),
            ("MD Number(3) 9225", "[Reg#]"),
            ("Clip Number (Radiology) 39734", "[Reg#]"),
            ("Job Number 1812", "[Reg#]"),
            ("Unit Number 4", "[Reg#]"),
            ("Numeric Identifier 44", "[Reg#]"),
            ("Location (un) 86", "[LOC]"),
            ("Street Address(2) 55", "[LOC]"),
            ("Apartment Address(1) 2", "[LOC]"),
            ("PO Box 6", "[LOC]"),
            // `name` comes first in the released order and occurs in it.
            ("Wardname 2", "[Name]"),
            ("Telephone/Fax (1) 673", "[#]"),
            ("Pager number 11", "[#]"),
            ("Social Security Number 9", "[#]"),
            ("Serial Number 5", "[#]"),
            ("Provider Number 8", "[#]"),
            ("E-mail address 8", "[CI]"),
            ("CC Contact Info 1", "[CI]"),
            ("Attending Info 2", "[CI]"),
            ("Dictator Info 3", "[CI]"),
            ("Date Range ", "[DR]"),
            ("Date range (1) 2", "[DR]"),
            ("Year (4 digits) 3", "[YR]"),
            ("Month/Day/Year 6", "[YR]"),
            ("Month (only) 51", "[MO]"),
            ("Month/Day 4", "[MO]"),
            ("Day Month 4", "[MO]"),
            ("Holiday 7", "[DAY]"),
            ("Age over 90 ", "[Age]"),
            ("State 2", "[State]"),
            ("Country 9", "[Country]"),
            ("URL 4", "[URL]"),
            // No type: dates stay as text, bare numbers are identifiers, empty ones go.
            ("2151-7-16", "2151-7-16"),
            ("7-16", "7-16"),
            ("7/16/2151", "7/16/2151"),
            ("9-/3389", "9-/3389"),
            ("2151", "[Reg#]"),
            ("123456", "[Reg#]"),
            ("January 5", "January 5"),
            (" ", ""),
            ("Something New 5", "[MISC]"),
            // Spaces inside a number or a date make it neither, as in the released code.
            ("12 34", "[MISC]"),
            ("7 / 16", "[MISC]"),
        ];
        for (inner, want) in cases {
            assert_eq!(mimic3_tag(inner), want, "placeholder `{inner}`");
        }
    }

    #[test]
    fn dates_keep_their_inner_text() {
        assert_eq!(
            iii("Admission Date:  [**2151-7-16**]  Discharge: [**7-16**] in [**2151**]"),
            "Admission Date:  2151-7-16  Discharge: 7-16 in [Reg#]"
        );
        assert_eq!(iii("on [**7/16/2151**]."), "on 7/16/2151.");
    }

    #[test]
    fn placeholders_glued_and_split_over_lines() {
        assert_eq!(
            iii("Attending:[**First Name3 (LF) 1893**]"),
            "Attending:[Name]"
        );
        assert_eq!(
            iii("seen by [**Known\nlastname 12**] today"),
            "seen by [Name] today"
        );
        assert_eq!(iii("on [**2151-\n7-16**]"), "on 2151-7-16");
        assert_eq!(iii("empty [** **] here"), "empty  here");
    }

    #[test]
    fn keep_mode_leaves_placeholders() {
        let text = "Name: [**Known lastname 1**]\x13 Unit No: ___";
        assert_eq!(
            normalize(text, Source::MimicIii, Deid::Keep),
            "Name: [**Known lastname 1**] Unit No: ___"
        );
        assert_eq!(
            normalize(text, Source::MimicIv, Deid::Keep),
            "Name: [**Known lastname 1**] Unit No: ___"
        );
    }

    #[test]
    fn mimic4_placeholders_use_context() {
        assert_eq!(
            iv("Name:  ___                 Unit No:   ___\nAdmission Date:  ___"),
            "Name:  [Name]                 Unit No:   [Reg#]\nAdmission Date:  [MISC]"
        );
        assert_eq!(iv("___ year old man"), "[Age] year old man");
        assert_eq!(
            iv("a ___-year-old woman, ___ yo"),
            "a [Age]-year-old woman, [Age] yo"
        );
        assert_eq!(iv("seen by Dr. ___ at ___"), "seen by Dr. [Name] at [MISC]");
        assert_eq!(iv("Phone: ___"), "Phone: [#]");
        // Rulers of other lengths are not placeholders.
        assert_eq!(iv("____\n__"), "____\n__");
    }

    #[test]
    fn mimic3_text_keeps_underscores() {
        assert_eq!(iii("sign here ___"), "sign here ___");
    }

    #[test]
    fn junk_is_removed() {
        let text = "line one\x13\x14\x7f ok\r\nJavaScript:parent.POPUP('x')\n  indented  \n\n\n";
        assert_eq!(iii(text), "line one ok\n  indented");
    }

    #[test]
    fn nothing_left_is_empty() {
        assert_eq!(iii("  \n\x13\nJavaScript:parent.POPUP(1)\n"), "");
        assert_eq!(iii(""), "");
    }

    #[test]
    fn leading_indentation_of_first_line_is_kept() {
        assert_eq!(iii("\n\n FINAL REPORT\n  x"), " FINAL REPORT\n  x");
    }
}
