//! Zones: the static records of each zone we serve, read from RFC 1035 master files
//! ([`master`] reads the files, `$INCLUDE`s and all) and checked here.
//!
//! Owner names are lower-cased. The zone must hold exactly one SOA, at the apex, and at
//! least one NS there; records outside the origin, classes other than IN, TTLs of 2^31 or
//! more, a CNAME beside other data, CNAME loops and NS at a wildcard are rejected. Names
//! with NS records below the apex are zone cuts (delegations): what else sits at or below
//! a cut is not ours to answer (occluded), apart from the address records of NS targets
//! (glue), and is reported as a warning.

pub mod master;

use std::collections::HashSet;

/// Maps keyed by names: foldhash rather than SipHash, since a large zone hashes every
/// owner name several times while it loads (the keys come from the zone's own file).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};

/// One zone's static data, validated.
#[derive(Debug, Clone)]
pub struct Zone {
    origin: LowerName,
    file: PathBuf,
    soa: Record,
    /// Shared with the prepared zones built from it (no copy of the records per build).
    rrsets: Arc<Names>,
    /// Delegations below the apex, most general first.
    cuts: Vec<LowerName>,
    /// Some owner name is a wildcard (`*` as its first label).
    has_wildcards: bool,
    /// Problems that leave the zone servable: occluded data.
    warnings: Vec<ZoneError>,
    /// SHA-256 over the text of the zone file and the files it includes.
    text_digest: [u8; 32],
}

/// An owner name's record sets, shared by the zone and the prepared zones built from it.
pub type Shared = Arc<[RrSet]>;

/// A zone's owner names with their record sets.
pub type Names = HashMap<LowerName, Shared>;

/// The records of one owner name and type, all with the same TTL, held compactly: the
/// data of each record without its owner name, class and TTL (which the set and its owner
/// give), addresses inline. A hickory `Record` takes 280 octets, an address here 24: a
/// zone of 200,000 address records is over 50 MiB smaller. [`RrSet::records`] makes the
/// records when an answer needs them (the general path; the fast path answers from
/// prepared bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RrSet {
    /// The type of every record in the set.
    pub record_type: RecordType,
    ttl: u32,
    data: Box<[Data]>,
}

/// One record's data: an address inline, anything else boxed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Data {
    A(std::net::Ipv4Addr),
    Aaaa(std::net::Ipv6Addr),
    Other(Box<RData>),
}

impl From<RData> for Data {
    fn from(data: RData) -> Self {
        match data {
            RData::A(a) => Data::A(a.0),
            RData::AAAA(aaaa) => Data::Aaaa(aaaa.0),
            other => Data::Other(Box::new(other)),
        }
    }
}

impl Data {
    fn rdata(&self) -> std::borrow::Cow<'_, RData> {
        use hickory_proto::rr::rdata::{A, AAAA};
        use std::borrow::Cow;
        match self {
            Data::A(ip) => Cow::Owned(RData::A(A(*ip))),
            Data::Aaaa(ip) => Cow::Owned(RData::AAAA(AAAA(*ip))),
            Data::Other(data) => Cow::Borrowed(data),
        }
    }
}

impl RrSet {
    /// A set of `record_type` with these data, in this order, all with `ttl`.
    pub fn new(record_type: RecordType, ttl: u32, data: impl IntoIterator<Item = RData>) -> Self {
        Self {
            record_type,
            ttl,
            data: data.into_iter().map(Data::from).collect(),
        }
    }

    /// A set of these records (of one type, with one TTL: the first record's type and
    /// TTL are the set's).
    pub fn of_records(records: Vec<Record>) -> Self {
        let record_type = records
            .first()
            .map_or(RecordType::NULL, Record::record_type);
        let ttl = records.first().map_or(0, |r| r.ttl);
        Self::new(record_type, ttl, records.into_iter().map(|r| r.data))
    }

