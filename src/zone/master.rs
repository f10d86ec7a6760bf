//! Reading RFC 1035 master files: entries, directives and `$INCLUDE`, into records that
//! remember the file and line they came from.
//!
//! The text is split into logical entries (parentheses joined, comments dropped) and each
//! entry is parsed on its own by hickory-proto's zone parser, with the `$ORIGIN`, `$TTL`
//! and owner name carried over from the entries before it. That way a broken line does
//! not hide the ones after it: every bad entry is reported with its file and line.
//!
//! `$INCLUDE file [origin]` reads `file` (relative to the including file's directory) with
//! `origin` (default: the current one) as its origin. The included file starts with the
//! includer's origin, default TTL and previous owner, and changes none of them for the
//! lines after the `$INCLUDE` (RFC 1035 section 5.1). Include loops, includes more than
//! [`MAX_INCLUDE_DEPTH`] deep and files past the size limit (all files of a zone together)
//! are located errors. Every construct gto does not serve faithfully is an error too, with
//! a message that says so: `$GENERATE` and other directives, RFC 3597 generic records,
//! and record types the parser does not know or that need DNSSEC.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hickory_proto::rr::{Name, Record, RecordType};
use hickory_proto::serialize::txt::Parser;
use sha2::{Digest, Sha256};

use super::ZoneError;

/// How deep `$INCLUDE` may nest.
pub const MAX_INCLUDE_DEPTH: usize = 16;

/// A record with the place it was read from.
#[derive(Debug, Clone)]
pub struct Located {
    /// The record, owner as written (not yet lower-cased).
    pub record: Record,
    /// The file it is in.
    pub file: Arc<Path>,
    /// Its 1-based line.
    pub line: usize,
}

/// What reading a zone's files gave.
#[derive(Debug)]
pub struct Read {
    /// Every problem found.
    pub errors: Vec<ZoneError>,
    /// SHA-256 over every file's name and text, in reading order.
    pub digest: [u8; 32],
}

/// Reads the master-file `text` of `file` for the zone `origin` within `limits`: the bytes
/// of all files read together (the first file's text counts), the number of `$INCLUDE`s
/// followed, and where they may read. Each record goes to `sink` as it is read, in file
/// order (includes in place): a big zone is never held twice, as records and as sets.
pub fn read(
    text: &str,
    origin: &Name,
    file: &Path,
    limits: &super::ReadLimits,
    sink: &mut dyn FnMut(Located),
) -> Read {
    let mut reader = Reader {
        errors: Vec::new(),
        sink,
        stack: Vec::new(),
        budget: limits.bytes.saturating_sub(text.len() as u64),
        limit: limits.bytes,
        includes: limits.includes,
        include_limit: limits.includes,
        over_includes: false,
        root: limits.root.clone(),
        hasher: Sha256::new(),
    };
    reader.hasher.update(text.as_bytes());
    let state = State {
        origin: origin.clone(),
        default_ttl: None,
        last_ttl: None,
        last_owner: None,
    };
    let canonical = std::fs::canonicalize(file).ok();
    reader
        .stack
        .push(canonical.unwrap_or_else(|| file.to_path_buf()));
    reader.read_text(text, &Arc::from(file), state);
    Read {
        errors: reader.errors,
        digest: reader.hasher.finalize().into(),
    }
}

/// What carries from one entry to the next within a file.
#[derive(Debug, Clone)]
struct State {
    origin: Name,
    default_ttl: Option<String>,
    last_ttl: Option<u32>,
    last_owner: Option<Name>,
}

struct Reader<'s> {
    errors: Vec<ZoneError>,
    sink: &'s mut dyn FnMut(Located),
    /// Canonical paths of the files being read, outermost first (loop detection).
    stack: Vec<PathBuf>,
    /// Bytes that included files may still take.
    budget: u64,
    limit: u64,
    /// `$INCLUDE`s that may still be followed.
    includes: usize,
    /// `$INCLUDE`s followed at most.
    include_limit: usize,
    /// Whether the include limit was reported (once).
    over_includes: bool,
    /// Where includes may read, when limited.
    root: Option<PathBuf>,
    hasher: Sha256,
}

