//! Which key each operation touches: uniform, or YCSB's scrambled zipfian.

use clap::ValueEnum;
use rand::RngExt;
use rand::rngs::SmallRng;
use serde::Serialize;

/// The YCSB zipfian constant (theta).
pub(crate) const ZIPFIAN_THETA: f64 = 0.99;

/// Key popularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// YCSB's scrambled zipfian (theta 0.99): a few hot keys, spread over the key space.
    Zipfian,
}

/// The bench key of index `i`.
pub(crate) fn key_name(i: u64) -> String {
    format!("bench-{i:06}")
}

/// YCSB's `ZipfianGenerator` (Gray et al., "Quickly generating billion-record synthetic databases", SIGMOD
/// 1994): item 0 is the most popular, item `i` has a probability proportional to `1 / (i + 1)^theta`.
#[derive(Debug, Clone)]
pub(crate) struct Zipfian {
    /// Number of items: samples are within `0..items`.
    items: u64,
    /// `1 / (1 - theta)`.
    alpha: f64,
    /// `zeta(items, theta)`.
    zetan: f64,
    /// `(1 - (2 / items)^(1 - theta)) / (1 - zeta(2, theta) / zetan)`.
    eta: f64,
    /// `1 + 0.5^theta`: the cumulative weight of items 0 and 1 (over zetan).
    two_items: f64,
}

impl Zipfian {
    /// A generator over `0..items` (`items` ≥ 1), computing `zeta(items, theta)` in O(items). (The bench
    /// itself uses [`ScrambledZipfian`].)
    #[cfg(test)]
    fn new(items: u64, theta: f64) -> Zipfian {
        Zipfian::with_zetan(items, theta, zeta(items, theta))
    }

    /// A generator over `0..items` with a precomputed `zeta(items, theta)`.
    pub(crate) fn with_zetan(items: u64, theta: f64, zetan: f64) -> Zipfian {
        let items = items.max(1);
        let zeta2 = zeta(2, theta);
        let eta = if items <= 2 {
            // Samples below two never reach the formula that uses eta.
            0.0
        } else {
            (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan)
        };
        Zipfian {
            items,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta,
            two_items: 1.0 + 0.5f64.powf(theta),
        }
    }

    /// The next sample, within `0..items`.
    pub(crate) fn sample(&self, rng: &mut impl RngExt) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < self.two_items {
            return 1.min(self.items - 1);
        }
        let spread = self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha);
        // `as` saturates (and maps NaN to 0); clamp to the range against rounding at u → 1.
        (spread as u64).min(self.items - 1)
    }
}

/// `sum_{i=1..=n} 1 / i^theta`.
fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// YCSB's `ScrambledZipfianGenerator`: a zipfian over ten billion items (theta 0.99, its zeta precomputed
/// as YCSB does), hashed with FNV-1a 64 onto `0..items`, so the popular keys are spread over the key
/// space instead of being the first ones.
#[derive(Debug, Clone)]
pub(crate) struct ScrambledZipfian {
    /// Number of keys.
    items: u64,
    /// The underlying generator over [`ScrambledZipfian::ITEM_COUNT`] items.
    inner: Zipfian,
}

impl ScrambledZipfian {
    /// Items of the underlying generator (YCSB's `ITEM_COUNT`).
    const ITEM_COUNT: u64 = 10_000_000_000;
    /// `zeta(ITEM_COUNT, 0.99)`, YCSB's `ZETAN`.
    const ZETAN: f64 = 26.469_028_201_783_02;

    /// A generator over `0..items` (`items` ≥ 1) with theta 0.99.
    pub(crate) fn new(items: u64) -> ScrambledZipfian {
        ScrambledZipfian {
            items: items.max(1),
            inner: Zipfian::with_zetan(Self::ITEM_COUNT, ZIPFIAN_THETA, Self::ZETAN),
        }
    }

    /// The next sample, within `0..items`.
    pub(crate) fn sample(&self, rng: &mut impl RngExt) -> u64 {
        fnv1a_64(self.inner.sample(rng)) % self.items
    }

    /// The key the underlying generator's most popular item lands on.
    #[cfg(test)]
    fn hottest(&self) -> u64 {
        fnv1a_64(0) % self.items
    }
}

/// YCSB's `Utils.fnvhash64`: FNV-1a over the 8 little-endian bytes of `value`, made non-negative as a
/// Java `long` (`Math.abs`).
pub(crate) fn fnv1a_64(value: u64) -> u64 {
    const OFFSET_BASIS: u64 = 0xCBF2_9CE4_8422_2325;
    const PRIME: u64 = 1_099_511_628_211;
    let mut hash = OFFSET_BASIS;
    for byte in value.to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    // Math.abs on a Java long; Long.MIN_VALUE stays itself, whose bits are 1 << 63.
    (hash as i64).unsigned_abs()
}

/// Picks the key of each operation.
#[derive(Debug, Clone)]
pub(super) enum KeyChooser {
    /// Uniform over `0..keys`.
    Uniform(u64),
    /// Scrambled zipfian over the keys.
    Zipfian(ScrambledZipfian),
}

