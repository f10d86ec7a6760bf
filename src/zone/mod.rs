//! Zones: the static records of each zone we serve, read from RFC 1035 master files.
//!
//! The file is split into logical entries (parentheses joined, comments dropped) and each
//! entry is parsed on its own by hickory-proto's zone parser, with the `$ORIGIN`, `$TTL`
//! and owner name carried over from the entries before it. That way a broken line does
//! not hide the ones after it: every bad entry is reported with its file and line.
//!
//! Owner names are lower-cased. The zone must hold exactly one SOA, at the apex, and at
//! least one NS there; records outside the origin, classes other than IN, and a CNAME
//! beside other data are rejected. `$INCLUDE` is not supported (one file per zone).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::txt::Parser;

/// One zone's static data, validated.
#[derive(Debug, Clone)]
pub struct Zone {
    origin: LowerName,
    file: PathBuf,
    soa: Record,
    rrsets: HashMap<LowerName, Vec<RrSet>>,
    /// SHA-256 of the file's text.
    text_digest: [u8; 32],
}

/// The records of one owner name and type, all with the same TTL.
#[derive(Debug, Clone, PartialEq)]
pub struct RrSet {
    /// The type of every record in the set.
    pub record_type: RecordType,
    /// The records, in file order.
    pub records: Vec<Record>,
}

impl Zone {
    /// The apex.
    pub fn origin(&self) -> &LowerName {
        &self.origin
    }

    /// The file the zone came from, for messages.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The SOA record at the apex.
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// SHA-256 of the zone file's text.
    pub fn text_digest(&self) -> &[u8; 32] {
        &self.text_digest
    }

    /// The SOA serial.
    pub fn serial(&self) -> u32 {
        match &self.soa.data {
            RData::SOA(soa) => soa.serial,
            _ => 0,
        }
    }

    /// How many owner names hold records.
    pub fn name_count(&self) -> usize {
        self.rrsets.len()
    }

    /// Negative-caching TTL (RFC 2308 section 5): the lesser of the SOA's TTL and MINIMUM.
    pub fn negative_ttl(&self) -> u32 {
        match &self.soa.data {
            RData::SOA(soa) => self.soa.ttl.min(soa.minimum),
            _ => self.soa.ttl,
        }
    }

    /// True when the name owns records in the zone file.
    pub fn has_name(&self, name: &LowerName) -> bool {
        self.rrsets.contains_key(name)
    }

    /// Every owner name with its record sets.
    pub fn rrsets(&self) -> impl Iterator<Item = (&LowerName, &[RrSet])> {
        self.rrsets
            .iter()
            .map(|(name, sets)| (name, sets.as_slice()))
    }
}

/// One problem in a zone file, with its line when known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ZoneError {
    /// The zone file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong, for a human.
    pub message: String,
}

/// Reads the zone file at `path` (a regular file of at most `limit` bytes) and validates it
/// as the zone of `origin`.
pub fn load(origin: &Name, path: &Path, limit: u64) -> Result<Zone, Vec<ZoneError>> {
    let text = crate::files::read_to_string(path, limit).map_err(|e| {
        vec![ZoneError {
            file: path.to_path_buf(),
            line: None,
            message: format!("cannot read zone file for {origin}: {e}"),
        }]
    })?;
    parse(&text, origin, path.to_path_buf())
}