impl Reader<'_> {
    fn error(&mut self, file: &Path, line: usize, message: String) {
        self.errors.push(ZoneError {
            file: file.to_path_buf(),
            line: Some(line),
            message,
        });
    }

    fn read_text(&mut self, text: &str, file: &Arc<Path>, mut state: State) {
        for entry in split_entries(text) {
            let trimmed = entry.text.trim();
            if let Some(directive) = trimmed.strip_prefix('$')
                && !entry.starts_blank
            {
                self.directive(directive, file, entry.line, &mut state);
                continue;
            }
            self.record(&entry, file, &mut state);
        }
    }

    fn directive(&mut self, directive: &str, file: &Arc<Path>, line: usize, state: &mut State) {
        let words = match words(directive) {
            Ok(words) => words,
            Err(message) => return self.error(file, line, message),
        };
        let keyword = words
            .first()
            .map(|w| w.to_ascii_uppercase())
            .unwrap_or_default();
        let arguments = words.get(1..).unwrap_or_default();
        match (keyword.as_str(), arguments) {
            ("ORIGIN", [name]) => match Name::parse(name, Some(&state.origin)) {
                Ok(name) => state.origin = name,
                Err(e) => self.error(file, line, format!("bad $ORIGIN {name:?}: {e}")),
            },
            ("TTL", [ttl]) => {
                let probe = format!("$TTL {ttl}\n@ IN TXT \"probe\"\n");
                match Parser::new(probe, None, Some(state.origin.clone())).parse() {
                    Ok(_) => state.default_ttl = Some(ttl.clone()),
                    Err(e) => self.error(file, line, format!("bad $TTL {ttl:?}: {e}")),
                }
            }
            ("INCLUDE", [path]) => self.include(path, None, file, line, state),
            ("INCLUDE", [path, origin]) => self.include(path, Some(origin), file, line, state),
            ("GENERATE", _) => self.error(
                file,
                line,
                "$GENERATE (a BIND extension) is not supported: write the records out".into(),
            ),
            ("ORIGIN" | "TTL", _) => {
                self.error(file, line, format!("${keyword} takes exactly one argument"))
            }
            ("INCLUDE", _) => self.error(
                file,
                line,
                "$INCLUDE takes a file name and an optional origin".into(),
            ),
            (_, _) => self.error(
                file,
                line,
                format!("unknown directive ${keyword}: gto reads $ORIGIN, $TTL and $INCLUDE"),
            ),
        }
    }

    fn include(
        &mut self,
        path: &str,
        origin: Option<&String>,
        file: &Arc<Path>,
        line: usize,
        state: &State,
    ) {
        let origin = match origin.map(|o| Name::parse(o, Some(&state.origin))) {
            None => state.origin.clone(),
            Some(Ok(origin)) => origin,
            Some(Err(e)) => {
                return self.error(file, line, format!("bad $INCLUDE origin {origin:?}: {e}"));
            }
        };
        let Some(directory) = file
            .parent()
            .filter(|_| file.is_absolute() || file.exists())
        else {
            return self.error(
                file,
                line,
                "$INCLUDE needs a zone file on disk; the embedded zone has none".into(),
            );
        };
        let included = directory.join(path);
        let canonical = match std::fs::canonicalize(&included) {
            Ok(canonical) => canonical,
            Err(e) => {
                return self.error(
                    file,
                    line,
                    format!("cannot read included file {}: {e}", included.display()),
                );
            }
        };
        if let Some(refused) = self.refused_include(&canonical) {
            return self.error(file, line, refused);
        }
        if self.includes == 0 {
            if !self.over_includes {
                self.over_includes = true;
                self.error(
                    file,
                    line,
                    format!(
                        "more than {} $INCLUDEs in the zone's files (counted over the whole \
                         tree): the rest are not read",
                        self.include_limit
                    ),
                );
            }
            return;
        }
        self.includes -= 1;
        if self.stack.len() > MAX_INCLUDE_DEPTH {
            return self.error(
                file,
                line,
                format!("$INCLUDE nests more than {MAX_INCLUDE_DEPTH} files deep"),
            );
        }
        let text = match crate::files::read_to_string(&included, self.budget) {
            Ok(text) => text,
            Err(crate::files::FileError::TooLarge { .. }) => {
                return self.error(
                    file,
                    line,
                    format!(
                        "included file {} takes the zone's files past the limit of {} bytes \
                         (server.max_file_size)",
                        included.display(),
                        self.limit
                    ),
                );
            }
            Err(e) => return self.error(file, line, format!("cannot read included file {e}")),
        };
        self.budget = self.budget.saturating_sub(text.len() as u64);
        self.hasher.update(included.as_os_str().as_encoded_bytes());
        self.hasher.update(text.as_bytes());
        self.stack.push(canonical);
        let inner = State {
            origin,
            ..state.clone()
        };
        self.read_text(&text, &Arc::from(included.as_path()), inner);
        self.stack.pop();
    }

    /// Why a file may not be included: it is already being read (a loop), or it is
    /// outside the config's directory when includes must stay inside it.
    fn refused_include(&self, canonical: &Path) -> Option<String> {
        if let Some(start) = self.stack.iter().position(|p| *p == canonical) {
            let chain: Vec<String> = self.stack[start..]
                .iter()
                .map(PathBuf::as_path)
                .chain(std::iter::once(canonical))
                .map(|p| p.display().to_string())
                .collect();
            return Some(format!("$INCLUDE loop: {}", chain.join(" includes ")));
        }
        if let Some(root) = &self.root
            && !canonical.starts_with(root)
        {
            return Some(format!(
                "included file {} is outside {} (server.include_outside_config_dir = false)",
                canonical.display(),
                root.display()
            ));
        }
        None
    }

    fn record(&mut self, entry: &Entry<'_>, file: &Arc<Path>, state: &mut State) {
        let records = match quick_record(entry, state) {
            Some(record) => vec![record],
            None => match parse_entry(entry, state) {
                Ok(records) => records,
                Err(message) => return self.error(file, entry.line, message),
            },
        };
        for record in records {
            state.last_ttl = Some(record.ttl);
            state.last_owner = Some(record.name.clone());
            (self.sink)(Located {
                record,
                file: file.clone(),
                line: entry.line,
            });
        }
    }
}

