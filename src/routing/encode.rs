//! Encoding records as hickory-server writes them, once, at preparation: the tail of an
//! answer after its question ([`encode_tail`]) and the two wire forms of a GSLB address
//! record ([`wire_records`]). Below [`super::wire`] and [`super::signing`], which both
//! prepare bytes with it.

use hickory_proto::op::{EmitAndCount, MessageType, Metadata, OpCode, emit_message_parts};
use hickory_proto::rr::{Name, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

/// Pre-encoded bytes after the question, with the section counts they hold. The bytes
/// are shared: the NODATA tails of a zone's names are mostly equal (the SOA, its owner a
/// pointer into the question), and a big zone's index keeps one of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    pub(crate) bytes: std::sync::Arc<[u8]>,
    pub(crate) answers: u16,
    pub(crate) authorities: u16,
    pub(crate) additionals: u16,
}

/// An address record of a GSLB answer in its two wire forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRecord {
    /// As the first answer: the full owner name.
    pub first: Box<[u8]>,
    /// As a later answer: the owner name compressed to a pointer at the first answer.
    pub later: Box<[u8]>,
}

/// The question section hickory-server writes for a request: the raw bytes, with one
/// label pointer stored for the whole section (which never matches a later name).
struct RawQuestion<'a>(&'a [u8]);

impl EmitAndCount for RawQuestion<'_> {
    fn emit(&mut self, encoder: &mut BinEncoder<'_>) -> Result<usize, hickory_proto::ProtoError> {
        let start = encoder.offset();
        encoder.emit_vec(self.0)?;
        encoder.store_label_pointer(start, start + self.0.len());
        Ok(1)
    }
}

/// A question for `name` (the case does not matter: only its length shapes the tail).
pub(crate) fn question_bytes(name: &Name, qtype: RecordType) -> Vec<u8> {
    let mut bytes = name.to_lowercase().to_bytes().unwrap_or_default();
    bytes.extend_from_slice(&u16::from(qtype).to_be_bytes());
    bytes.extend_from_slice(&1u16.to_be_bytes());
    bytes
}

/// Encodes the sections after the question as hickory-server would for this question.
pub(crate) fn encode_tail(
    question: &[u8],
    answers: &[&Record],
    authorities: &[&Record],
    additionals: &[&Record],
) -> Option<Tail> {
    let mut buffer = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut buffer);
    let metadata = Metadata::new(0, MessageType::Response, OpCode::Query);
    let header = emit_message_parts(
        &metadata,
        &mut RawQuestion(question),
        &mut answers.iter().copied(),
        &mut authorities.iter().copied(),
        &mut additionals.iter().copied(),
        None,
        None,
        &mut encoder,
    )
    .ok()?;
    let start = 12 + question.len();
    Some(Tail {
        bytes: buffer.get(start..)?.into(),
        answers: header.counts.answers,
        authorities: header.counts.authorities,
        additionals: header.counts.additionals,
    })
}

/// The two wire forms of each record, for a GSLB name whose question is `question`.
pub fn wire_records(question: &[u8], records: &[Record]) -> Vec<WireRecord> {
    records
        .iter()
        .filter_map(|record| {
            let mut buffer = Vec::with_capacity(128);
            let mut encoder = BinEncoder::new(&mut buffer);
            encoder.emit_vec(&[0; 12]).ok()?;
            encoder.emit_vec(question).ok()?;
            encoder.store_label_pointer(12, 12 + question.len());
            let start = encoder.offset();
            record.emit(&mut encoder).ok()?;
            let middle = encoder.offset();
            record.emit(&mut encoder).ok()?;
            let end = encoder.offset();
            Some(WireRecord {
                first: buffer.get(start..middle)?.into(),
                later: buffer.get(middle..end)?.into(),
            })
        })
        .collect()
}

/// The question a GSLB name's records are prepared for (type A; only its length matters).
pub fn gslb_question(name: &Name) -> Vec<u8> {
    question_bytes(name, RecordType::A)
}