/// Parses zone text for `origin`; `file` names it in messages.
pub fn parse(text: &str, origin: &Name, file: PathBuf) -> Result<Zone, Vec<ZoneError>> {
    let mut errors = Vec::new();
    let apex = LowerName::from(origin);
    let mut current_origin = origin.clone();
    let mut default_ttl: Option<String> = None;
    let mut last_ttl: Option<u32> = None;
    let mut last_owner: Option<Name> = None;
    let mut soa: Option<Record> = None;
    let mut rrsets: HashMap<LowerName, Vec<RrSet>> = HashMap::new();
    // Where each owner's records of each type first appear, for messages.
    let mut lines: HashMap<(LowerName, RecordType), usize> = HashMap::new();

    for entry in split_entries(text) {
        let trimmed = entry.text.trim();
        if let Some(directive) = trimmed.strip_prefix('$') {
            let mut words = directive.split_whitespace();
            let keyword = words.next().unwrap_or_default().to_ascii_uppercase();
            let argument = words.next();
            match (keyword.as_str(), argument) {
                ("ORIGIN", Some(name)) => match Name::parse(name, Some(&current_origin)) {
                    Ok(name) => current_origin = name,
                    Err(e) => error(
                        &mut errors,
                        &file,
                        entry.line,
                        format!("bad $ORIGIN {name:?}: {e}"),
                    ),
                },
                ("TTL", Some(ttl)) => {
                    let probe = format!("$TTL {ttl}\n@ IN TXT \"probe\"\n");
                    match Parser::new(probe, None, Some(current_origin.clone())).parse() {
                        Ok(_) => default_ttl = Some(ttl.to_string()),
                        Err(e) => error(
                            &mut errors,
                            &file,
                            entry.line,
                            format!("bad $TTL {ttl:?}: {e}"),
                        ),
                    }
                }
                ("INCLUDE", _) => error(
                    &mut errors,
                    &file,
                    entry.line,
                    "$INCLUDE is not supported: keep one file per zone".into(),
                ),
                (keyword, _) => error(
                    &mut errors,
                    &file,
                    entry.line,
                    format!("unknown or incomplete directive ${keyword}"),
                ),
            }
            continue;
        }

        let mut doc = format!("$ORIGIN {current_origin}\n");
        if let Some(ttl) = default_ttl
            .clone()
            .or_else(|| last_ttl.map(|t| t.to_string()))
        {
            doc.push_str(&format!("$TTL {ttl}\n"));
        }
        if entry.starts_blank {
            match &last_owner {
                Some(owner) => doc.push_str(&owner.to_string()),
                None => {
                    error(
                        &mut errors,
                        &file,
                        entry.line,
                        "record has no owner name and none comes before it".into(),
                    );
                    continue;
                }
            }
        }
        doc.push_str(&entry.text);
        doc.push('\n');
        let parsed = match Parser::new(doc, None, Some(current_origin.clone())).parse() {
            Ok((_, records)) => records,
            Err(e) => {
                error(&mut errors, &file, entry.line, format!("bad record: {e}"));
                continue;
            }
        };
        for record in parsed
            .into_values()
            .flat_map(|set| set.records_without_rrsigs().cloned().collect::<Vec<_>>())
        {
            last_ttl = Some(record.ttl);
            last_owner = Some(record.name.clone());
            let mut record = record;
            record.name = record.name.to_lowercase();
            let owner = LowerName::from(&record.name);
            if record.dns_class != DNSClass::IN {
                error(
                    &mut errors,
                    &file,
                    entry.line,
                    format!("class {} is not served; only IN", record.dns_class),
                );
                continue;
            }
            if !apex.zone_of(&owner) {
                error(
                    &mut errors,
                    &file,
                    entry.line,
                    format!("{} is outside the zone {}", record.name, origin),
                );
                continue;
            }
            if record.ttl > MAX_TTL {
                error(
                    &mut errors,
                    &file,
                    entry.line,
                    format!(
                        "TTL {} of {} is 2^31 or more (RFC 2181 section 8); use at most {MAX_TTL}",
                        record.ttl, record.name
                    ),
                );
                continue;
            }
            if record.record_type() == RecordType::SOA {
                if owner != apex {
                    error(
                        &mut errors,
                        &file,
                        entry.line,
                        format!("SOA must be at the apex {origin}, not at {}", record.name),
                    );
                } else if soa.is_some() {
                    error(&mut errors, &file, entry.line, "a second SOA record".into());
                } else {
                    soa = Some(record);
                }
                continue;
            }
            lines
                .entry((owner.clone(), record.record_type()))
                .or_insert(entry.line);
            add_record(rrsets.entry(owner).or_default(), record);
        }
    }

    if soa.is_none() && errors.is_empty() {
        error(
            &mut errors,
            &file,
            1,
            format!("zone {origin} has no SOA record at its apex"),
        );
    }
    let apex_has_ns = rrsets
        .get(&apex)
        .is_some_and(|sets| sets.iter().any(|s| s.record_type == RecordType::NS));
    if !apex_has_ns && errors.is_empty() {
        error(
            &mut errors,
            &file,
            1,
            format!("zone {origin} has no NS records at its apex"),
        );
    }
    let line_of = |owner: &LowerName, record_type: RecordType| {
        lines
            .get(&(owner.clone(), record_type))
            .copied()
            .unwrap_or_else(|| find_owner_line(text, owner))
    };
    for (owner, sets) in &rrsets {
        let cname = sets.iter().find(|s| s.record_type == RecordType::CNAME);
        if let Some(cname) = cname
            && cname.records.len() > 1
        {
            error(
                &mut errors,
                &file,
                line_of(owner, RecordType::CNAME),
                format!(
                    "{owner} has {} CNAME records; a name has at most one (RFC 1034 section 3.6.2)",
                    cname.records.len()
                ),
            );
        }
        if sets.len() > 1 && cname.is_some() {
            let other = sets
                .iter()
                .find(|s| s.record_type != RecordType::CNAME)
                .map_or(RecordType::CNAME, |s| s.record_type);
            let line = line_of(owner, other).max(line_of(owner, RecordType::CNAME));
            error(
                &mut errors,
                &file,
                line,
                format!("{owner} has a CNAME beside other records (RFC 1034 section 3.6.2)"),
            );
        }
        if *owner == apex && sets.iter().any(|s| s.record_type == RecordType::CNAME) {
            error(
                &mut errors,
                &file,
                1,
                format!("the apex {owner} cannot be a CNAME"),
            );
        }
    }
    for (owner, line) in cname_loops(&rrsets) {
        let line = lines
            .get(&(owner.clone(), RecordType::CNAME))
            .copied()
            .unwrap_or(line);
        error(
            &mut errors,
            &file,
            line,
            format!("{owner} starts a CNAME loop inside the zone; it can never be answered"),
        );
    }
    match soa {
        Some(soa) if errors.is_empty() => Ok(Zone {
            origin: apex,
            file,
            soa,
            rrsets,
            text_digest: {
                use sha2::{Digest, Sha256};
                Sha256::digest(text.as_bytes()).into()
            },
        }),
        _ => Err(errors),
    }
}