/// An entry's records, read by hickory's zone parser with the state carried over, or
/// what is wrong with it.
fn parse_entry(entry: &Entry<'_>, state: &State) -> Result<Vec<Record>, String> {
    let mut doc = format!("$ORIGIN {}\n", state.origin);
    if let Some(ttl) = state
        .default_ttl
        .clone()
        .or_else(|| state.last_ttl.map(|t| t.to_string()))
    {
        doc.push_str(&format!("$TTL {ttl}\n"));
    }
    if entry.starts_blank {
        match &state.last_owner {
            Some(owner) => doc.push_str(&owner.to_string()),
            None => return Err("record has no owner name and none comes before it".into()),
        }
    }
    if let Some(message) = unsupported_syntax(&entry.text) {
        return Err(message);
    }
    doc.push_str(&entry.text);
    doc.push('\n');
    let parsed = match Parser::new(doc, None, Some(state.origin.clone())).parse() {
        Ok((_, records)) => records,
        Err(e) => return Err(explain_parse_error(&e.to_string())),
    };
    let records: Vec<Record> = parsed
        .into_values()
        .flat_map(|set| set.records_without_rrsigs().cloned().collect::<Vec<_>>())
        .collect();
    if let Some(message) = records
        .first()
        .and_then(|r| extra_fields(&entry.text, entry.starts_blank, r))
    {
        return Err(message);
    }
    Ok(records)
}