    /// The TTL of every record in the set.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// How many records the set holds.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True for a set without records (never one of a zone).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The records' data, in file order.
    pub fn rdata(&self) -> impl Iterator<Item = std::borrow::Cow<'_, RData>> {
        self.data.iter().map(Data::rdata)
    }

    /// The octets of every address of an A or AAAA set, sorted (the canonical order of
    /// RFC 4034 section 6.3), appended to `out`; false (and nothing appended) for a set
    /// holding anything else.
    pub fn sorted_address_octets(&self, out: &mut Vec<u8>) -> bool {
        let mut addresses = Vec::with_capacity(self.data.len());
        for data in &self.data {
            match data {
                Data::A(address) => addresses.push(std::net::IpAddr::V4(*address)),
                Data::Aaaa(address) => addresses.push(std::net::IpAddr::V6(*address)),
                Data::Other(_) => return false,
            }
        }
        // One family per set (its type), where IpAddr's order is the octets' order.
        addresses.sort_unstable();
        for address in addresses {
            match address {
                std::net::IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                std::net::IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
            }
        }
        true
    }

    /// The records, with `owner` as their owner name, in file order.
    pub fn records(&self, owner: &Name) -> Vec<Record> {
        self.data
            .iter()
            .map(|data| Record::from_rdata(owner.clone(), self.ttl, data.rdata().into_owned()))
            .collect()
    }
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

    /// Names below the apex with NS records (zone cuts), most general first.
    pub fn cuts(&self) -> &[LowerName] {
        &self.cuts
    }

    /// The highest zone cut at or above `name`: the delegation that makes it not ours.
    pub fn cut_of(&self, name: &LowerName) -> Option<&LowerName> {
        cut_of(&self.cuts, name)
    }

    /// True when an owner name is a wildcard.
    pub fn has_wildcards(&self) -> bool {
        self.has_wildcards
    }

    /// Problems that do not stop the zone from being served (occluded data), located.
    pub fn warnings(&self) -> &[ZoneError] {
        &self.warnings
    }

    /// SHA-256 over the text of the zone file and the files it includes.
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
        self.rrsets.iter().map(|(name, sets)| (name, &sets[..]))
    }

    /// Every owner name with its record sets, shared (a prepared zone holds them
    /// without copying the names or the records).
    pub fn names(&self) -> &Arc<Names> {
        &self.rrsets
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

/// Reads the zone file at `path` (a regular file within `limits`, together with what it
/// includes) and validates it as the zone of `origin`.
pub fn load(origin: &Name, path: &Path, limits: &ReadLimits) -> Result<Zone, Vec<ZoneError>> {
    let text = crate::files::read_to_string(path, limits.bytes).map_err(|e| {
        vec![ZoneError {
            file: path.to_path_buf(),
            line: None,
            message: format!("cannot read zone file for {origin}: {e}"),
        }]
    })?;
    parse_within(&text, origin, path.to_path_buf(), limits)
}

/// Bounds on reading one zone's files: what a zone file (or a tree of `$INCLUDE`s) can
/// make gto read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadLimits {
    /// Bytes of all of the zone's files together (`[server] max_file_size`).
    pub bytes: u64,
    /// `$INCLUDE` directives followed at most, over the whole tree ([`MAX_INCLUDES`]): a
    /// fan-out of tiny files that include each other many times is an error, not hours
    /// of reading.
    pub includes: usize,
    /// When set, `$INCLUDE` reads only files inside this directory tree.
    pub root: Option<PathBuf>,
}

/// `$INCLUDE`s followed at most per zone.
pub const MAX_INCLUDES: usize = 10_000;

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            bytes: crate::files::DEFAULT_MAX_FILE_SIZE,
            includes: MAX_INCLUDES,
            root: None,
        }
    }
}

/// Parses zone text for `origin`; `file` names it in messages and is where `$INCLUDE`
/// paths start.
pub fn parse(text: &str, origin: &Name, file: PathBuf) -> Result<Zone, Vec<ZoneError>> {
    parse_within(text, origin, file, &ReadLimits::default())
}

/// Where a record type of an owner was first read, for messages.
type Lines = HashMap<(LowerName, RecordType), (Arc<Path>, usize)>;

/// Looks up where an owner's record type was first read (file, line).
type LineOf<'a> = dyn Fn(&LowerName, RecordType) -> (Arc<Path>, usize) + 'a;

