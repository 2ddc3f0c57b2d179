//! The Maglev lookup table (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, section 3.4, Pseudocode 1).
//!
//! Each replica `i` has a preference list over the `M` table entries, the
//! permutation `permutation[i][j] = (offset_i + j * skip_i) mod M` with
//! `offset_i = h1(name_i) mod M` and `skip_i = h2(name_i) mod (M - 1) + 1`
//! (`M` prime, so every skip is coprime with it and the list visits every
//! entry once). The replicas take turns, in a fixed order, claiming the
//! next entry of their list that is still empty, until the table is full:
//! every replica gets `M / N` entries give or take one, and a change of the
//! replica set moves few entries (the paper's figure 12).
//!
//! Every host must build the same table from the same replicas, so that a
//! flow that reaches any host goes to the same replica: the hashes are
//! SipHash-2-4 with fixed keys (a specified function, not `std`'s
//! `DefaultHasher`, whose algorithm may change between releases), and the
//! replicas are sorted by name before they take turns, so the order the
//! caller gives them in does not matter.
//!
//! Weights (optional): a replica of weight `w` claims `w` entries per turn
//! instead of one, so its share is `w / sum(w)`; weight 0 leaves it out.
//! With every weight 1 this is exactly the paper's pseudocode.

use anyhow::{bail, Result};
use dataplane_common::NO_REPLICA;

/// SipHash key of `h1` (the offset).
const H1_KEY: (u64, u64) = (0x6d61_676c_6576_2d68, 0x312d_6f66_6673_6574);
/// SipHash key of `h2` (the skip).
const H2_KEY: (u64, u64) = (0x6d61_676c_6576_2d68, 0x322d_736b_6970_2d2d);

/// SipHash-2-4 (Aumasson and Bernstein, 2012) of `data` under key
/// `(k0, k1)`, as in the reference implementation (`siphash24.c`).
pub fn siphash24(k0: u64, k1: u64, data: &[u8]) -> u64 {
    let mut v0 = k0 ^ 0x736f_6d65_7073_6575;
    let mut v1 = k1 ^ 0x646f_7261_6e64_6f6d;
    let mut v2 = k0 ^ 0x6c79_6765_6e65_7261;
    let mut v3 = k1 ^ 0x7465_6462_7974_6573;
    let round = |v0: &mut u64, v1: &mut u64, v2: &mut u64, v3: &mut u64| {
        *v0 = v0.wrapping_add(*v1);
        *v1 = v1.rotate_left(13);
        *v1 ^= *v0;
        *v0 = v0.rotate_left(32);
        *v2 = v2.wrapping_add(*v3);
        *v3 = v3.rotate_left(16);
        *v3 ^= *v2;
        *v0 = v0.wrapping_add(*v3);
        *v3 = v3.rotate_left(21);
        *v3 ^= *v0;
        *v2 = v2.wrapping_add(*v1);
        *v1 = v1.rotate_left(17);
        *v1 ^= *v2;
        *v2 = v2.rotate_left(32);
    };
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let m = u64::from_le_bytes(c.try_into().expect("8-byte chunk"));
        v3 ^= m;
        round(&mut v0, &mut v1, &mut v2, &mut v3);
        round(&mut v0, &mut v1, &mut v2, &mut v3);
        v0 ^= m;
    }
    let mut last = [0u8; 8];
    let rest = chunks.remainder();
    last[..rest.len()].copy_from_slice(rest);
    last[7] = data.len() as u8;
    let m = u64::from_le_bytes(last);
    v3 ^= m;
    round(&mut v0, &mut v1, &mut v2, &mut v3);
    round(&mut v0, &mut v1, &mut v2, &mut v3);
    v0 ^= m;
    v2 ^= 0xff;
    for _ in 0..4 {
        round(&mut v0, &mut v1, &mut v2, &mut v3);
    }
    v0 ^ v1 ^ v2 ^ v3
}

/// `(offset, skip)` of the replica called `name` in a table of size `m`.
pub fn offset_skip(name: &str, m: u32) -> (u32, u32) {
    let m64 = u64::from(m);
    let offset = siphash24(H1_KEY.0, H1_KEY.1, name.as_bytes()) % m64;
    let skip = siphash24(H2_KEY.0, H2_KEY.1, name.as_bytes()) % (m64 - 1) + 1;
    (offset as u32, skip as u32)
}