/// The record of the plainest entries, read without the general parser: owner (or none,
/// after white space), a TTL in seconds and class IN in either order or left out, and an
/// A, AAAA, CNAME, NS or PTR record's one field, none of it quoted or escaped. Anything
/// else, and anything that does not read cleanly (the error is then the parser's), is
/// None and goes to [`parse_entry`]. A 200,000-record zone of such entries reads in a
/// fraction of the time (the general parser is set up per entry). What it reads is what
/// the parser reads (tested side by side).
fn quick_record(entry: &Entry<'_>, state: &State) -> Option<Record> {
    use hickory_proto::rr::RData;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR};
    let text: &str = &entry.text;
    if text
        .bytes()
        .any(|b| matches!(b, b'\\' | b'"' | b'(' | b')' | b';' | b'$'))
    {
        return None;
    }
    let mut words = text.split_ascii_whitespace();
    let owner = if entry.starts_blank {
        state.last_owner.clone()?
    } else {
        match words.next()? {
            "@" => state.origin.clone(),
            word => Name::parse(word, Some(&state.origin)).ok()?,
        }
    };
    let seconds = |word: &str| -> Option<u32> {
        if word.bytes().all(|b| b.is_ascii_digit()) && word.len() <= 9 {
            word.parse().ok()
        } else {
            None
        }
    };
    let mut ttl = None;
    let mut class = false;
    let kind = loop {
        let word = words.next()?;
        if ttl.is_none() && word.bytes().all(|b| b.is_ascii_digit()) {
            ttl = Some(seconds(word)?);
        } else if !class && word.eq_ignore_ascii_case("IN") {
            class = true;
        } else {
            break word;
        }
    };
    let ttl = match ttl {
        Some(ttl) => ttl,
        None => match &state.default_ttl {
            Some(text) => seconds(text)?,
            None => state.last_ttl?,
        },
    };
    let field = words.next()?;
    if words.next().is_some() || field == "@" {
        return None;
    }
    let name = || Name::parse(field, Some(&state.origin)).ok();
    let data = if kind.eq_ignore_ascii_case("A") {
        RData::A(A(field.parse().ok()?))
    } else if kind.eq_ignore_ascii_case("AAAA") {
        RData::AAAA(AAAA(field.parse().ok()?))
    } else if kind.eq_ignore_ascii_case("CNAME") {
        RData::CNAME(CNAME(name()?))
    } else if kind.eq_ignore_ascii_case("NS") {
        RData::NS(NS(name()?))
    } else if kind.eq_ignore_ascii_case("PTR") {
        RData::PTR(PTR(name()?))
    } else {
        return None;
    };
    Some(Record::from_rdata(owner, ttl, data))
}

/// The parser reads the fields a type needs and ignores what follows: a record with more
/// fields than its type takes is refused rather than served as something else.
fn extra_fields(entry: &str, starts_blank: bool, record: &Record) -> Option<String> {
    let arity = match record.record_type() {
        RecordType::A | RecordType::AAAA | RecordType::CNAME | RecordType::NS | RecordType::PTR => {
            1
        }
        RecordType::MX => 2,
        RecordType::SRV => 4,
        RecordType::SOA => 7,
        _ => return None,
    };
    let kind = record.record_type().to_string();
    let words: Vec<&str> = entry.split_whitespace().collect();
    let skip = usize::from(!starts_blank);
    let at = words
        .iter()
        .skip(skip)
        .position(|w| w.eq_ignore_ascii_case(&kind))?
        + skip;
    let fields = words.len() - at - 1;
    (fields > arity).then(|| {
        format!(
            "bad record: {kind} takes {arity} field(s) of data, this one has {fields} (\"{}\" is \
             left over)",
            words[at + 1 + arity..].join(" ")
        )
    })
}

/// RFC 3597's generic form (`TYPEnnn`, `\#`) is not read by the parser: say so plainly.
fn unsupported_syntax(entry: &str) -> Option<String> {
    let words: Vec<&str> = entry.split_whitespace().collect();
    if words.contains(&"\\#") {
        return Some(
            "RFC 3597 generic record data (\\#) is not supported: write the record in its \
             own syntax"
                .into(),
        );
    }
    words
        .iter()
        .skip(1)
        .find(|w| {
            // Byte slices: a word may hold any UTF-8, and must not be cut inside a char.
            let bytes = w.as_bytes();
            bytes.len() > 4
                && bytes[..4].eq_ignore_ascii_case(b"TYPE")
                && bytes[4..].iter().all(u8::is_ascii_digit)
        })
        .map(|w| format!("RFC 3597 generic record type {w} is not supported"))
}