impl KeyChooser {
    /// A chooser for `keys` keys.
    pub(super) fn new(distribution: KeyDistribution, keys: u64) -> KeyChooser {
        match distribution {
            KeyDistribution::Uniform => KeyChooser::Uniform(keys.max(1)),
            KeyDistribution::Zipfian => KeyChooser::Zipfian(ScrambledZipfian::new(keys)),
        }
    }

    /// The next key index.
    pub(super) fn next(&self, rng: &mut SmallRng) -> u64 {
        match self {
            KeyChooser::Uniform(keys) => rng.random_range(0..*keys),
            KeyChooser::Zipfian(zipf) => zipf.sample(rng),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn zipfian_samples_stay_in_range_and_favour_key_zero() {
        let mut rng = SmallRng::seed_from_u64(7);
        for items in [1u64, 2, 3, 10, 1000] {
            let zipf = Zipfian::new(items, ZIPFIAN_THETA);
            let mut counts = vec![0u64; items as usize];
            for _ in 0..200_000 {
                let sample = zipf.sample(&mut rng);
                assert!(sample < items, "{sample} out of 0..{items}");
                counts[sample as usize] += 1;
            }
            let max = counts.iter().copied().max().unwrap();
            assert_eq!(counts[0], max, "{items} items: {counts:?}");
            if items >= 10 {
                // Popularity falls with the rank.
                assert!(counts[0] > counts[1] && counts[1] > counts[9], "{counts:?}");
            }
        }
    }

    #[test]
    fn zipfian_probabilities_match_theory() {
        let items = 1000u64;
        let zipf = Zipfian::new(items, ZIPFIAN_THETA);
        let mut rng = SmallRng::seed_from_u64(11);
        let draws = 400_000u64;
        let mut counts = vec![0u64; items as usize];
        for _ in 0..draws {
            counts[zipf.sample(&mut rng) as usize] += 1;
        }
        // P(0) = 1 / zeta(1000, 0.99) ≈ 0.134; P(1) = 2^-0.99 / zeta ≈ 0.067.
        let zetan = zeta(items, ZIPFIAN_THETA);
        for rank in [0usize, 1] {
            let expected = 1.0 / ((rank + 1) as f64).powf(ZIPFIAN_THETA) / zetan;
            let observed = counts[rank] as f64 / draws as f64;
            assert!(
                (observed - expected).abs() < 0.01,
                "rank {rank}: {observed} vs {expected}"
            );
        }
        // The top 10% of the keys get most of the load; uniform would give them 10%.
        let top: u64 = counts[..100].iter().sum();
        assert!(top as f64 / draws as f64 > 0.6, "{top}");
    }

    #[test]
    fn scrambled_zipfian_is_skewed_but_spread() {
        let keys = 10_000u64;
        let zipf = ScrambledZipfian::new(keys);
        let mut rng = SmallRng::seed_from_u64(3);
        let draws = 200_000u64;
        let mut counts = vec![0u64; keys as usize];
        for _ in 0..draws {
            let sample = zipf.sample(&mut rng);
            assert!(sample < keys);
            counts[sample as usize] += 1;
        }
        let hottest = counts
            .iter()
            .enumerate()
            .max_by_key(|(_, c)| **c)
            .map(|(i, _)| i as u64)
            .unwrap();
        assert_eq!(hottest, zipf.hottest());
        assert_ne!(hottest, 0, "scrambling moves the hot key away from index 0");
        // Far above the uniform 1/keys share: about 1/zeta(1e10) ≈ 3.8% of the draws.
        let share = counts[hottest as usize] as f64 / draws as f64;
        assert!(share > 0.03 && share < 0.05, "{share}");
        // And the popular keys are not clustered at the start of the key space.
        let first_tenth: u64 = counts[..1000].iter().sum();
        assert!((first_tenth as f64 / draws as f64) < 0.3, "{first_tenth}");
        let single = ScrambledZipfian::new(1);
        assert_eq!(single.sample(&mut rng), 0);
    }

    #[test]
    fn fnv_matches_ycsb() {
        // YCSB's Utils.fnvhash64(0) and (1), from its Java implementation.
        let basis = 0xCBF2_9CE4_8422_2325u64;
        let mut expected = basis;
        for _ in 0..8 {
            expected = expected.wrapping_mul(1_099_511_628_211);
        }
        assert_eq!(fnv1a_64(0), (expected as i64).unsigned_abs());
        assert_ne!(fnv1a_64(1), fnv1a_64(0));
        assert!(fnv1a_64(u64::MAX) < 1 << 63 || fnv1a_64(u64::MAX) == 1 << 63);
    }

    #[test]
    fn uniform_keys_cover_the_range() {
        let chooser = KeyChooser::new(KeyDistribution::Uniform, 10);
        let mut rng = SmallRng::seed_from_u64(5);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            seen[chooser.next(&mut rng) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(key_name(1), "bench-000001");
        assert_eq!(key_name(1_234_567), "bench-1234567");
    }
}