fn is_prime(m: u32) -> bool {
    m >= 2
        && (2..m)
            .take_while(|d| d * d <= m)
            .all(|d| !m.is_multiple_of(d))
}

/// The lookup table of size `m` for `replicas` (names, all weight 1):
/// entry `e` is the index in `replicas` of the replica it goes to, or
/// [`NO_REPLICA`] everywhere if there is none. Names must be unique.
pub fn build<S: AsRef<str>>(replicas: &[S], m: u32) -> Result<Vec<u32>> {
    let weighted: Vec<(&str, u32)> = replicas.iter().map(|r| (r.as_ref(), 1)).collect();
    build_weighted(&weighted, m)
}

/// [`build`] with a weight per replica (turns per round; 0 leaves the
/// replica out of the table).
pub fn build_weighted(replicas: &[(&str, u32)], m: u32) -> Result<Vec<u32>> {
    if !is_prime(m) {
        bail!("the Maglev table size {m} is not a prime");
    }
    // The turn order: by name, whatever order the caller used.
    let mut order: Vec<usize> = (0..replicas.len()).filter(|&i| replicas[i].1 > 0).collect();
    order.sort_by(|&a, &b| replicas[a].0.cmp(replicas[b].0));
    if let Some(w) = order
        .windows(2)
        .find(|w| replicas[w[0]].0 == replicas[w[1]].0)
    {
        bail!("replica name {:?} is given twice", replicas[w[0]].0);
    }
    let weight_sum: u64 = order.iter().map(|&i| u64::from(replicas[i].1)).sum();
    let mut table = vec![NO_REPLICA; m as usize];
    if order.is_empty() {
        return Ok(table);
    }
    if order.len() as u64 > u64::from(m) {
        bail!(
            "{} replicas do not fit a Maglev table of {m} entries",
            order.len()
        );
    }
    // Per replica: (offset, skip, next = the j of its next preference),
    // the current candidate kept as `(offset + next * skip) mod m`
    // incrementally instead of a materialised permutation.
    let mut state: Vec<(u32, u32)> = order
        .iter()
        .map(|&i| offset_skip(replicas[i].0, m))
        .collect();
    let mut filled: u64 = 0;
    let total = u64::from(m);
    debug_assert!(weight_sum > 0);
    'fill: loop {
        for (k, &i) in order.iter().enumerate() {
            for _ in 0..replicas[i].1 {
                let (cand, skip) = &mut state[k];
                // Its next preference that is still empty; the permutation
                // visits every entry, and at least one is empty here.
                while table[*cand as usize] != NO_REPLICA {
                    *cand = ((u64::from(*cand) + u64::from(*skip)) % total) as u32;
                }
                table[*cand as usize] = i as u32;
                *cand = ((u64::from(*cand) + u64::from(*skip)) % total) as u32;
                filled += 1;
                if filled == total {
                    break 'fill;
                }
            }
        }
    }
    Ok(table)
}

/// How long building a table of size `m` for `n` replicas takes (for the
/// benchmark: the issue asks for the rebuild time of 1,000 replicas); the
/// median of `reps` builds.
pub fn time_build(n: usize, m: u32, reps: usize) -> Result<std::time::Duration> {
    let names: Vec<String> = (0..n).map(|i| format!("task-{i:06}")).collect();
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t = std::time::Instant::now();
        let table = build(&names, m)?;
        times.push(t.elapsed());
        std::hint::black_box(table);
    }
    times.sort();
    Ok(times[times.len() / 2])
}

#[cfg(test)]
mod tests {
    use dataplane_common::MAGLEV_M;

    use super::*;