/// The message for a DNSSEC record in a zone file that gto makes itself.
pub(crate) fn dnssec_made(kind: &str) -> String {
    format!(
        "{kind} records are made by gto when the zone is signed (`dnssec = {{ keys = \"DIR\" }}` \
         in its [[zone]]); remove it from the zone file"
    )
}

/// Turns the parser's words for constructs gto does not serve into an operator's.
fn explain_parse_error(error: &str) -> String {
    let dnssec = [
        "RRSIG",
        "NSEC",
        "NSEC3",
        "NSEC3PARAM",
        "DNSKEY",
        "KEY",
        "SIG",
        "CDS",
        "CDNSKEY",
    ];
    if let Some(kind) = error.strip_suffix(" should be dynamically generated") {
        let kind = kind.rsplit(' ').next().unwrap_or(kind);
        if dnssec.contains(&kind) {
            return dnssec_made(kind);
        }
    }
    if error.contains("unsupported RecordType: DNAME") {
        return "DNAME is not supported: gto would serve it without the redirection it \
                promises (RFC 6672)"
            .into();
    }
    if let Some(kind) = error.split("record type string unknown: ").nth(1) {
        // A number the parser could not take as a TTL (over 32 bits) ends up here too.
        if !kind.is_empty() && kind.trim().bytes().all(|b| b.is_ascii_digit()) {
            return format!(
                "TTL {} is out of range: a TTL is at most 2147483647 (RFC 2181 section 8)",
                kind.trim()
            );
        }
        return format!("record type {kind} is not supported");
    }
    if error.contains("Label contains invalid characters") {
        return format!(
            "bad record: {error} (escaped characters such as \\DDD in names are not supported)"
        );
    }
    format!("bad record: {error}")
}

/// Splits a directive's arguments at white space; a double-quoted word may hold spaces.
fn words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => word.extend(chars.next()),
                    Some(c) => word.push(c),
                    None => return Err("unterminated quoted string".into()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
    Ok(words)
}

/// One logical entry of a master file: a directive or a record, parentheses joined.
#[derive(Debug, PartialEq)]
pub(super) struct Entry<'a> {
    /// Line the entry starts on (1-based).
    pub(super) line: usize,
    /// The entry with comments dropped and parenthesised line breaks folded: the line
    /// itself when it has nothing to drop or fold.
    pub(super) text: Cow<'a, str>,
    /// The entry starts with white space: it inherits the previous owner name.
    pub(super) starts_blank: bool,
}

/// Splits master-file text into logical entries (RFC 1035 section 5.1), in order.
pub(super) fn split_entries(text: &str) -> Entries<'_> {
    Entries {
        text,
        pos: 0,
        line: 1,
        quick: true,
    }
}

/// The entries of a master file's text, read one at a time: a big zone's text is not
/// copied entry by entry into a list first.
pub(super) struct Entries<'a> {
    text: &'a str,
    /// Where the next entry starts: always the start of a line outside parentheses.
    pos: usize,
    /// The line at `pos` (1-based).
    line: usize,
    /// Whether a line without comment, quote, parenthesis or carriage return is taken as
    /// it stands (off only to test that it gives what the full reading gives).
    quick: bool,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Entry<'a>;

    fn next(&mut self) -> Option<Entry<'a>> {
        while self.pos < self.text.len() {
            let rest = &self.text[self.pos..];
            let end = rest.find('\n').unwrap_or(rest.len());
            let line = &rest[..end];
            if self.quick
                && !line
                    .bytes()
                    .any(|b| matches!(b, b';' | b'"' | b'(' | b')' | b'\r'))
            {
                let number = self.line;
                self.pos += (end + 1).min(rest.len());
                self.line += 1;
                if line.trim().is_empty() {
                    continue;
                }
                return Some(Entry {
                    line: number,
                    text: Cow::Borrowed(line),
                    starts_blank: line.starts_with([' ', '\t']),
                });
            }
            if let Some(entry) = self.folded() {
                return Some(entry);
            }
        }
        None
    }
}