fn parse_within(
    text: &str,
    origin: &Name,
    file: PathBuf,
    limits: &ReadLimits,
) -> Result<Zone, Vec<ZoneError>> {
    let apex = LowerName::from(origin);
    let mut soa: Option<Record> = None;
    // Sized for a record per line: a big zone's tables are not grown (and every name
    // hashed again) step by step.
    let entries = text.bytes().filter(|&b| b == b'\n').count();
    let mut gather = Gather::with_capacity(entries);
    let mut record_errors = Vec::new();

    let mut take = |master::Located {
                        mut record,
                        file: at,
                        line,
                    }| {
        let owner = LowerName::from(&record.name);
        if let Some(message) = refused(&record, &owner, &apex, origin) {
            error(&mut record_errors, &at, line, message);
            return;
        }
        let mut fail = |message: String| error(&mut record_errors, &at, line, message);
        if record.record_type() == RecordType::SOA {
            if owner != apex {
                fail(format!("SOA must be at the apex {origin}, not at {owner}"));
            } else if soa.is_some() {
                fail("a second SOA record".into());
            } else {
                record.name = Name::from(&owner);
                soa = Some(record);
            }
            return;
        }
        gather.add(owner, record);
    };
    let read = master::read(text, origin, &file, limits, &mut take);
    let mut errors = read.errors;
    errors.append(&mut record_errors);
    let rrsets = gather.done();

    if errors.is_empty() {
        check_apex(origin, soa.is_some(), &rrsets, &file, &mut errors);
    }
    // Where an owner's type was first read is needed only to report a problem with it:
    // looked up then, by reading the text again, rather than kept for every record of
    // every zone (a table as big as the zone's own).
    let lines = std::cell::OnceCell::new();
    let first_line = (Arc::<Path>::from(file.as_path()), 1);
    let line_of = |owner: &LowerName, record_type: RecordType| {
        lines
            .get_or_init(|| first_lines(text, origin, &file, limits))
            .get(&(owner.clone(), record_type))
            .cloned()
            .unwrap_or_else(|| first_line.clone())
    };
    // Every owner checked in table order; the few with problems reported in canonical
    // order (sorting 200,000 names to find none costs more than the checks).
    let mut found: Vec<(Vec<u8>, Vec<ZoneError>)> = Vec::new();
    for (owner, sets) in rrsets.iter() {
        let mut problems = Vec::new();
        check_owner(owner, sets, &apex, &line_of, &mut problems);
        if !problems.is_empty() {
            found.push((canonical_key(owner), problems));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    errors.extend(found.into_iter().flat_map(|(_, problems)| problems));
    for owner in cname_loops(&rrsets) {
        let (at, line) = line_of(&owner, RecordType::CNAME);
        error(
            &mut errors,
            &at,
            line,
            format!("{owner} starts a CNAME loop inside the zone; it can never be answered"),
        );
    }
    let cuts = zone_cuts(&apex, &rrsets);
    misplaced_ds(&rrsets, &cuts, &line_of, &mut errors);
    let warnings = occluded(&rrsets, &cuts, &apex)
        .into_iter()
        .map(|(owner, record_type, cut)| {
            let (at, line) = line_of(&owner, record_type);
            ZoneError {
                file: at.to_path_buf(),
                line: Some(line),
                message: format!(
                    "{owner} {record_type} is at or below the delegation {cut} and is never \
                     answered (occluded, RFC 1034 section 4.2.1)"
                ),
            }
        })
        .collect();
    let has_wildcards = rrsets.keys().any(LowerName::is_wildcard);
    match soa {
        Some(soa) if errors.is_empty() => Ok(Zone {
            origin: apex,
            file,
            soa,
            rrsets: Arc::new(rrsets),
            cuts,
            has_wildcards,
            warnings,
            text_digest: read.digest,
        }),
        _ => Err(errors),
    }
}

/// Where each owner name's record types were first read (file, line), of the records
/// [`parse_within`] takes: the zone's files read again, for messages. (Should an included
/// file change between the two readings, a message may name a line of its new text.)
fn first_lines(text: &str, origin: &Name, file: &Path, limits: &ReadLimits) -> Lines {
    let apex = LowerName::from(origin);
    let mut lines = Lines::default();
    let mut take = |master::Located {
                        record,
                        file: at,
                        line,
                    }| {
        let owner = LowerName::from(&record.name);
        if record.record_type() != RecordType::SOA
            && refused(&record, &owner, &apex, origin).is_none()
        {
            lines
                .entry((owner, record.record_type()))
                .or_insert((at, line));
        }
    };
    master::read(text, origin, file, limits, &mut take);
    lines
}

/// Why a record read from the file cannot be served, if it cannot: another class, outside
/// the zone, a TTL of 2^31 or more, NS at a wildcard, DNSSEC records gto makes itself, or
/// DS at the apex.
fn refused(record: &Record, owner: &LowerName, apex: &LowerName, origin: &Name) -> Option<String> {
    let record_type = record.record_type();
    if record.dns_class != DNSClass::IN {
        return Some(format!("class {} is not served; only IN", record.dns_class));
    }
    if !apex.zone_of(owner) {
        return Some(format!("{owner} is outside the zone {origin}"));
    }
    if record.ttl > MAX_TTL {
        return Some(format!(
            "TTL {} of {owner} is 2^31 or more (RFC 2181 section 8); use at most {MAX_TTL}",
            record.ttl
        ));
    }
    if record_type == RecordType::NS && owner.is_wildcard() {
        return Some(format!(
            "NS at the wildcard {owner} is not supported (RFC 4592 section 4.2)"
        ));
    }
    if matches!(
        record_type,
        RecordType::DNSKEY
            | RecordType::RRSIG
            | RecordType::NSEC
            | RecordType::NSEC3
            | RecordType::NSEC3PARAM
            | RecordType::CDS
            | RecordType::CDNSKEY
            | RecordType::KEY
            | RecordType::SIG
    ) {
        return Some(master::dnssec_made(&record_type.to_string()));
    }
    if record_type == RecordType::DS && owner == apex {
        return Some(format!(
            "DS at the apex {origin} belongs in the parent zone (RFC 4035 section 2.4); \
             `gto dnssec ds` prints it"
        ));
    }
    None
}

/// The checks of one owner's sets: at most one CNAME and nothing beside it (none at the
/// apex), and every set small enough for one message.
fn check_owner(
    owner: &LowerName,
    sets: &[RrSet],
    apex: &LowerName,
    line_of: &LineOf<'_>,
    errors: &mut Vec<ZoneError>,
) {
    let cname = sets.iter().find(|s| s.record_type == RecordType::CNAME);
    if let Some(cname) = cname
        && cname.len() > 1
    {
        let (at, line) = line_of(owner, RecordType::CNAME);
        error(
            errors,
            &at,
            line,
            format!(
                "{owner} has {} CNAME records; a name has at most one (RFC 1034 section 3.6.2)",
                cname.len()
            ),
        );
    }
    if sets.len() > 1 && cname.is_some() {
        let other = sets
            .iter()
            .find(|s| s.record_type != RecordType::CNAME)
            .map_or(RecordType::CNAME, |s| s.record_type);
        let (at, line) = std::cmp::max_by_key(
            line_of(owner, other),
            line_of(owner, RecordType::CNAME),
            |(_, line)| *line,
        );
        error(
            errors,
            &at,
            line,
            format!("{owner} has a CNAME beside other records (RFC 1034 section 3.6.2)"),
        );
    }
    for set in sets {
        let size = wire_size(owner, set);
        if size > MAX_RRSET_WIRE {
            let (at, line) = line_of(owner, set.record_type);
            error(
                errors,
                &at,
                line,
                format!(
                    "{owner} {} has {} records taking about {size} octets on the wire: an \
                     answer holds at most {MAX_RRSET_WIRE} with room for its question and \
                     signatures (a DNS message is at most 65,535 octets, even over TCP); \
                     split it or keep fewer records",
                    set.record_type,
                    set.len()
                ),
            );
        }
    }
    if owner == apex && cname.is_some() {
        let (at, line) = line_of(owner, RecordType::CNAME);
        error(
            errors,
            &at,
            line,
            format!("the apex {owner} cannot be a CNAME"),
        );
    }
}

/// A zone needs a SOA and NS records at its apex (checked once the records are good).
fn check_apex(
    origin: &Name,
    has_soa: bool,
    rrsets: &HashMap<LowerName, Shared>,
    file: &Path,
    errors: &mut Vec<ZoneError>,
) {
    if !has_soa {
        error(
            errors,
            file,
            1,
            format!("zone {origin} has no SOA record at its apex"),
        );
    }
    let apex_has_ns = rrsets
        .get(&LowerName::from(origin))
        .is_some_and(|sets| sets.iter().any(|s| s.record_type == RecordType::NS));
    if !apex_has_ns && errors.is_empty() {
        error(
            errors,
            file,
            1,
            format!("zone {origin} has no NS records at its apex"),
        );
    }
}

/// DS records anywhere but beside a delegation's NS records.
fn misplaced_ds(
    rrsets: &HashMap<LowerName, Shared>,
    cuts: &[LowerName],
    line_of: &LineOf<'_>,
    errors: &mut Vec<ZoneError>,
) {
    let mut ds_owners: Vec<&LowerName> = rrsets
        .iter()
        .filter(|(owner, sets)| {
            sets.iter().any(|s| s.record_type == RecordType::DS) && !cuts.contains(owner)
        })
        .map(|(owner, _)| owner)
        .collect();
    ds_owners.sort();
    for owner in ds_owners {
        let (at, line) = line_of(owner, RecordType::DS);
        error(
            errors,
            &at,
            line,
            format!(
                "DS at {owner}, which is not a delegation: DS goes beside the NS records of a child zone"
            ),
        );
    }
}

/// Names below the apex that own NS records, most general first.
fn zone_cuts(apex: &LowerName, rrsets: &HashMap<LowerName, Shared>) -> Vec<LowerName> {
    let mut cuts: Vec<LowerName> = rrsets
        .iter()
        .filter(|(name, sets)| {
            *name != apex && sets.iter().any(|s| s.record_type == RecordType::NS)
        })
        .map(|(name, _)| name.clone())
        .collect();
    cuts.sort_by(|a, b| a.num_labels().cmp(&b.num_labels()).then(a.cmp(b)));
    cuts
}

/// The highest cut at or above `name`, if any.
fn cut_of<'c>(cuts: &'c [LowerName], name: &LowerName) -> Option<&'c LowerName> {
    cuts.iter().find(|cut| cut.zone_of(name))
}

