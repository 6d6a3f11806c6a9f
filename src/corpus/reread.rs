//! The second read of a staged note file: each record's note id and text, in file order,
//! parsed here from the same plain file that DuckDB staged in the first read.
//!
//! DuckDB's first read validates the file (header, field count, quoting, types) and stages
//! the metadata; this read needs two fields of each record, and asking DuckDB again cost
//! the build's main thread a second tokenization of every field and an Arrow export of the
//! text. The dialect is the one `sql/ingest.sql` gives DuckDB: `,` between fields, `"`
//! quotes with `""` for a quote inside them, `\n` between records, blank lines skipped.
//! As DuckDB reads it, one space before an opening quote and any spaces after a closing
//! one belong to the quoting, and a quote inside a plain field is a plain character.
//! Anything else (a byte after a closing quote other than `,` or `\n`, a `\r` outside
//! quotes, a record with another number of fields) is an error, never a silent difference,
//! and the build checks every id against the staged one.
//!
//! The second half streams that text in build order beside the staged metadata: ranges of
//! `note_rows` batches with the text added as their last column ([`TextReader`], [`Runs`],
//! [`with_text`], [`NoteBatch`]).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};

use crate::corpus::ingest::NoteText;
use crate::corpus::select::Reason;
use crate::{Error, Result, Source};

/// A byte range of the buffer holding one field, and whether it has `""` to undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    start: usize,
    end: usize,
    escaped: bool,
}

/// How a record breaks the dialect (never quoting the record: it can hold note text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broken {
    AfterQuote,
    InUnquoted,
    FieldCount,
    Unterminated,
}

impl Broken {
    fn describe(self) -> &'static str {
        match self {
            Broken::AfterQuote => {
                "a quoted field is followed by something other than `,` or a line end"
            }
            Broken::InUnquoted => "an unquoted field holds a carriage return",
            Broken::FieldCount => "the record does not have the header's number of fields",
            Broken::Unterminated => "the file ends inside a quoted field",
        }
    }
}

/// Finds the record that starts at `at` in `b`: where the next one starts, its first
/// field and its last. `Ok(None)` when `b` ends before the record does and more data may
/// follow (`eof` false).
fn record(
    b: &[u8],
    at: usize,
    columns: usize,
    eof: bool,
) -> std::result::Result<Option<(usize, Field, Field)>, Broken> {
    let mut p = at;
    let (mut first, mut last) = (None, None);
    for col in 0..columns {
        // DuckDB takes one space before an opening quote as part of the quoting (two or
        // more, and the field is plain text, quotes and all).
        if b.get(p) == Some(&b' ') {
            match b.get(p + 1) {
                Some(b'"') => p += 1,
                None if !eof => return Ok(None),
                _ => {}
            }
        }
        let field = if b.get(p) == Some(&b'"') {
            let mut q = p + 1;
            let mut escaped = false;
            loop {
                let Some(k) = memchr::memchr(b'"', &b[q..]) else {
                    return if eof {
                        Err(Broken::Unterminated)
                    } else {
                        Ok(None)
                    };
                };
                let close = q + k;
                match b.get(close + 1) {
                    Some(b'"') => {
                        escaped = true;
                        q = close + 2;
                    }
                    None if !eof => return Ok(None),
                    _ => {
                        let f = Field {
                            start: p + 1,
                            end: close,
                            escaped,
                        };
                        // Spaces after a closing quote are dropped, as DuckDB drops them.
                        p = close + 1;
                        while b.get(p) == Some(&b' ') {
                            p += 1;
                        }
                        break f;
                    }
                }
            }
        } else {
            let end = match memchr::memchr2(b',', b'\n', &b[p..]) {
                Some(k) => p + k,
                None if eof => b.len(),
                None => return Ok(None),
            };
            if memchr::memchr(b'\r', &b[p..end]).is_some() {
                return Err(Broken::InUnquoted);
            }
            let f = Field {
                start: p,
                end,
                escaped: false,
            };
            p = end;
            f
        };
        if col == 0 {
            first = Some(field);
        }
        if col + 1 == columns {
            last = Some(field);
        }
        match (b.get(p), col + 1 == columns) {
            (Some(b','), false) => p += 1,
            (Some(b'\n'), true) => p += 1,
            (None, true) if eof => {}
            (None, _) if !eof => return Ok(None),
            (Some(b',' | b'\n'), _) | (None, _) => return Err(Broken::FieldCount),
            (Some(_), _) => return Err(Broken::AfterQuote),
        }
    }
    Ok(first.zip(last).map(|(f, l)| (p, f, l)))
}