    /// The paper's Pseudocode 1, written out literally: permutation
    /// materialised, `next[i]` per replica, `entry[c] = -1` for empty.
    fn reference(names: &[&str], m: u32) -> Vec<i64> {
        let mut sorted: Vec<&str> = names.to_vec();
        sorted.sort();
        let n = sorted.len();
        let m = m as usize;
        let permutation: Vec<Vec<usize>> = sorted
            .iter()
            .map(|name| {
                let offset = (siphash24(H1_KEY.0, H1_KEY.1, name.as_bytes()) % m as u64) as usize;
                let skip =
                    (siphash24(H2_KEY.0, H2_KEY.1, name.as_bytes()) % (m as u64 - 1) + 1) as usize;
                (0..m).map(|j| (offset + j * skip) % m).collect()
            })
            .collect();
        let mut next = vec![0usize; n];
        let mut entry = vec![-1i64; m];
        let mut filled = 0;
        if n == 0 {
            return entry;
        }
        loop {
            for i in 0..n {
                let mut c = permutation[i][next[i]];
                while entry[c] >= 0 {
                    next[i] += 1;
                    c = permutation[i][next[i]];
                }
                entry[c] = i as i64;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    return entry;
                }
            }
        }
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("task-{i:04}")).collect()
    }

    /// The table with names instead of indexes.
    fn by_name<'a>(table: &[u32], names: &'a [String]) -> Vec<Option<&'a str>> {
        table
            .iter()
            .map(|&i| (i != NO_REPLICA).then(|| names[i as usize].as_str()))
            .collect()
    }

    /// Entries whose replica differs between two tables.
    fn moved(a: &[Option<&str>], b: &[Option<&str>]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn siphash_matches_the_reference_vectors() {
        // siphash24.c's vectors: key 00..0f, message 00..(len-1).
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let msg: Vec<u8> = (0..64).collect();
        assert_eq!(siphash24(k0, k1, &msg[..0]), 0x726f_db47_dd0e_0e31);
        assert_eq!(siphash24(k0, k1, &msg[..1]), 0x74f8_39c5_93dc_67fd);
        assert_eq!(siphash24(k0, k1, &msg[..8]), 0x93f5_f579_9a93_2462);
        // The paper's appendix example: 15 bytes.
        assert_eq!(siphash24(k0, k1, &msg[..15]), 0xa129_ca61_49be_45e5);
        assert_eq!(siphash24(k0, k1, &msg[..63]), 0x958a_324c_eb06_4572);
    }

    #[test]
    fn matches_the_papers_pseudocode() {
        for (n, m) in [
            (1, 7),
            (3, 7),
            (5, 13),
            (7, 251),
            (10, MAGLEV_M),
            (100, MAGLEV_M),
        ] {
            let ns = names(n);
            let refs: Vec<&str> = ns.iter().map(String::as_str).collect();
            let got = build(&ns, m).unwrap();
            let want = reference(&refs, m);
            // `reference` indexes the sorted names; `names` are sorted already.
            let got: Vec<i64> = got.iter().map(|&i| i64::from(i)).collect();
            assert_eq!(got, want, "n={n} m={m}");
        }
    }

    #[test]
    fn the_papers_table_size_7_example_shape() {
        // Three replicas over 7 entries: every entry taken, shares 3/2/2.
        let t = build(&["b0", "b1", "b2"], 7).unwrap();
        let mut counts = [0; 3];
        for &i in &t {
            counts[i as usize] += 1;
        }
        counts.sort();
        assert_eq!(counts, [2, 2, 3], "{t:?}");
    }

    #[test]
    fn each_replica_gets_its_share() {
        for n in [2, 3, 5, 10, 100, 1000] {
            let t = build(&names(n), MAGLEV_M).unwrap();
            let mut counts = vec![0u32; n];
            for &i in &t {
                counts[i as usize] += 1;
            }
            let even = MAGLEV_M / n as u32;
            // Round-robin filling: each replica has floor or ceil of M/N.
            for c in &counts {
                assert!((even..=even + 1).contains(c), "n={n}: {counts:?}");
            }
        }
    }

    #[test]
    fn removing_a_replica_moves_little_else() {
        // Maglev trades a little disruption for balance (the paper's figure
        // 12). Here: the entries that move without having belonged to the
        // removed replica stay under 1 % of the table (measured 0.4-0.55 %)
        // for each of the 10 replicas removed in turn.
        let all = names(10);
        let before = build(&all, MAGLEV_M).unwrap();
        let before = by_name(&before, &all);
        let mut worst = 0.0f64;
        for gone in 0..all.len() {
            let rest: Vec<String> = all
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != gone)
                .map(|(_, n)| n.clone())
                .collect();
            let after = build(&rest, MAGLEV_M).unwrap();
            let after = by_name(&after, &rest);
            let own = before
                .iter()
                .filter(|e| **e == Some(all[gone].as_str()))
                .count();
            let total = moved(&before, &after);
            assert!(total >= own, "every entry of the removed replica moves");
            let extra = (total - own) as f64 / f64::from(MAGLEV_M);
            worst = worst.max(extra);
        }
        assert!(worst < 0.01, "extra churn {worst:.4} of the table");
    }

    #[test]
    fn adding_a_replica_moves_about_its_share() {
        // Measured: 3 -> 4 moves the ideal 1/4 plus under 0.1 % of the
        // table, 10 -> 11 0.5 % more than 1/11, 50 -> 51 1 % more than 1/51
        // (the extra grows as M/N shrinks, as in the paper's figure 12).
        for n in [3, 10, 50] {
            let old = names(n);
            let new = names(n + 1);
            let a = build(&old, MAGLEV_M).unwrap();
            let b = build(&new, MAGLEV_M).unwrap();
            let frac = moved(&by_name(&a, &old), &by_name(&b, &new)) as f64 / f64::from(MAGLEV_M);
            let ideal = 1.0 / (n + 1) as f64;
            assert!(
                frac >= ideal * 0.99 && frac - ideal < 0.015,
                "n={n}: {frac:.4} moved, ideal {ideal:.4}"
            );
        }
    }

    #[test]
    fn the_order_given_does_not_matter() {
        let ns = names(20);
        let a = build(&ns, MAGLEV_M).unwrap();
        let mut rev = ns.clone();
        rev.reverse();
        rev.swap(3, 11);
        let b = build(&rev, MAGLEV_M).unwrap();
        assert_eq!(by_name(&a, &ns), by_name(&b, &rev));
    }

    #[test]
    fn no_replica_fills_the_table_with_none() {
        let t = build::<&str>(&[], MAGLEV_M).unwrap();
        assert_eq!(t.len(), MAGLEV_M as usize);
        assert!(t.iter().all(|&e| e == NO_REPLICA));
        // Weight 0 everywhere is no replica too.
        let t = build_weighted(&[("a", 0), ("b", 0)], 7).unwrap();
        assert_eq!(t, vec![NO_REPLICA; 7]);
    }

    #[test]
    fn weights_set_the_shares() {
        let t = build_weighted(&[("a", 1), ("b", 3), ("c", 0), ("d", 2)], MAGLEV_M).unwrap();
        let mut counts = [0f64; 4];
        for &i in &t {
            counts[i as usize] += 1.0;
        }
        let m = f64::from(MAGLEV_M);
        assert_eq!(counts[2], 0.0, "weight 0 is left out");
        for (i, w) in [(0, 1.0), (1, 3.0), (3, 2.0)] {
            let share = counts[i] / m;
            assert!((share - w / 6.0).abs() < 0.001, "{counts:?}");
        }
        // All weights 1 is the unweighted table.
        assert_eq!(
            build_weighted(&[("x", 1), ("y", 1)], 13).unwrap(),
            build(&["x", "y"], 13).unwrap()
        );
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(build(&["a"], 16_380).is_err(), "not a prime");
        assert!(build(&["a", "a"], 7).is_err(), "a name twice");
        assert!(build(&names(8), 7).is_err(), "more replicas than entries");
    }

    #[test]
    fn the_indexes_are_the_callers() {
        let t = build(&["zeta", "alpha"], 7).unwrap();
        let mut seen = [false; 2];
        for &i in &t {
            seen[i as usize] = true;
        }
        assert_eq!(seen, [true, true]);
    }

    /// `cargo test -p dataplane-user --lib maglev -- --ignored --nocapture`
    #[test]
    #[ignore = "timing, for the benchmark"]
    fn rebuild_time_for_1000_replicas() {
        let t = time_build(1000, MAGLEV_M, 21).unwrap();
        println!("maglev build, 1000 replicas, M={MAGLEV_M}: {t:?} (median of 21)");
    }
}