/// Record sets at or below a cut that are neither the cut's NS set nor glue (A or AAAA
/// of a name some NS record in the zone points to), with the cut that hides them.
fn occluded(
    rrsets: &HashMap<LowerName, Shared>,
    cuts: &[LowerName],
    apex: &LowerName,
) -> Vec<(LowerName, RecordType, LowerName)> {
    if cuts.is_empty() {
        return Vec::new();
    }
    let ns_targets: HashSet<LowerName> = rrsets
        .values()
        .flat_map(|sets| sets.iter())
        .filter(|s| s.record_type == RecordType::NS)
        .flat_map(|s| s.rdata())
        .filter_map(|data| match data.as_ref() {
            RData::NS(ns) => Some(LowerName::from(&ns.0)),
            _ => None,
        })
        .collect();
    let mut found = Vec::new();
    for (owner, sets) in rrsets {
        if owner == apex {
            continue;
        }
        let Some(cut) = cut_of(cuts, owner) else {
            continue;
        };
        for set in sets.iter() {
            let delegation =
                owner == cut && matches!(set.record_type, RecordType::NS | RecordType::DS);
            let glue = matches!(set.record_type, RecordType::A | RecordType::AAAA)
                && ns_targets.contains(owner);
            if !delegation && !glue {
                found.push((owner.clone(), set.record_type, cut.clone()));
            }
        }
    }
    found.sort();
    found
}