/// Appends a field's bytes to `out`, with each `""` made `"`.
fn unescape(b: &[u8], f: Field, out: &mut Vec<u8>) {
    let bytes = &b[f.start..f.end];
    if !f.escaped {
        out.extend_from_slice(bytes);
        return;
    }
    let mut rest = bytes;
    while let Some(k) = memchr::memchr(b'"', rest) {
        out.extend_from_slice(&rest[..=k]);
        rest = &rest[k + 2..];
    }
    out.extend_from_slice(rest);
}

/// Reads one note file's records after its header: per record, the first field (the note
/// id) and the last (the text).
pub struct Reread {
    /// The input, for messages.
    path: PathBuf,
    file: std::fs::File,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    eof: bool,
    columns: usize,
    /// Data records read so far.
    record: u64,
}

/// Bytes read at a time; a longer record grows the buffer.
const BUFFER: usize = 8 << 20;

impl Reread {
    /// Opens `data` (the file the first read parsed; `path` names the input in messages),
    /// whose records have `columns` fields, and reads past its header.
    pub fn open(path: &Path, data: &Path, columns: usize) -> Result<Reread> {
        let file = std::fs::File::open(data).map_err(Error::io(data))?;
        let mut r = Reread {
            path: path.to_path_buf(),
            file,
            buf: vec![0; BUFFER],
            pos: 0,
            len: 0,
            eof: false,
            columns,
            record: 0,
        };
        r.fill()?;
        if r.buf[..r.len].starts_with(b"\xEF\xBB\xBF") {
            r.pos = 3;
        }
        let (mut id, mut text) = (Vec::new(), Vec::new());
        if !r.next_record(&mut id, &mut text)? {
            return Err(Error::Invalid(format!(
                "`{}` has no header on its second read",
                r.path.display()
            )));
        }
        r.record = 0;
        Ok(r)
    }

    /// Data records read so far: the next one's number is this plus one.
    pub fn records(&self) -> u64 {
        self.record
    }

    /// Reads the next record's id into `id` and its text into `text` (both cleared first);
    /// false at the end of the file.
    pub fn next_record(&mut self, id: &mut Vec<u8>, text: &mut Vec<u8>) -> Result<bool> {
        loop {
            while self.pos < self.len && self.buf[self.pos] == b'\n' {
                self.pos += 1;
            }
            if self.pos == self.len {
                if self.eof {
                    return Ok(false);
                }
                self.fill()?;
                continue;
            }
            let b = &self.buf[..self.len];
            match record(b, self.pos, self.columns, self.eof) {
                Ok(Some((next, first, last))) => {
                    id.clear();
                    text.clear();
                    unescape(b, first, id);
                    unescape(b, last, text);
                    self.pos = next;
                    self.record += 1;
                    return Ok(true);
                }
                Ok(None) => self.fill()?,
                Err(broken) => {
                    return Err(Error::Invalid(format!(
                        "`{}` record {}: on its second read {}, although its first read \
                         accepted it; was the file changed?",
                        self.path.display(),
                        self.record + 1,
                        broken.describe()
                    )));
                }
            }
        }
    }

    /// Keeps the unread bytes, moved to the front, and reads more after them (the buffer
    /// doubles when a record fills it).
    fn fill(&mut self) -> Result<()> {
        self.buf.copy_within(self.pos..self.len, 0);
        self.len -= self.pos;
        self.pos = 0;
        if self.len == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self
            .file
            .read(&mut self.buf[self.len..])
            .map_err(Error::io(&self.path))?;
        self.len += n;
        self.eof = n == 0;
        Ok(())
    }
}

