//! Shards: one suite split over N CI machines (`--shard K/N`), each running
//! its part with its own workers and database; `dbfork report merge` joins
//! their reports. Every shard collects the whole suite and computes the same
//! split from the same inputs (the collected tests, `--dist`, the timings
//! file), so no test is run twice or left out as long as every shard sees the
//! same timings (commit `.dbfork/timings.json`, or restore it from one cache
//! key for all shards). Each report carries a fingerprint of the split, and
//! `merge` refuses reports whose splits differ.
//!
//! The split is by measured durations: units of work (`--dist`) longest first,
//! each to the shard with the least work so far (LPT), ties to the lowest
//! shard; without timings every test counts 1 s, which splits by count.

use dbfork_protocol::TestItem;

use crate::schedule::group_units;
use crate::Dist;

/// This machine's part: shard `index` (1-based, as the flag says it) of `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub total: usize,
}

/// The CI systems whose parallel jobs say which one they are, with the
/// variables of the job's index and of the count, and whether the index
/// counts from 1.
const CI_SYSTEMS: &[(&str, &str, &str, bool)] = &[
    (
        "GitLab CI (parallel:)",
        "CI_NODE_INDEX",
        "CI_NODE_TOTAL",
        true,
    ),
    (
        "CircleCI (parallelism:)",
        "CIRCLE_NODE_INDEX",
        "CIRCLE_NODE_TOTAL",
        false,
    ),
    (
        "Buildkite (parallelism:)",
        "BUILDKITE_PARALLEL_JOB",
        "BUILDKITE_PARALLEL_JOB_COUNT",
        false,
    ),
];

impl Shard {
    /// `K/N` (1 <= K <= N), or `auto`: from the CI system's variables
    /// (read through `env`).
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Shard, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("auto") {
            return Shard::from_ci(env);
        }
        Shard::fraction(text)
    }

    /// `K/N`.
    fn fraction(text: &str) -> Result<Shard, String> {
        let parsed = text.split_once('/').and_then(|(k, n)| {
            let (k, n) = (
                k.trim().parse::<usize>().ok()?,
                n.trim().parse::<usize>().ok()?,
            );
            (1..=n).contains(&k).then_some(Shard { index: k, total: n })
        });
        parsed.ok_or_else(|| {
            format!("`{text}` is not K/N with 1 <= K <= N (e.g. 2/4: the second of four shards), nor `auto`")
        })
    }

    /// The shard a CI system's parallel job is (GitLab, CircleCI, Buildkite).
    fn from_ci(env: impl Fn(&str) -> Option<String>) -> Result<Shard, String> {
        for (system, index_var, total_var, one_based) in CI_SYSTEMS {
            let Some(index) = env(index_var) else {
                continue;
            };
            let total = env(total_var).unwrap_or_default();
            let numbers = (index.trim().parse::<usize>(), total.trim().parse::<usize>());
            let (Ok(index), Ok(total)) = numbers else {
                return Err(format!(
                    "{system}: {index_var}=`{index}` and {total_var}=`{total}` are not the numbers of a parallel job"
                ));
            };
            let index = if *one_based { index } else { index + 1 };
            return Shard::fraction(&format!("{index}/{total}"))
                .map_err(|why| format!("{system}: {index_var} and {total_var} give {why}"));
        }
        let known: Vec<String> = CI_SYSTEMS
            .iter()
            .map(|(system, index, total, _)| format!("{index} and {total} ({system})"))
            .collect();
        Err(format!(
            "`auto` found no CI job index: none of {} is set. On GitHub Actions, Kubernetes or elsewhere give the shard yourself, e.g. --shard ${{{{ matrix.shard }}}}/4",
            known.join(", ")
        ))
    }

    pub fn label(&self) -> String {
        format!("{}/{}", self.index, self.total)
    }
}

/// The shard (0-based) of every test: units of work (`dist`) longest first
/// by `estimate`, each to the least loaded shard.
pub fn split(
    tests: &[TestItem],
    dist: Dist,
    total: usize,
    estimate: impl Fn(&str) -> f64,
) -> Vec<usize> {
    let estimates: Vec<f64> = tests.iter().map(|t| estimate(&t.id).max(0.0)).collect();
    let mut units = group_units(tests, dist, &estimates, |_| true);
    // Longest first; ties in collection order (the sort is stable).
    units.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    let mut load = vec![0.0f64; total.max(1)];
    let mut shard_of = vec![0; tests.len()];
    for unit in units {
        let least = (0..load.len())
            .min_by(|&a, &b| load[a].total_cmp(&load[b]))
            .unwrap_or(0);
        load[least] += unit.seconds;
        for index in unit.tests {
            shard_of[index] = least;
        }
    }
    shard_of
}

