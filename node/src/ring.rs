//! Ring: how keys map to partitions, and partitions to the members that hold them.
//!
//! The key space is cut into a fixed power-of-two number of partitions, chosen when the cluster is
//! created. The hash is xxh3-64 with seed 0 (the `xxhash-rust` crate): specified, stable across versions
//! and platforms, so a key's partition never changes under a running cluster.
//!
//! Partitions are placed by consistent hashing: each member owns `vnodes` tokens on a 64-bit circle,
//! `token_i = xxh3_64(member_id ++ 0x00 ++ i as big-endian u32)`, and a partition's preference list is
//! the first N distinct members met clockwise from the partition's start. Adding a member can only
//! displace old members from the partitions its tokens land on, so data moves from old members to the
//! new one and never between two old members. This module is pure: no I/O, no clocks.

use std::collections::BTreeSet;

/// Default number of partitions of a new cluster.
pub const DEFAULT_PARTITIONS: u32 = 256;
/// Default number of tokens per member.
pub const DEFAULT_VNODES: u32 = 64;
/// Largest supported partition count (partitions are stored as big-endian `u16` prefixes).
pub const MAX_PARTITIONS: u32 = 1 << 16;

/// The partition that owns `key`: the top `log2(partitions)` bits of `xxh3_64(key)`.
///
/// `partitions` must be a power of two in `1..=MAX_PARTITIONS` (see [`validate_partitions`]).
pub fn partition_of(key: &[u8], partitions: u32) -> u16 {
    let bits = partitions.trailing_zeros();
    if bits == 0 {
        return 0;
    }
    (xxhash_rust::xxh3::xxh3_64(key) >> (64 - bits)) as u16
}

/// Checks that `partitions` is a power of two in `1..=MAX_PARTITIONS`.
pub fn validate_partitions(partitions: u32) -> Result<(), String> {
    if partitions.is_power_of_two() && partitions <= MAX_PARTITIONS {
        Ok(())
    } else {
        Err(format!(
            "partitions must be a power of two between 1 and {MAX_PARTITIONS}, got {partitions}"
        ))
    }
}

/// The position of a member's `index`-th token on the circle.
pub fn token(member_id: &str, index: u32) -> u64 {
    let mut bytes = Vec::with_capacity(member_id.len() + 5);
    bytes.extend_from_slice(member_id.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&index.to_be_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// The first position of `partition` on the circle.
fn partition_start(partition: u32, partitions: u32) -> u64 {
    let bits = partitions.trailing_zeros();
    if bits == 0 {
        0
    } else {
        u64::from(partition) << (64 - bits)
    }
}

/// The placement of every partition on a set of members: for each partition, its preference list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    members: Vec<String>,
    /// `owners[p]` = indexes into `members` in ring order from the partition: the first `replication`
    /// are its preference list, up to [`FALLBACKS`] more its fallbacks for sloppy quorum.
    owners: Vec<Vec<usize>>,
    replication: usize,
}

/// Members kept past the preference list of each partition, as sloppy-quorum fallbacks.
pub const FALLBACKS: usize = 8;

impl Ring {
    /// Places `partitions` partitions on `members` with `vnodes` tokens each and `replication` (N)
    /// replicas per partition (fewer when there are fewer members). Member order does not matter.
    pub fn new(members: &[String], partitions: u32, vnodes: u32, replication: u32) -> Ring {
        let mut members: Vec<String> = members.to_vec();
        members.sort();
        members.dedup();
        let mut tokens: Vec<(u64, usize)> = members
            .iter()
            .enumerate()
            .flat_map(|(m, id)| (0..vnodes).map(move |i| (token(id, i), m)))
            .collect();
        tokens.sort_unstable();
        let replication = (replication as usize).min(members.len());
        let wanted = (replication + FALLBACKS).min(members.len());
        let owners = (0..partitions)
            .map(|p| {
                let start = partition_start(p, partitions);
                let first = tokens.partition_point(|(t, _)| *t < start);
                let mut list = Vec::with_capacity(wanted);
                for offset in 0..tokens.len() {
                    if list.len() == wanted {
                        break;
                    }
                    let (_, m) = tokens[(first + offset) % tokens.len()];
                    if !list.contains(&m) {
                        list.push(m);
                    }
                }
                list
            })
            .collect();
        Ring {
            members,
            owners,
            replication,
        }
    }

    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        self.owners.len() as u32
    }

    /// The members, sorted.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// The members that hold `partition`, in preference order.
    pub fn preference_list(&self, partition: u16) -> impl Iterator<Item = &str> {
        self.owners
            .get(usize::from(partition))
            .into_iter()
            .flatten()
            .take(self.replication)
            .map(|&m| self.members[m].as_str())
    }

    /// The members after `partition`'s preference list in ring order: where a write goes, with a
    /// hint, when a replica is unreachable (sloppy quorum).
    pub fn fallbacks(&self, partition: u16) -> impl Iterator<Item = &str> {
        self.owners
            .get(usize::from(partition))
            .into_iter()
            .flatten()
            .skip(self.replication)
            .map(|&m| self.members[m].as_str())
    }

    /// Whether `member` is in `partition`'s preference list.
    pub fn owns(&self, member: &str, partition: u16) -> bool {
        self.preference_list(partition).any(|m| m == member)
    }

    /// The partitions (with their replicas) whose owner sets differ between `self` and `next`.
    pub fn diff(&self, next: &Ring) -> Vec<PartitionMove> {
        (0..self.owners.len().min(next.owners.len()))
            .filter_map(|p| {
                let partition = p as u16;
                let old: BTreeSet<&str> = self.preference_list(partition).collect();
                let new: BTreeSet<&str> = next.preference_list(partition).collect();
                (old != new).then(|| PartitionMove {
                    partition,
                    gained: new.difference(&old).map(|s| s.to_string()).collect(),
                    lost: old.difference(&new).map(|s| s.to_string()).collect(),
                })
            })
            .collect()
    }
}