/// RFC 2181 section 8: a TTL is at most 2^31 - 1.
const MAX_TTL: u32 = i32::MAX as u32;

/// Owners whose CNAME chain, followed inside the zone, comes back to a name already on it
/// (each loop reported once, at its smallest name). The line is a fallback of 1.
fn cname_loops(rrsets: &HashMap<LowerName, Vec<RrSet>>) -> Vec<(LowerName, usize)> {
    let target = |owner: &LowerName| -> Option<LowerName> {
        let set = rrsets
            .get(owner)?
            .iter()
            .find(|s| s.record_type == RecordType::CNAME)?;
        match &set.records.first()?.data {
            RData::CNAME(cname) => Some(LowerName::from(&cname.0)),
            _ => None,
        }
    };
    let mut loops = Vec::new();
    let mut owners: Vec<&LowerName> = rrsets.keys().collect();
    owners.sort();
    for owner in owners {
        let mut seen = vec![owner.clone()];
        let mut current = owner.clone();
        while let Some(next) = target(&current) {
            if let Some(position) = seen.iter().position(|n| *n == next) {
                // Report a loop once: at its smallest member, when we started there.
                let cycle = &seen[position..];
                if position == 0 && cycle.iter().min() == Some(owner) {
                    loops.push((owner.clone(), 1));
                }
                break;
            }
            seen.push(next.clone());
            current = next;
        }
    }
    loops
}

fn error(errors: &mut Vec<ZoneError>, file: &Path, line: usize, message: String) {
    errors.push(ZoneError {
        file: file.to_path_buf(),
        line: Some(line),
        message,
    });
}

/// Adds a record to its RRset; duplicates are dropped and the set keeps one TTL (RFC 2181
/// section 5.2: the lowest seen).
fn add_record(sets: &mut Vec<RrSet>, record: Record) {
    let record_type = record.record_type();
    match sets.iter_mut().find(|s| s.record_type == record_type) {
        Some(set) => {
            if set.records.iter().any(|r| r.data == record.data) {
                return;
            }
            let ttl = set
                .records
                .first()
                .map_or(record.ttl, |r| r.ttl)
                .min(record.ttl);
            set.records.push(record);
            for r in &mut set.records {
                r.ttl = ttl;
            }
        }
        None => sets.push(RrSet {
            record_type,
            records: vec![record],
        }),
    }
}