/// A fingerprint of a split: the same for every shard that split the same
/// tests the same way.
pub fn fingerprint(tests: &[TestItem], shard_of: &[usize], total: usize) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(total as u64).to_le_bytes());
    for (test, shard) in tests.iter().zip(shard_of) {
        hasher.update(test.id.as_bytes());
        hasher.update(&[0]);
        hasher.update(&(*shard as u64).to_le_bytes());
    }
    hasher.finalize().to_hex()[..16].to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn items(files: &[(&str, usize)]) -> Vec<TestItem> {
        files
            .iter()
            .flat_map(|(file, n)| {
                (0..*n).map(move |i| TestItem {
                    id: format!("{file}::test_{i}"),
                    file: file.to_string(),
                    class: None,
                    group: 0,
                })
            })
            .collect()
    }

    #[test]
    fn shards_parse_from_the_flag_and_from_ci() {
        let none = |_: &str| None;
        assert_eq!(Shard::parse("2/4", none), Ok(Shard { index: 2, total: 4 }));
        assert_eq!(
            Shard::parse(" 1 / 1 ", none),
            Ok(Shard { index: 1, total: 1 })
        );
        for bad in ["0/4", "5/4", "2", "a/b", "2/0", ""] {
            let why = Shard::parse(bad, none).unwrap_err();
            assert!(why.contains("is not K/N"), "{bad}: {why}");
        }
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            let map: HashMap<&str, &str> = pairs.iter().copied().collect();
            move |name: &str| map.get(name).map(|v| v.to_string())
        };
        // GitLab counts from 1, CircleCI and Buildkite from 0.
        let gitlab = vars(&[("CI_NODE_INDEX", "3"), ("CI_NODE_TOTAL", "3")]);
        assert_eq!(
            Shard::parse("auto", gitlab),
            Ok(Shard { index: 3, total: 3 })
        );
        let circle = vars(&[("CIRCLE_NODE_INDEX", "0"), ("CIRCLE_NODE_TOTAL", "2")]);
        assert_eq!(
            Shard::parse("AUTO", circle),
            Ok(Shard { index: 1, total: 2 })
        );
        let buildkite = vars(&[
            ("BUILDKITE_PARALLEL_JOB", "4"),
            ("BUILDKITE_PARALLEL_JOB_COUNT", "5"),
        ]);
        assert_eq!(
            Shard::parse("auto", buildkite),
            Ok(Shard { index: 5, total: 5 })
        );
        let why = Shard::parse("auto", none).unwrap_err();
        assert!(
            why.contains("CI_NODE_INDEX") && why.contains("matrix.shard"),
            "{why}"
        );
        let broken = vars(&[("CI_NODE_INDEX", "2"), ("CI_NODE_TOTAL", "x")]);
        let why = Shard::parse("auto", broken).unwrap_err();
        assert!(why.contains("GitLab") && why.contains("`x`"), "{why}");
    }

    #[test]
    fn the_split_balances_measured_durations() {
        let tests = items(&[("a.py", 6)]);
        // One long test and five short ones: the long one alone on a shard.
        let seconds = |id: &str| if id.ends_with("_0") { 5.0 } else { 1.0 };
        assert_eq!(split(&tests, Dist::Test, 2, seconds), [0, 1, 1, 1, 1, 1]);
        // Without timings, by count.
        let count = split(&tests, Dist::Test, 4, |_| 1.0);
        let per_shard = |shard| count.iter().filter(|s| **s == shard).count();
        assert_eq!((0..4).map(per_shard).collect::<Vec<_>>(), [2, 2, 1, 1]);
    }

    #[test]
    fn a_unit_of_work_stays_on_one_shard() {
        let tests = items(&[("a.py", 3), ("b.py", 2), ("c.py", 1)]);
        let shard_of = split(&tests, Dist::File, 2, |_| 1.0);
        for file in ["a.py", "b.py", "c.py"] {
            let shards: Vec<usize> = tests
                .iter()
                .zip(&shard_of)
                .filter(|(t, _)| t.file == file)
                .map(|(_, s)| *s)
                .collect();
            assert!(
                shards.windows(2).all(|w| w[0] == w[1]),
                "{file}: {shards:?}"
            );
        }
        assert_eq!(shard_of, [0, 0, 0, 1, 1, 1]);
    }

    proptest! {
        /// Every test in exactly one shard, always the same one for the
        /// same inputs, and no shard more than one unit above the fair share.
        #[test]
        fn every_test_lands_in_one_shard(
            durations in proptest::collection::vec(0.0f64..10.0, 0..60),
            total in 1usize..6,
        ) {
            let tests = items(&[("t.py", durations.len())]);
            let estimate = |id: &str| {
                let i: usize = id.rsplit('_').next().unwrap().parse().unwrap();
                durations[i]
            };
            let shard_of = split(&tests, Dist::Test, total, estimate);
            prop_assert_eq!(shard_of.len(), tests.len());
            prop_assert!(shard_of.iter().all(|s| *s < total));
            prop_assert_eq!(&shard_of, &split(&tests, Dist::Test, total, estimate));
            let mut load = vec![0.0; total];
            for (i, s) in shard_of.iter().enumerate() {
                load[*s] += durations[i];
            }
            let fair = durations.iter().sum::<f64>() / total as f64;
            let longest = durations.iter().copied().fold(0.0, f64::max);
            prop_assert!(load.iter().all(|l| *l <= fair + longest + 1e-9), "{load:?}");
            prop_assert_eq!(
                fingerprint(&tests, &shard_of, total),
                fingerprint(&tests, &split(&tests, Dist::Test, total, estimate), total)
            );
        }
    }
}
