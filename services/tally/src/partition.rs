//! Polls split across tally instances: each poll has exactly one owner.
//!
//! Instance `index` of `count` owns the polls whose id hashes to `index`
//! (FNV-1a, stable across builds and machines). Reads at readers without a
//! poll are owned by the partition of the pseudo-poll `_`.

use std::fmt;
use std::str::FromStr;

/// This instance's share of the polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub index: u32,
    pub count: u32,
}

impl Default for Partition {
    fn default() -> Self {
        Partition { index: 0, count: 1 }
    }
}

impl Partition {
    /// Whether this instance decides reads for `poll_id` ("" or "_" = no poll).
    pub fn owns(&self, poll_id: &str) -> bool {
        let key = if poll_id.is_empty() { "_" } else { poll_id };
        fnv1a(key.as_bytes()) % self.count as u64 == self.index as u64
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Partition {
    type Err = String;

    /// `INDEX/COUNT`, e.g. `0/3`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("partition {s:?} is not INDEX/COUNT with 0 <= INDEX < COUNT, e.g. 0/3");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Partition { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_poll_has_exactly_one_owner() {
        for count in 1..6 {
            for poll in ["a", "b", "drink", "talk", "_", "", "x-1"] {
                let owners = (0..count)
                    .filter(|&index| Partition { index, count }.owns(poll))
                    .count();
                assert_eq!(owners, 1, "{poll} with {count} partitions");
            }
        }
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            "1/3".parse::<Partition>(),
            Ok(Partition { index: 1, count: 3 })
        );
        for bad in ["3/3", "1", "a/b", "0/0", "-1/2"] {
            assert!(bad.parse::<Partition>().is_err(), "{bad}");
        }
    }
}