/// Regroups a stream of record batches into runs of a given number of rows, without copying.
pub(super) struct Runs<'a> {
    batches: Box<dyn Iterator<Item = Result<RecordBatch>> + 'a>,
    /// What the last batch had beyond the last run.
    pending: Option<RecordBatch>,
}

impl<'a> Runs<'a> {
    pub(super) fn new(batches: Box<dyn Iterator<Item = Result<RecordBatch>> + 'a>) -> Self {
        Runs {
            batches,
            pending: None,
        }
    }

    /// The next `n` rows, as slices of the stream's batches; fewer only where it ends.
    pub(super) fn take(&mut self, n: usize) -> Result<Vec<RecordBatch>> {
        let mut run = Vec::new();
        let mut got = 0;
        while got < n {
            let batch = match self.pending.take() {
                Some(batch) => batch,
                None => match self.batches.next() {
                    Some(batch) => batch?,
                    None => break,
                },
            };
            let want = n - got;
            if batch.num_rows() > want {
                self.pending = Some(batch.slice(want, batch.num_rows() - want));
                run.push(batch.slice(0, want));
                got = n;
            } else if batch.num_rows() > 0 {
                got += batch.num_rows();
                run.push(batch);
            }
        }
        Ok(run)
    }
}

/// Streams the text of the staged files, in order, from their second read.
pub(super) struct TextReader<'a> {
    files: std::slice::Iter<'a, NoteText>,
    /// The file being read.
    current: Option<(&'a NoteText, Reread)>,
    /// One record's raw id and text.
    id: Vec<u8>,
    text: Vec<u8>,
}

impl<'a> TextReader<'a> {
    pub(super) fn new(texts: &'a [NoteText]) -> Self {
        TextReader {
            files: texts.iter(),
            current: None,
            id: Vec::new(),
            text: Vec::new(),
        }
    }

    /// The next `n` notes' text, checked to be the same notes as the staged rows `notes`
    /// (the same note ids, in the same order); ranges never cross a file's end.
    pub(super) fn take(&mut self, n: usize, notes: &[RecordBatch]) -> Result<StringArray> {
        if self
            .current
            .as_ref()
            .is_none_or(|(file, r)| r.records() == file.records)
        {
            self.finish()?;
            let file = self.files.next().ok_or_else(|| changed(None))?;
            self.current = Some((file, file.reread()?));
        }
        let (file, reread) = self.current.as_mut().expect("a file is being read");
        // note_rows column 3 is the staged note id.
        let staged = notes
            .iter()
            .map(|b| b.column(3).as_any().downcast_ref::<StringArray>())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| changed(Some(file)))?;
        // Room for notes of 512 bytes; longer ones grow it.
        let mut out = arrow::array::StringBuilder::with_capacity(n, n * 512);
        let mut ids = staged.iter().flat_map(|c| c.iter());
        for _ in 0..n {
            let staged_id = ids.next().flatten();
            if reread.records() == file.records
                || !reread.next_record(&mut self.id, &mut self.text)?
                || !staged_id.is_some_and(|s| file.same_id(&self.id, s))
            {
                return Err(changed(Some(file)));
            }
            let text =
                std::str::from_utf8(&self.text).map_err(|_| file.not_utf8(reread.records()))?;
            out.append_value(text);
        }
        if ids.next().is_some() {
            return Err(changed(Some(file)));
        }
        Ok(out.finish())
    }

    /// Checks that the file being read has no more notes than were staged, and that it
    /// was not rewritten since the first read began (same size and modification time).
    pub(super) fn finish(&mut self) -> Result<()> {
        if let Some((file, mut reread)) = self.current.take()
            && (reread.records() != file.records
                || reread.next_record(&mut self.id, &mut self.text)?
                || !file.unchanged()?)
        {
            return Err(changed(Some(file)));
        }
        Ok(())
    }
}