/// Sorts names (lower case) in canonical DNS order (RFC 4034 section 6.1), as `Ord` does,
/// but comparing prepared byte keys: a large zone's names sort in a tenth of the time of
/// label-by-label comparisons.
pub(crate) fn sort_canonical(names: &mut [&LowerName]) {
    names.sort_by_cached_key(|name| canonical_key(name));
}

/// A key whose byte order is the canonical order of lower-case names: the labels from the
/// root down, each ended by 0x00 0x00, a 0x00 byte inside a label written 0x00 0x01 (so
/// a shorter label, and an ancestor, sorts first).
pub(crate) fn canonical_key(name: &LowerName) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 2 * usize::from(name.num_labels()));
    for label in name.iter().rev() {
        for &byte in label {
            if byte == 0 {
                key.extend_from_slice(&[0, 1]);
            } else {
                key.push(byte);
            }
        }
        key.extend_from_slice(&[0, 0]);
    }
    key
}

/// RFC 2181 section 8: a TTL is at most 2^31 - 1.
const MAX_TTL: u32 = i32::MAX as u32;

/// Largest RRset served, in octets of its records: a message is at most 65,535 octets
/// (the TCP length field), and an answer needs room for its header, question, OPT and
/// the RRSIGs of a signed zone besides the records. A bigger set could only go out
/// partial, which gto never does.
pub const MAX_RRSET_WIRE: usize = 65_535 - 2_048;

