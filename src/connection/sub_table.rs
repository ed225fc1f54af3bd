//! A connection's subscriptions by channel: a few in a vector, many in a
//! hash table.
//!
//! Most connections hold one or two channels. A hash table for one entry
//! allocates four buckets (~280 bytes per idle connection); a vector of
//! exact capacity holds it in one entry's size, and a linear search over at
//! most [`MAX_FEW`] short keys is as fast as hashing the channel name for
//! the per-delivery lookup. Past `MAX_FEW` the table becomes a hash table
//! (foldhash: the keys are the client's own channel names) and stays one.

use super::subscriptions::ChannelSub;
use std::{collections::HashMap, sync::Arc};

/// Most subscriptions kept in the vector.
const MAX_FEW: usize = 8;

type Map = HashMap<Arc<str>, ChannelSub, foldhash::fast::RandomState>;

pub(super) enum SubTable {
    Few(Vec<(Arc<str>, ChannelSub)>),
    Many(Map),
}

impl Default for SubTable {
    fn default() -> Self {
        Self::Few(Vec::new())
    }
}

impl SubTable {
    pub(super) fn len(&self) -> usize {
        match self {
            Self::Few(v) => v.len(),
            Self::Many(m) => m.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn contains_key(&self, channel: &str) -> bool {
        self.get(channel).is_some()
    }

    pub(super) fn get(&self, channel: &str) -> Option<&ChannelSub> {
        match self {
            Self::Few(v) => v.iter().find(|(c, _)| &**c == channel).map(|(_, s)| s),
            Self::Many(m) => m.get(channel),
        }
    }

    pub(super) fn get_mut(&mut self, channel: &str) -> Option<&mut ChannelSub> {
        match self {
            Self::Few(v) => v.iter_mut().find(|(c, _)| &**c == channel).map(|(_, s)| s),
            Self::Many(m) => m.get_mut(channel),
        }
    }

    /// Inserts or replaces; returns the replaced subscription.
    pub(super) fn insert(&mut self, channel: Arc<str>, sub: ChannelSub) -> Option<ChannelSub> {
        match self {
            Self::Few(v) => {
                if let Some((_, old)) = v.iter_mut().find(|(c, _)| *c == channel) {
                    return Some(std::mem::replace(old, sub));
                }
                if v.len() < MAX_FEW {
                    // Exact growth: a `push` on an empty vector would
                    // reserve four entries.
                    v.reserve_exact(1);
                    v.push((channel, sub));
                    return None;
                }
                let mut map: Map = v.drain(..).collect();
                map.insert(channel, sub);
                *self = Self::Many(map);
                None
            }
            Self::Many(m) => m.insert(channel, sub),
        }
    }

    pub(super) fn remove(&mut self, channel: &str) -> Option<ChannelSub> {
        match self {
            Self::Few(v) => {
                let i = v.iter().position(|(c, _)| &**c == channel)?;
                let (_, sub) = v.swap_remove(i);
                if v.is_empty() {
                    // An idle connection that left its channels keeps nothing.
                    *v = Vec::new();
                }
                Some(sub)
            }
            Self::Many(m) => m.remove(channel),
        }
    }

    pub(super) fn iter(&self) -> Iter<'_> {
        match self {
            Self::Few(v) => Iter::Few(v.iter()),
            Self::Many(m) => Iter::Many(m.iter()),
        }
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.iter().map(|(c, _)| c)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &ChannelSub> {
        self.iter().map(|(_, s)| s)
    }

    pub(super) fn values_mut(&mut self) -> Box<dyn Iterator<Item = &mut ChannelSub> + '_> {
        match self {
            Self::Few(v) => Box::new(v.iter_mut().map(|(_, s)| s)),
            Self::Many(m) => Box::new(m.values_mut()),
        }
    }
}

/// Iterator over `(channel, subscription)`.
pub(super) enum Iter<'a> {
    Few(std::slice::Iter<'a, (Arc<str>, ChannelSub)>),
    Many(std::collections::hash_map::Iter<'a, Arc<str>, ChannelSub>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a Arc<str>, &'a ChannelSub);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Few(it) => it.next().map(|(c, s)| (c, s)),
            Self::Many(it) => it.next(),
        }
    }
}

impl<'a> IntoIterator for &'a SubTable {
    type Item = (&'a Arc<str>, &'a ChannelSub);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(generation: u64) -> ChannelSub {
        ChannelSub {
            generation,
            position: None,
            buffer: None,
            recheck: false,
            retries: 0,
            held: false,
        }
    }

    #[test]
    fn a_few_then_many_then_back_to_none() {
        let mut t = SubTable::default();
        assert!(t.is_empty());
        t.insert("a".into(), sub(1));
        if let SubTable::Few(v) = &t {
            assert_eq!(v.capacity(), 1, "one channel, one entry");
        }
        assert_eq!(t.insert("a".into(), sub(2)).map(|s| s.generation), Some(1));
        for i in 0..20u64 {
            t.insert(format!("c{i}").into(), sub(i + 10));
        }
        assert!(matches!(t, SubTable::Many(_)));
        assert_eq!(t.len(), 21);
        assert_eq!(t.get("a").map(|s| s.generation), Some(2));
        assert_eq!(t.get("c19").map(|s| s.generation), Some(29));
        t.get_mut("c3").unwrap().retries = 7;
        assert_eq!(t.get("c3").unwrap().retries, 7);
        assert_eq!(t.iter().count(), 21);
        assert_eq!(t.values_mut().count(), 21);
        assert!(t.remove("a").is_some() && t.remove("a").is_none());
        assert!(!t.contains_key("a") && t.contains_key("c0"));

        let mut few = SubTable::default();
        few.insert("x".into(), sub(1));
        few.insert("y".into(), sub(2));
        assert_eq!(few.keys().count(), 2);
        assert!(few.remove("x").is_some());
        assert_eq!(few.values().map(|s| s.generation).collect::<Vec<_>>(), [2]);
        assert!(few.remove("y").is_some());
        if let SubTable::Few(v) = &few {
            assert_eq!(v.capacity(), 0, "nothing kept once empty");
        }
        assert!(few.get("y").is_none() && few.is_empty());
    }
}