/// A second read of an input that disagrees with the first.
pub(super) fn changed(file: Option<&NoteText>) -> Error {
    Error::Invalid(match file {
        Some(f) => format!(
            "`{}` changed while it was being read: its notes no longer match the first read",
            f.path().display()
        ),
        None => "an input file changed while it was being read".to_string(),
    })
}

/// Adds the text of the same range, in order, as the last column of `note_rows` batches.
pub(super) fn with_text(notes: Vec<RecordBatch>, text: &StringArray) -> Result<Vec<RecordBatch>> {
    let staged: usize = notes.iter().map(RecordBatch::num_rows).sum();
    if staged != text.len() {
        return Err(Error::Catalog {
            doing: "reading notes".into(),
            message: format!("{staged} staged notes for {} texts", text.len()),
        });
    }
    let mut at = 0;
    let mut out = Vec::with_capacity(notes.len());
    for batch in notes {
        let n = batch.num_rows();
        let part = text.slice(at, n);
        at += n;
        let mut fields: Vec<_> = batch.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(arrow::datatypes::Field::new(
            "text",
            arrow::datatypes::DataType::Utf8,
            false,
        )));
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(part));
        out.push(
            RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
                .map_err(|e| Error::Catalog {
                    doing: "reading notes".into(),
                    message: e.to_string(),
                })?,
        );
    }
    Ok(out)
}

/// The columns of `note_rows` batches, with the text last.
pub(super) struct NoteBatch<'a> {
    ord: &'a Int64Array,
    source: &'a StringArray,
    reason: &'a StringArray,
    text: &'a StringArray,
    /// source, note_id, subject_id, hadm_id, category: repeated in the catalog's tables.
    metadata: [&'a ArrayRef; 5],
}

impl<'a> NoteBatch<'a> {
    pub(super) fn new(batch: &'a RecordBatch) -> Result<NoteBatch<'a>> {
        fn column<T: 'static>(batch: &RecordBatch, i: usize) -> Result<&T> {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<T>()
                .ok_or_else(|| Error::Catalog {
                    doing: "reading notes".into(),
                    message: format!(
                        "column {i} of a note batch has type {}",
                        batch.column(i).data_type()
                    ),
                })
        }
        Ok(NoteBatch {
            ord: column(batch, 0)?,
            source: column(batch, 1)?,
            reason: column(batch, 2)?,
            metadata: {
                column::<StringArray>(batch, 3)?;
                column::<Int64Array>(batch, 4)?;
                column::<Int64Array>(batch, 5)?;
                column::<StringArray>(batch, 6)?;
                [1, 3, 4, 5, 6].map(|i| batch.column(i))
            },
            text: column(batch, 7)?,
        })
    }

    pub(super) fn len(&self) -> usize {
        self.text.len()
    }

    pub(super) fn metadata(&self) -> [&'a ArrayRef; 5] {
        self.metadata
    }

    /// A note's place in the build.
    pub(super) fn ord(&self, i: usize) -> i64 {
        self.ord.value(i)
    }

    pub(super) fn source(&self, i: usize) -> Source {
        Source::parse(self.source.value(i)).unwrap_or(Source::MimicIii)
    }

    /// The reason a set rule gave, if any.
    pub(super) fn reason(&self, i: usize) -> Option<Reason> {
        (!self.reason.is_null(i))
            .then(|| Reason::parse(self.reason.value(i)))
            .flatten()
    }

    /// Whether no set rule dropped the note.
    pub(super) fn still_in(&self, i: usize) -> bool {
        self.reason.is_null(i)
    }