/// What an RRset takes in an answer, per record its owner, type, class, TTL and length
/// (10) and its data, all uncompressed: the encoder compresses at most 120 names per
/// message (as Unbound does since CVE-2024-8508), so a big set is mostly uncompressed.
fn wire_size(owner: &LowerName, set: &RrSet) -> usize {
    use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
    // Addresses have a fixed length: their sets are sized without reading their data
    // (a big zone's checks would otherwise visit every record once more).
    let fixed = match set.record_type {
        RecordType::A => Some(4),
        RecordType::AAAA => Some(16),
        _ => None,
    };
    if let Some(length) = fixed {
        return set.data.len() * (owner.len() + 1 + 10 + length);
    }
    let data: usize = set
        .data
        .iter()
        .map(|data| {
            let length = match data {
                Data::A(_) => 4,
                Data::Aaaa(_) => 16,
                Data::Other(data) => {
                    let mut buffer = Vec::with_capacity(64);
                    let mut encoder = BinEncoder::new(&mut buffer);
                    match data.emit(&mut encoder) {
                        Ok(()) => buffer.len(),
                        Err(_) => return usize::MAX / (1 << 20),
                    }
                }
            };
            owner.len() + 1 + 10 + length
        })
        .sum();
    data
}

/// Owners whose CNAME chain, followed inside the zone, comes back to a name already on it
/// (each loop reported once, at its smallest name).
fn cname_loops(rrsets: &HashMap<LowerName, Shared>) -> Vec<LowerName> {
    let target = |owner: &LowerName| -> Option<LowerName> {
        let set = rrsets
            .get(owner)?
            .iter()
            .find(|s| s.record_type == RecordType::CNAME)?;
        match set.rdata().next()?.as_ref() {
            RData::CNAME(cname) => Some(LowerName::from(&cname.0)),
            _ => None,
        }
    };
    let mut loops = Vec::new();
    // Only a name with a CNAME starts a chain.
    let mut owners: Vec<&LowerName> = rrsets
        .iter()
        .filter(|(_, sets)| sets.iter().any(|s| s.record_type == RecordType::CNAME))
        .map(|(owner, _)| owner)
        .collect();
    sort_canonical(&mut owners);
    for owner in owners {
        let mut seen = vec![owner.clone()];
        let mut current = owner.clone();
        while let Some(next) = target(&current) {
            if let Some(position) = seen.iter().position(|n| *n == next) {
                // Report a loop once: at its smallest member, when we started there.
                let cycle = &seen[position..];
                if position == 0 && cycle.iter().min() == Some(owner) {
                    loops.push(owner.clone());
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

/// A record set while its zone file is read.
struct Building {
    record_type: RecordType,
    ttl: u32,
    data: Vec<Data>,
}

impl Building {
    fn done(self) -> RrSet {
        RrSet {
            record_type: self.record_type,
            ttl: self.ttl,
            data: self.data.into_boxed_slice(),
        }
    }
}

impl From<&RrSet> for Building {
    fn from(set: &RrSet) -> Self {
        Self {
            record_type: set.record_type,
            ttl: set.ttl,
            data: set.data.to_vec(),
        }
    }
}

/// Adds a record to its RRset; duplicates are dropped and the set keeps one TTL (RFC 2181
/// section 5.2: the lowest seen, a duplicate's too).
fn add_record(sets: &mut Vec<Building>, record: Record) {
    let record_type = record.record_type();
    add_data(sets, record_type, record.ttl, Data::from(record.data));
}

/// Adds one record's data, of `record_type` with `ttl`, to its set ([`add_record`]).
fn add_data(sets: &mut Vec<Building>, record_type: RecordType, ttl: u32, data: Data) {
    match sets.iter_mut().find(|s| s.record_type == record_type) {
        Some(set) => {
            set.ttl = set.ttl.min(ttl);
            if !set.data.contains(&data) {
                set.data.push(data);
            }
        }
        None => sets.push(Building {
            record_type,
            ttl,
            data: vec![data],
        }),
    }
}

/// Gathers the records read into each owner name's sets, building the zone's table of
/// names once. The records of an owner usually come together in a zone file: they are
/// gathered beside the table, and go in as the owner's sets when the next owner comes.
/// An owner that comes back after others is gathered aside from then on (`again`) and
/// put in at the end, so that no owner's sets are rebuilt record by record.
struct Gather {
    names: Names,
    /// The owner being gathered, and its sets so far.
    owner: Option<LowerName>,
    sets: Vec<Building>,
    /// Owners that came back after others, with all their sets so far.
    again: HashMap<LowerName, Vec<Building>>,
}

impl Gather {
    /// For about `names` owner names.
    fn with_capacity(names: usize) -> Self {
        let mut table = Names::default();
        table.reserve(names);
        Self {
            names: table,
            owner: None,
            sets: Vec::new(),
            again: HashMap::default(),
        }
    }

    fn add(&mut self, owner: LowerName, record: Record) {
        if self.owner.as_ref() == Some(&owner) {
            return add_record(&mut self.sets, record);
        }
        self.put();
        if !self.again.is_empty()
            && let Some(sets) = self.again.get_mut(&owner)
        {
            return add_record(sets, record);
        }
        self.owner = Some(owner);
        add_record(&mut self.sets, record);
    }

    /// Puts the owner being gathered into the table, or aside when it is there already.
    fn put(&mut self) {
        let Some(owner) = self.owner.take() else {
            return;
        };
        match self.names.entry(owner) {
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(self.sets.drain(..).map(Building::done).collect());
            }
            std::collections::hash_map::Entry::Occupied(entry) => {
                // The same as reading the records one by one into the sets: the TTL is
                // the lowest of all, the data in the order read without duplicates.
                let mut sets: Vec<Building> = entry.get().iter().map(Building::from).collect();
                for set in self.sets.drain(..) {
                    for data in set.data {
                        add_data(&mut sets, set.record_type, set.ttl, data);
                    }
                }
                self.again.insert(entry.key().clone(), sets);
            }
        }
    }

    /// The table of every owner's sets (each set's data in the order read).
    fn done(mut self) -> Names {
        self.put();
        for (owner, sets) in self.again {
            self.names
                .insert(owner, sets.into_iter().map(Building::done).collect());
        }
        self.names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Name {
        Name::from_ascii("gto.example.com.").unwrap()
    }

    /// The byte keys sort as `Ord` does: RFC 4034 section 6.1's example, and labels that
    /// hold 0x00, 0x01 and 0xff bytes.
    #[test]
    fn canonical_keys_sort_like_the_canonical_order() {
        let labels: [&[&[u8]]; 16] = [
            &[b"example"],
            &[b"a", b"example"],
            &[b"yljkjljk", b"a", b"example"],
            &[b"Z", b"a", b"example"],
            &[b"zABC", b"a", b"EXAMPLE"],
            &[b"z", b"example"],
            &[b"\x01", b"z", b"example"],
            &[b"*", b"z", b"example"],
            &[b"\xc8", b"z", b"example"],
            &[b"\x00", b"z", b"example"],
            &[b"\x00\x00", b"z", b"example"],
            &[b"a\x00", b"z", b"example"],
            &[b"a", b"z", b"example"],
            &[b"ab", b"z", b"example"],
            &[b"a\x01", b"z", b"example"],
            &[],
        ];
        let mut names: Vec<LowerName> = labels
            .iter()
            .map(|l| {
                let mut name = Name::from_labels(l.iter().copied()).unwrap();
                name.set_fqdn(true);
                LowerName::from(name.to_lowercase())
            })
            .collect();
        names.reverse();
        let mut by_key: Vec<&LowerName> = names.iter().collect();
        sort_canonical(&mut by_key);
        let mut by_ord: Vec<&LowerName> = names.iter().collect();
        by_ord.sort();
        assert_eq!(by_key, by_ord);
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
        assert!(sets.iter().all(|s| s.ttl() == 600));
        assert_eq!(zone.negative_ttl(), 5);
    }

    /// An owner whose records come back after other owners' gets the sets it would get
    /// with all its records together, in the order read: duplicates dropped, the lowest
    /// TTL of all (a duplicate's too), types in the order first read.
    #[test]
    fn records_of_an_owner_that_comes_back_are_gathered_as_if_read_together() {
        let head = "$TTL 300\n@ SOA ns1 host 1 2 3 4 5\n@ NS ns1\nns1 A 192.0.2.1\n";
        let together = "a A 10.0.0.1\na TXT one\na A 10.0.0.2\na 100 A 10.0.0.1\na A 10.0.0.3\n\
                        a TXT two\nb A 10.0.1.1\nb A 10.0.1.2\nc AAAA ::1\n";
        let apart = "a A 10.0.0.1\na TXT one\nb A 10.0.1.1\na A 10.0.0.2\nc AAAA ::1\n\
                     a 100 A 10.0.0.1\nb A 10.0.1.2\na A 10.0.0.3\nb A 10.0.1.1\na TXT two\n";
        let zone = |body: &str| {
            parse(&format!("{head}{body}"), &origin(), PathBuf::from("z.zone")).unwrap()
        };
        let (together, apart) = (zone(together), zone(apart));
        assert_eq!(together.rrsets, apart.rrsets);
        let a = LowerName::from(Name::from_ascii("a.gto.example.com.").unwrap());
        let sets = &apart.rrsets[&a];
        assert_eq!(
            sets.iter()
                .map(|s| (s.record_type, s.ttl(), s.len()))
                .collect::<Vec<_>>(),
            [(RecordType::A, 100, 3), (RecordType::TXT, 300, 2)]
        );
        let addresses: Vec<String> = sets[0].rdata().map(|d| d.to_string()).collect();
        assert_eq!(addresses, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
    }

    /// A problem names the line where its set was first read (looked up only when there
    /// is a problem); of two sets, the later one.
    #[test]
    fn a_problem_names_the_line_its_set_was_first_read_on() {
        let text = "$TTL 60\n@ SOA ns1 host 1 2 3 4 5\n@ NS ns1\nns1 A 192.0.2.1\n\
                    x CNAME y\nz A 192.0.2.9\nx A 192.0.2.3\nx A 192.0.2.4\n\
                    sub NS ns.other.org.\nhidden.sub TXT hidden\n";
        let errors = parse(text, &origin(), PathBuf::from("z.zone")).unwrap_err();
        assert_eq!(
            errors
                .iter()
                .map(|e| (e.line, e.file.clone()))
                .collect::<Vec<_>>(),
            [(Some(7), PathBuf::from("z.zone"))],
            "{errors:?}"
        );
        let text = text.replace("x A 192.0.2.3\nx A 192.0.2.4\n", "");
        let zone = parse(&text, &origin(), PathBuf::from("z.zone")).unwrap();
        assert_eq!(
            zone.warnings().iter().map(|w| w.line).collect::<Vec<_>>(),
            [Some(8)],
            "{:?}",
            zone.warnings()
        );
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
