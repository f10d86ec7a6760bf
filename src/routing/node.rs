//! What a name in a zone is ([`Node`]): below the snapshot's table and the zones' signing,
//! which both read it.

/// What a name in a zone is.
#[derive(Debug)]
pub enum Node {
    /// A name that exists only because names below it do (RFC 4592 section 2.2.2):
    /// NODATA, never NXDOMAIN.
    EmptyNonTerminal,
    /// A GSLB name: answered from its pool (its node is in `ZoneTable::gslb`).
    Gslb,
    /// A name from the zone file: its sets, shared with the zone they were read into.
    Static(crate::zone::Shared),
}