    /// The raw text of a note.
    pub(super) fn text(&self, i: usize) -> &str {
        self.text.value(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(b: &[u8], columns: usize) -> Vec<(String, String)> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < b.len() {
            let (next, f, l) = record(b, at, columns, true).unwrap().unwrap();
            let (mut id, mut text) = (Vec::new(), Vec::new());
            unescape(b, f, &mut id);
            unescape(b, l, &mut text);
            out.push((
                String::from_utf8(id).unwrap(),
                String::from_utf8(text).unwrap(),
            ));
            at = next;
        }
        out
    }

    #[test]
    fn quoted_fields_keep_commas_line_breaks_and_doubled_quotes() {
        let b = b"1,x,\"a, \"\"b\"\"\nc\"\n\"2\",,\"\"\n3,y,plain";
        assert_eq!(
            fields(b, 3),
            [
                ("1".into(), "a, \"b\"\nc".into()),
                ("2".into(), String::new()),
                ("3".into(), "plain".into())
            ]
        );
    }

    #[test]
    fn records_cut_short_ask_for_more_unless_the_file_ended() {
        let b = b"1,x,\"abc\"\"";
        assert_eq!(record(b, 0, 3, false), Ok(None));
        assert_eq!(record(b, 0, 3, true), Err(Broken::Unterminated));
        assert_eq!(record(b"1,x,\"abc\"", 0, 3, false), Ok(None));
        assert_eq!(record(b"1,x,ab", 0, 3, false), Ok(None));
        assert!(record(b"1,x,ab", 0, 3, true).unwrap().is_some());
        // A space may open a quoted field: the next byte decides.
        assert_eq!(record(b"1,x, ", 0, 3, false), Ok(None));
    }

    #[test]
    fn what_the_dialect_does_not_allow_is_an_error() {
        assert_eq!(record(b"1,x,\"a\"b\n", 0, 3, true), Err(Broken::AfterQuote));
        assert_eq!(record(b"1,x,a\rb\n", 0, 3, true), Err(Broken::InUnquoted));
        assert_eq!(record(b"1,x,ab\r\n", 0, 3, true), Err(Broken::InUnquoted));
        assert_eq!(record(b"1,x\n", 0, 3, true), Err(Broken::FieldCount));
        assert_eq!(record(b"1,x,y,z\n", 0, 3, true), Err(Broken::FieldCount));
    }

    /// DuckDB, reading the file as the first read does, is the oracle: every record's id
    /// and text must come out the same, on texts made of the dialect's awkward parts.
    #[test]
    fn reads_what_duckdb_reads() {
        use ehrprep_data::rng::Rng;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("discharge.csv");
        let pieces: &[&str] = &[
            "word",
            " ",
            ",",
            "\"",
            "\"\"",
            "\n",
            "\n\n",
            "\r\n",
            "\t",
            "é",
            "___",
            "[**Name**]",
            "",
            "'",
            "\u{1F600}",
            "a,b",
            "end\"",
        ];
        let mut rng = Rng::new(21);
        let mut plain_quotes = 0;
        let mut csv = String::from(
            "note_id,subject_id,hadm_id,note_type,note_seq,charttime,storetime,text\n",
        );
        for i in 0..500 {
            let text: String = (0..rng.below(40)).map(|_| rng.pick(pieces)).collect();
            // Quoted as MIMIC-IV's files quote text; now and then a plain field (where a
            // quote that does not start it is a plain character), or none.
            let field = match rng.below(10) {
                _ if i % 25 == 3 => format!("plain {i} \"q\" a\"\"b end\""),
                0 if !text.starts_with('"') && !text.contains([',', '\n', '\r']) => text.clone(),
                1 => String::new(),
                _ => format!("\"{}\"", text.replace('"', "\"\"")),
            };
            plain_quotes += usize::from(!field.starts_with('"') && field.contains('"'));
            let id = if rng.chance(0.1) {
                format!("\"{i}-DS-1\"")
            } else {
                format!("{i}-DS-1")
            };
            csv.push_str(&format!("{id},1,,DS,1,2180-01-01 00:00:00,,{field}\n"));
        }
        // Blanks around quotes and around plain fields, which DuckDB reads its own way.
        for (i, field) in [
            " \"lead, space\"",
            "\"trail, space\" ",
            "\"trail spaces\"  ",
            " \"a\"\"b\"",
            " \"a\nb\"",
            "  \"two spaces: plain\"  ",
            "\t\"tab: plain\"",
            "x \"a\"",
            " plain lead",
            "plain trail ",
            "\tplain tab",
        ]
        .into_iter()
        .enumerate()
        {
            csv.push_str(&format!("{}-DS-2, \"{i}\" ,,DS,1,,,{field}\n", 1000 + i));
        }
        csv.push_str("9999-DS-1,1,,DS,1,,,\"no newline at the end\"");
        std::fs::write(&path, &csv).unwrap();

        let conn = crate::catalog::open_in_memory().unwrap();
        crate::corpus::ingest::create_readers(&conn).unwrap();
        let mut stmt = conn
            .prepare("SELECT trim(note_id), coalesce(text, '') FROM mimic4_csv(?)")
            .unwrap();
        let want: Vec<(String, String)> = stmt
            .query_map([path.to_str().unwrap()], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert_eq!(want.len(), 512);
        assert!(plain_quotes > 0, "no unquoted field with a quote in it");

        let mut r = Reread::open(&path, &path, 8).unwrap();
        let (mut id, mut text) = (Vec::new(), Vec::new());
        for (n, (want_id, want_text)) in want.iter().enumerate() {
            assert!(
                r.next_record(&mut id, &mut text).unwrap(),
                "record {}",
                n + 1
            );
            assert_eq!(
                std::str::from_utf8(&id).unwrap(),
                want_id,
                "record {}",
                n + 1
            );
            assert!(
                text == want_text.as_bytes(),
                "record {}: text differs",
                n + 1
            );
        }
        assert!(!r.next_record(&mut id, &mut text).unwrap());
    }

    #[test]
    fn reads_across_buffer_refills_and_grows_for_long_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.csv");
        let long = "word \"q\" ".repeat(2 * BUFFER / 9);
        let mut csv = String::from("\u{feff}\"ID\",\"X\",\"TEXT\"\n");
        let mut want = Vec::new();
        for i in 0..3000 {
            let text = if i == 1500 {
                long.clone()
            } else {
                format!("note {i},\nline")
            };
            csv.push_str(&format!("{i},x,\"{}\"\n", text.replace('"', "\"\"")));
            if i % 700 == 0 {
                csv.push('\n');
            }
            want.push((i.to_string(), text));
        }
        std::fs::write(&path, csv).unwrap();
        let mut r = Reread::open(&path, &path, 3).unwrap();
        let (mut id, mut text) = (Vec::new(), Vec::new());
        let mut got = Vec::new();
        while r.next_record(&mut id, &mut text).unwrap() {
            got.push((
                String::from_utf8(id.clone()).unwrap(),
                String::from_utf8(text.clone()).unwrap(),
            ));
        }
        assert_eq!(r.records(), 3000);
        assert!(got == want, "records differ");
    }

    #[test]
    fn runs_regroup_a_stream_into_runs_of_the_asked_size() {
        let mut next = 0i64;
        let batches: Vec<Result<RecordBatch>> = [3, 0, 5, 2]
            .into_iter()
            .map(|n| {
                let values: Vec<i64> = (next..next + n).collect();
                next += n;
                let column = Arc::new(Int64Array::from(values)) as ArrayRef;
                Ok(RecordBatch::try_from_iter([("v", column)]).unwrap())
            })
            .collect();
        let mut runs = Runs::new(Box::new(batches.into_iter()));
        let values = |run: Vec<RecordBatch>| -> Vec<i64> {
            run.iter()
                .flat_map(|b| {
                    let c = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                    c.values().to_vec()
                })
                .collect()
        };
        assert_eq!(values(runs.take(4).unwrap()), [0, 1, 2, 3]);
        assert_eq!(values(runs.take(4).unwrap()), [4, 5, 6, 7]);
        assert_eq!(values(runs.take(4).unwrap()), [8, 9]);
        assert!(runs.take(1).unwrap().is_empty());
        let failing: Vec<Result<RecordBatch>> = vec![Err(Error::Invalid("broken".into()))];
        assert!(Runs::new(Box::new(failing.into_iter())).take(1).is_err());
    }
}
