//! What a name in a zone is ([`Node`]), and every name of a prepared zone ([`Nodes`]):
//! below the snapshot's table and the zones' signing, which both read it.

use std::sync::Arc;

use hickory_proto::rr::LowerName;

use crate::zone::{Names, RrSet, Shared};

/// What a name in a zone is.
#[derive(Debug, Clone, Copy)]
pub enum Node<'a> {
    /// A name that exists only because names below it do (RFC 4592 section 2.2.2):
    /// NODATA, never NXDOMAIN.
    EmptyNonTerminal,
    /// A GSLB name: answered from its pool (its node is in `ZoneTable::gslb`).
    Gslb,
    /// A name with records: its sets.
    Static(&'a [RrSet]),
}

/// A name a preparation adds to the zone file's, or holds otherwise than the file.
#[derive(Debug, Clone)]
enum Added {
    EmptyNonTerminal,
    Gslb,
    Static(Shared),
}

impl Added {
    fn node(&self) -> Node<'_> {
        match self {
            Added::EmptyNonTerminal => Node::EmptyNonTerminal,
            Added::Gslb => Node::Gslb,
            Added::Static(sets) => Node::Static(sets),
        }
    }
}

/// Every name that exists in a prepared zone: the zone file's names with their sets,
/// shared with the loaded zone (a big zone's names are not copied, nor hashed into a
/// second table), and the names the preparation adds or changes, looked up first: the
/// apex (with its SOA, and keys when signed), the GSLB names and the empty non-terminals.
#[derive(Debug, Clone, Default)]
pub struct Nodes {
    file: Arc<Names>,
    added: std::collections::HashMap<LowerName, Added, foldhash::fast::RandomState>,
}

impl Nodes {
    /// The names of a zone file.
    pub fn of_file(file: Arc<Names>) -> Self {
        Self {
            file,
            added: Default::default(),
        }
    }

    /// What `name` is, if it exists.
    #[inline]
    pub fn get(&self, name: &LowerName) -> Option<Node<'_>> {
        self.get_key_value(name).map(|(_, node)| node)
    }

    /// The name as the zone holds it, and what it is.
    #[inline]
    pub fn get_key_value(&self, name: &LowerName) -> Option<(&LowerName, Node<'_>)> {
        if !self.added.is_empty()
            && let Some((key, added)) = self.added.get_key_value(name)
        {
            return Some((key, added.node()));
        }
        self.file
            .get_key_value(name)
            .map(|(key, sets)| (key, Node::Static(sets)))
    }

    /// True when `name` exists.
    pub fn contains_key(&self, name: &LowerName) -> bool {
        self.added.contains_key(name) || self.file.contains_key(name)
    }

    /// Every name with what it is (in no particular order).
    pub fn iter(&self) -> impl Iterator<Item = (&LowerName, Node<'_>)> {
        self.added
            .iter()
            .map(|(name, added)| (name, added.node()))
            .chain(
                self.file
                    .iter()
                    .filter(|(name, _)| !self.added.contains_key(*name))
                    .map(|(name, sets)| (name, Node::Static(sets))),
            )
    }

    /// How many names exist.
    pub fn len(&self) -> usize {
        self.file.len()
            + self
                .added
                .keys()
                .filter(|name| !self.file.contains_key(*name))
                .count()
    }

    /// True when no name exists.
    pub fn is_empty(&self) -> bool {
        self.file.is_empty() && self.added.is_empty()
    }

    /// Makes `name` a GSLB name.
    pub fn set_gslb(&mut self, name: LowerName) {
        self.added.insert(name, Added::Gslb);
    }

    /// Makes `name` an empty non-terminal unless it exists.
    pub fn add_empty_non_terminal(&mut self, name: LowerName) {
        if !self.file.contains_key(&name) {
            self.added.entry(name).or_insert(Added::EmptyNonTerminal);
        }
    }

    /// Changes the sets of `name` (a copy of the file's: the zone keeps its own), which
    /// gets records if it had none.
    pub fn edit_sets(&mut self, name: &LowerName, edit: impl FnOnce(&mut Vec<RrSet>)) {
        let mut sets = match self.get(name) {
            Some(Node::Static(sets)) => sets.to_vec(),
            _ => Vec::new(),
        };
        edit(&mut sets);
        self.added.insert(name.clone(), Added::Static(sets.into()));
    }
}