/// How one partition's owners change between two rings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMove {
    /// The partition.
    pub partition: u16,
    /// Members that must receive the partition.
    pub gained: Vec<String>,
    /// Members that no longer own it.
    pub lost: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(prefix: &str, count: usize) -> Vec<String> {
        (0..count).map(|i| format!("{prefix}-{i}")).collect()
    }

    fn load(ring: &Ring) -> Vec<usize> {
        let mut counts = vec![0; ring.members().len()];
        for p in 0..ring.partitions() {
            for id in ring.preference_list(p as u16) {
                if let Some(m) = ring.members().iter().position(|x| x == id) {
                    counts[m] += 1;
                }
            }
        }
        counts
    }

    #[test]
    fn partition_hash_is_pinned() {
        // A changed hash would silently move every key: these values are part of the on-disk format.
        // Reference value from the Python `xxhash` package (xxh3_64_intdigest(b"hello")).
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b"hello"), 0x9555_e855_5c62_dcfd);
        assert_eq!(partition_of(b"hello", 256), 0x95);
        assert_eq!(partition_of(b"anything", 1), 0);
    }

    #[test]
    fn bad_partition_counts_are_refused() {
        assert!(validate_partitions(0).is_err());
        assert!(validate_partitions(100).is_err());
        assert!(validate_partitions(1 << 17).is_err());
        assert!(validate_partitions(256).is_ok());
    }

    #[test]
    fn a_lone_member_owns_everything() {
        let ring = Ring::new(&names("kv", 1), 256, 64, 3);
        assert!((0..256).all(|p| ring.preference_list(p).eq(["kv-0"])));
    }

    #[test]
    fn fallbacks_are_the_other_members_in_ring_order() {
        let ring = Ring::new(&names("kv", 6), 256, 64, 3);
        for p in 0..256u16 {
            let list: Vec<&str> = ring.preference_list(p).collect();
            let fallbacks: Vec<&str> = ring.fallbacks(p).collect();
            assert_eq!(list.len(), 3);
            assert_eq!(fallbacks.len(), 3, "six members: three fallbacks");
            assert!(fallbacks.iter().all(|f| !list.contains(f)));
            assert!(ring.owns(list[0], p) && !ring.owns(fallbacks[0], p));
        }
        let crowded = Ring::new(&names("kv", 20), 256, 64, 3);
        assert_eq!(crowded.fallbacks(0).count(), FALLBACKS);
        assert_eq!(
            Ring::new(&names("kv", 3), 256, 64, 3).fallbacks(0).count(),
            0
        );
    }

    #[test]
    fn a_statefulset_of_ten_is_balanced() {
        let ring = Ring::new(&names("kv", 10), 256, 64, 3);
        let fair = 256.0 * 3.0 / 10.0;
        let busiest = *load(&ring).iter().max().unwrap_or(&0) as f64;
        assert!(
            busiest <= 1.25 * fair,
            "busiest owns {busiest}, fair {fair}"
        );
    }

    /// `ratio` of 300 clusters whose 8-letter names come from a fixed seed: how many exceed `bound`,
    /// and the worst.
    fn over_seeded_names(seed: u64, bound: f64, ratio: impl Fn(&str) -> f64) -> (usize, f64) {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let ratios: Vec<f64> = (0..300)
            .map(|_| {
                let prefix: String = (0..8).map(|_| rng.random_range('a'..='z')).collect();
                ratio(&prefix)
            })
            .collect();
        let over = ratios.iter().filter(|&&r| r > bound).count();
        (over, ratios.into_iter().fold(0.0, f64::max))
    }

    /// Ownership with random tokens is a random variable: with 64 vnodes, 256 partitions and N = 3 the
    /// busiest of 10 members exceeds 1.25 fair shares for about 0.7% of cluster names (measured over
    /// 1,500 random names; worst 1.30). This checks the distribution over 300 names drawn from a fixed
    /// seed rather than pretending the bound holds for every name.
    #[test]
    fn the_busiest_of_ten_members_owns_at_most_1_25_fair_shares_for_almost_every_name() {
        let fair = 256.0 * 3.0 / 10.0;
        let (over, worst) = over_seeded_names(7, 1.25, |prefix| {
            let ring = Ring::new(&names(prefix, 10), 256, 64, 3);
            *load(&ring).iter().max().unwrap_or(&0) as f64 / fair
        });
        assert!(over <= 6, "{over} of 300 clusters over 1.25 fair shares");
        assert!(worst <= 1.4, "worst cluster owns {worst} fair shares");
    }

    /// Like balance, the data an 11th member takes is a random variable: over 1,500 random names it
    /// stayed within 1.3x the ideal 1/11 of partition-replicas in all but a few cases (worst seen
    /// 1.30). Checked over 300 names from a fixed seed.
    #[test]
    fn adding_an_eleventh_member_moves_about_the_ideal_share_for_almost_every_name() {
        let ideal = 256.0 * 3.0 / 11.0;
        let (over, worst) = over_seeded_names(11, 1.3, |prefix| {
            let before = Ring::new(&names(prefix, 10), 256, 64, 3);
            let after = Ring::new(&names(prefix, 11), 256, 64, 3);
            let moved: usize = before.diff(&after).iter().map(|m| m.gained.len()).sum();
            moved as f64 / ideal
        });
        assert!(
            over <= 6,
            "{over} of 300 clusters moved over 1.3x the ideal"
        );
        assert!(worst <= 1.45, "worst cluster moved {worst}x the ideal");
    }

    proptest! {
        #[test]
        fn partition_is_in_range(key in prop::collection::vec(any::<u8>(), 1..64), bits in 0u32..=16) {
            let partitions = 1u32 << bits;
            prop_assert!(u32::from(partition_of(&key, partitions)) < partitions);
        }

        #[test]
        fn every_partition_has_min_n_members_distinct_owners(
            count in 1usize..12, n in 1u32..6, prefix in "[a-z]{1,8}"
        ) {
            let ring = Ring::new(&names(&prefix, count), 256, 64, n);
            for p in 0..256u16 {
                let owners: Vec<&str> = ring.preference_list(p).collect();
                let distinct: BTreeSet<&str> = owners.iter().copied().collect();
                prop_assert_eq!(owners.len(), (n as usize).min(count));
                prop_assert_eq!(distinct.len(), owners.len());
            }
        }

        #[test]
        fn adding_an_eleventh_member_moves_data_only_to_it(prefix in "[a-z]{1,12}") {
            let before = Ring::new(&names(&prefix, 10), 256, 64, 3);
            let after = Ring::new(&names(&prefix, 11), 256, 64, 3);
            let newcomer = format!("{prefix}-10");
            for m in before.diff(&after) {
                prop_assert_eq!(&m.gained, &vec![newcomer.clone()], "partition {} moved between old members", m.partition);
            }
        }
    }
}