impl<'a> Entries<'a> {
    /// Reads the entry at `pos` character by character: comments dropped, parentheses
    /// and the line breaks inside them (or inside quotes) folded into spaces. None when
    /// the entry holds nothing (a comment or blank line), which is then passed over.
    fn folded(&mut self) -> Option<Entry<'a>> {
        let rest = &self.text[self.pos..];
        let start_line = self.line;
        let starts_blank = rest.starts_with([' ', '\t']);
        let mut buffer = String::new();
        let mut depth = 0usize;
        let mut in_quote = false;
        let mut escaped = false;
        let mut in_comment = false;
        let mut consumed = rest.len();
        for (at, c) in rest.char_indices() {
            if c == '\n' {
                self.line += 1;
                in_comment = false;
                if depth == 0 && !in_quote {
                    consumed = at + 1;
                    break;
                }
                buffer.push(' ');
                continue;
            }
            if in_comment {
                continue;
            }
            if in_quote {
                buffer.push(c);
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_quote = false;
                }
                continue;
            }
            match c {
                ';' => in_comment = true,
                '"' => {
                    in_quote = true;
                    buffer.push(c);
                }
                '(' => {
                    depth += 1;
                    buffer.push(' ');
                }
                ')' => {
                    depth = depth.saturating_sub(1);
                    buffer.push(' ');
                }
                '\r' => {}
                _ => buffer.push(c),
            }
        }
        self.pos += consumed;
        (!buffer.trim().is_empty()).then_some(Entry {
            line: start_line,
            text: Cow::Owned(buffer),
            starts_blank,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quick reading of the plainest entries gives what the parser gives, for every
    /// form it takes; what it leaves is left to the parser.
    #[test]
    fn quick_entries_read_as_the_parser_reads_them() {
        let origin = Name::from_ascii("gto.example.com.").unwrap();
        let states = [
            (None, None, None),
            (Some("600"), None, None),
            (None, Some(120), Some("prev")),
            (Some("1h"), Some(120), Some("prev.other.org.")),
            (Some("600"), Some(120), Some("prev")),
        ];
        let taken = [
            "h1 A 192.0.2.1",
            "H1.Sub 300 IN A 192.0.2.1",
            "@ IN 300 AAAA 2001:db8::1",
            "abs.gto.example.com. 7 A 10.0.0.1",
            "*.wild 60 A 10.0.0.2",
            " A 10.0.0.3",
            "\tIN 5 CNAME target",
            "x CNAME target.other.org.",
            "x 0 NS ns1",
            "x in ptr host.example.",
            "x 0300 a 10.0.0.4",
        ];
        let left = [
            "x 1h A 10.0.0.5",
            "x IN IN A 10.0.0.5",
            "x 5 5 A 10.0.0.5",
            "x CH A 10.0.0.5",
            "x A 10.0.0.5 extra",
            "x A 999.0.0.1",
            "x A 010.0.0.1",
            "x TXT hello",
            "x CNAME @",
            "x MX 10 mail",
            "x 4294967296 A 10.0.0.6",
            "x\\.y A 10.0.0.7",
            "x A",
        ];
        for (default_ttl, last_ttl, last_owner) in states {
            let state = State {
                origin: origin.clone(),
                default_ttl: default_ttl.map(String::from),
                last_ttl,
                last_owner: last_owner.map(|o| Name::parse(o, Some(&origin)).unwrap()),
            };
            for text in taken.iter().chain(&left) {
                let text = text.replace("\\t", "\t");
                let entry = Entry {
                    line: 1,
                    starts_blank: text.starts_with([' ', '\t']),
                    text: text.clone().into(),
                };
                let quick = quick_record(&entry, &state);
                let parsed = parse_entry(&entry, &state);
                match &quick {
                    Some(record) => assert_eq!(
                        parsed.as_deref().ok(),
                        Some(std::slice::from_ref(record)),
                        "{text:?} with {default_ttl:?} {last_ttl:?} {last_owner:?}"
                    ),
                    None => assert!(
                        left.contains(&text.as_str())
                            || (default_ttl == Some("1h"))
                            || (last_ttl.is_none() && default_ttl.is_none())
                            || (entry.starts_blank && last_owner.is_none()),
                        "{text:?} was left to the parser"
                    ),
                }
                if left.contains(&text.as_str()) {
                    assert!(quick.is_none(), "{text:?} was read quickly");
                } else if default_ttl == Some("600") && last_owner.is_some() {
                    assert!(quick.is_some(), "{text:?} was not read quickly");
                }
            }
        }
    }

    #[test]
    fn splits_parentheses_and_comments() {
        let entries: Vec<Entry<'_>> =
            split_entries("@ IN SOA ns1 host ( 1 ; serial\n 2 3\n 4 5 )\n  IN NS ns1 ; c\n")
                .collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].line, 1);
        let words: Vec<&str> = entries[0].text.split_whitespace().collect();
        assert_eq!(words.join(" "), "@ IN SOA ns1 host 1 2 3 4 5");
        assert_eq!(entries[1].line, 4);
        assert!(entries[1].starts_blank);
    }

    /// Lines taken as they stand give the entries the full reading gives, whatever comes
    /// around them: comments, parentheses over lines, quotes over lines, carriage
    /// returns, blank lines, white space only, no final line break.
    #[test]
    fn lines_taken_as_they_stand_split_as_the_full_reading_does() {
        let texts = [
            "$ORIGIN gto.example.com.\n$TTL 300\n@ IN SOA ns1 host ( 1 ; serial\n 2 3\n 4 5 )\n  IN NS ns1 ; c\nh1 A 10.0.0.1\n",
            "h1 A 10.0.0.1\r\nh2 A 10.0.0.2\r\n\r\n h3 A 10.0.0.3",
            "a TXT \"one\ntwo\" \nb A 10.0.0.1\n\n\n   \n\t\n; only a comment\nc A 10.0.0.2 ; trailing\n",
            "x TXT \"a \\\" ( b\" (\n c\n ) d\ne A 10.0.0.9\n  \t  \n f AAAA ::1",
            "\n\n",
            "",
            "( unbalanced\nnext A 10.0.0.1\n",
            "close ) A 10.0.0.1\nh A 10.0.0.2\né TXT \"é\"\n",
        ];
        for text in texts {
            let quick: Vec<Entry<'_>> = split_entries(text).collect();
            let full: Vec<Entry<'_>> = Entries {
                quick: false,
                ..split_entries(text)
            }
            .collect();
            assert_eq!(quick, full, "{text:?}");
        }
        let entries: Vec<Entry<'_>> = split_entries(texts[1]).collect();
        assert_eq!(
            entries
                .iter()
                .map(|e| (e.line, &*e.text, e.starts_blank))
                .collect::<Vec<_>>(),
            [
                (1, "h1 A 10.0.0.1", false),
                (2, "h2 A 10.0.0.2", false),
                (4, " h3 A 10.0.0.3", true)
            ]
        );
        let entries: Vec<Entry<'_>> = split_entries(texts[2]).collect();
        assert_eq!(
            entries.iter().map(|e| e.line).collect::<Vec<_>>(),
            [1, 3, 9]
        );
        assert!(matches!(entries[1].text, Cow::Borrowed("b A 10.0.0.1")));
    }

    #[test]
    fn generic_type_detection_does_not_cut_characters() {
        assert!(unsupported_syntax("x TYPE65534 1").is_some());
        assert!(unsupported_syntax("x TYPÉ1 1").is_none());
        assert!(unsupported_syntax("héé TXT \"é\"").is_none());
    }

    #[test]
    fn directive_words_keep_quoted_spaces() {
        assert_eq!(
            words("INCLUDE \"my zone.db\" sub").unwrap(),
            vec!["INCLUDE", "my zone.db", "sub"]
        );
        assert!(words("INCLUDE \"open").is_err());
    }
}