/// Line of the first entry whose owner text matches, for messages about whole names.
fn find_owner_line(text: &str, owner: &LowerName) -> usize {
    let wanted = owner.to_string();
    let short = wanted.split('.').next().unwrap_or_default().to_string();
    text.lines()
        .position(|line| {
            let first = line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            !line.starts_with(char::is_whitespace) && (first == wanted || first == short)
        })
        .map_or(1, |i| i + 1)
}

/// One logical entry of a master file: a directive or a record, parentheses joined.
#[derive(Debug, PartialEq)]
struct Entry {
    /// Line the entry starts on (1-based).
    line: usize,
    /// The entry with comments dropped and parenthesised line breaks folded.
    text: String,
    /// The entry starts with white space: it inherits the previous owner name.
    starts_blank: bool,
}

/// Splits master-file text into logical entries (RFC 1035 section 5.1).
fn split_entries(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut buffer = String::new();
    let mut start_line = 1;
    let mut line = 1;
    let mut depth = 0usize;
    let mut in_quote = false;
    let mut escaped = false;
    let mut in_comment = false;
    let mut at_line_start = true;
    let mut starts_blank = false;

    let mut finish = |buffer: &mut String, start_line: usize, starts_blank: bool| {
        if !buffer.trim().is_empty() {
            entries.push(Entry {
                line: start_line,
                text: std::mem::take(buffer),
                starts_blank,
            });
        }
        buffer.clear();
    };

    for c in text.chars() {
        if at_line_start && depth == 0 {
            start_line = line;
            starts_blank = c == ' ' || c == '\t';
            at_line_start = false;
        }
        if c == '\n' {
            line += 1;
            in_comment = false;
            if depth == 0 && !in_quote {
                finish(&mut buffer, start_line, starts_blank);
                at_line_start = true;
            } else {
                buffer.push(' ');
            }
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
    finish(&mut buffer, start_line, starts_blank);
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Name {
        Name::from_ascii("gto.example.com.").unwrap()
    }

    #[test]
    fn splits_parentheses_and_comments() {
        let entries =
            split_entries("@ IN SOA ns1 host ( 1 ; serial\n 2 3\n 4 5 )\n  IN NS ns1 ; c\n");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].line, 1);
        let words: Vec<&str> = entries[0].text.split_whitespace().collect();
        assert_eq!(words.join(" "), "@ IN SOA ns1 host 1 2 3 4 5");
        assert_eq!(entries[1].line, 4);
        assert!(entries[1].starts_blank);
    }

    #[test]
    fn every_bad_line_is_reported_with_its_line() {
        let text = "$TTL 300\n@ SOA ns1 host 1 2 3 4 5\n@ NS ns1\nns1 A 192.0.2.1\nbad A 999.1.1.1\nok A 192.0.2.2\nworse AAAA nope\n";
        let errors = parse(text, &origin(), PathBuf::from("z.zone")).unwrap_err();
        let lines: Vec<_> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![Some(5), Some(7)], "{errors:?}");
    }

    #[test]
    fn owner_and_ttl_carry_over() {
        let text =
            "@ 600 SOA ns1 host 1 2 3 4 5\n  NS ns1\nns1 A 192.0.2.1\n    AAAA 2001:db8::1\n";
        let zone = parse(text, &origin(), PathBuf::from("z.zone")).unwrap();
        let ns1 = LowerName::from(Name::from_ascii("ns1.gto.example.com.").unwrap());
        let sets = zone.rrsets.get(&ns1).unwrap();
        assert_eq!(sets.len(), 2);
        assert!(sets.iter().all(|s| s.records[0].ttl == 600));
        assert_eq!(zone.negative_ttl(), 5);
    }

    #[test]
    fn rejects_out_of_zone_and_cname_with_data() {
        let text = "$TTL 60\n@ SOA ns1 host 1 2 3 4 5\n@ NS ns1\nwww.other.org. A 192.0.2.1\nx CNAME y\nx A 192.0.2.3\n";
        let errors = parse(text, &origin(), PathBuf::from("z.zone")).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].message.contains("outside the zone"));
        assert!(errors[1].message.contains("CNAME beside other records"));
    }
}
