//! `--shard i/n`: which items this process owns when a pipeline runs as `n` independent copies
//! (Kubernetes Indexed Jobs). The assignment hashes the item's key with XXH3, which is specified
//! and stable across versions and machines, unlike `std`'s hasher.

use std::str::FromStr;

/// One of `count` disjoint parts of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This part's number, `0 <= index < count`.
    pub index: u64,
    /// How many parts the input is split into.
    pub count: u64,
}

impl Shard {
    /// The whole input.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// What part-file names carry so that concurrent shards never write the same name: empty for
    /// the whole input, `s{index}of{count}-` otherwise.
    pub fn part_tag(self) -> String {
        match self {
            Shard { count: 1, .. } => String::new(),
            s => format!("s{}of{}-", s.index, s.count),
        }
    }

    /// True when the item with this key belongs to this shard.
    pub fn owns(&self, key: &str) -> bool {
        self.count <= 1 || xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % self.count == self.index
    }
}

/// A shard that is not `INDEX/COUNT` with `0 <= INDEX < COUNT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shard {0:?} is not INDEX/COUNT with 0 <= INDEX < COUNT, e.g. 0/4")]
pub struct BadShard(pub String);

impl FromStr for Shard {
    type Err = BadShard;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadShard(s.to_owned());
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u64 = i.trim().parse().map_err(|_| bad())?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_reject_out_of_range() {
        assert_eq!(
            "2/5".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 5 }
        );
        for bad in ["5/5", "1/0", "x/2", "3", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn every_key_belongs_to_exactly_one_shard() {
        let shards: Vec<Shard> = (0..7).map(|index| Shard { index, count: 7 }).collect();
        for k in 0..10_000 {
            let key = format!("item-{k}");
            assert_eq!(shards.iter().filter(|s| s.owns(&key)).count(), 1);
        }
    }
}
