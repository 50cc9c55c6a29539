//! Where a repository should live: weighted rendezvous (highest-random-weight) hashing of a
//! repository key over the active nodes.
//!
//! [`rank`] orders the members for one key: the first is the desired owner, the second the
//! natural handoff target if the first leaves. Adding or removing a node moves only the keys
//! whose first choice changes: the joining node's share, or the leaving node's keys. The
//! metadata store records where a repository *is*; this crate only says where it *should* be.
//!
//! This crate is pure: no I/O, no clock, no randomness beyond a fixed hash, so every node and
//! front computes the same answer from the same members.

#![warn(missing_docs)]

/// A node that takes part in placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// The node's id.
    pub id: u64,
    /// Relative share of keys; 100 is the usual share, 0 takes none.
    pub weight: u32,
}

/// A stable 64-bit key for a repository name (FNV-1a). Names, not ids, are hashed so that the
/// owner is known before the metadata store hands out the id.
pub fn key_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The members ordered by preference for `key`: desired owner first. Members of weight 0 are
/// left out. Ties (astronomically rare) break by node id, so the order is total.
pub fn rank(members: &[Member], key: u64) -> Vec<u64> {
    let mut scored: Vec<(f64, u64)> = members
        .iter()
        .filter(|member| member.weight > 0)
        .map(|member| (score(member, key), member.id))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, id)| id).collect()
}

/// The desired owner of `key`, if any member has weight.
pub fn owner(members: &[Member], key: u64) -> Option<u64> {
    rank(members, key).into_iter().next()
}

/// Weighted rendezvous score: `-weight / ln(u)` with `u` uniform in (0, 1) drawn from the
/// hash of (key, node). Larger wins; a node's expected share is proportional to its weight.
fn score(member: &Member, key: u64) -> f64 {
    let hash = mix(key ^ mix(member.id.wrapping_add(0x9e37_79b9_7f4a_7c15)));
    // 53 random bits into (0, 1): never exactly 0 or 1, so ln(u) is finite and negative.
    let unit = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(member.weight) / unit.ln()
}

/// splitmix64's finaliser: a fixed, well-mixed 64-bit permutation.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: u64) -> Vec<Member> {
        (1..=n).map(|id| Member { id, weight: 100 }).collect()
    }

    #[test]
    fn adding_a_fourth_node_moves_about_a_quarter_all_to_it() {
        let keys: Vec<u64> = (0..1000).map(|i| key_of(&format!("owner/repo-{i}"))).collect();
        let before: Vec<u64> = keys.iter().map(|&k| owner(&members(3), k).unwrap()).collect();
        let after: Vec<u64> = keys.iter().map(|&k| owner(&members(4), k).unwrap()).collect();
        let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
        assert!((200..=300).contains(&moved.len()), "moved {}", moved.len());
        assert!(moved.iter().all(|(_, &a)| a == 4), "a key moved between old nodes");
        let mut counts = [0usize; 5];
        after.iter().for_each(|&id| counts[id as usize] += 1);
        let max = *counts.iter().max().unwrap() as f64;
        assert!(max <= 1.15 * 250.0, "unbalanced: {counts:?}");
    }

    #[test]
    fn weight_zero_takes_nothing_and_weights_shift_shares() {
        let mut nodes = members(2);
        nodes[1].weight = 0;
        assert!((0..100).all(|k| owner(&nodes, key_of(&k.to_string())) == Some(1)));
        nodes[1].weight = 300;
        let to_heavy = (0..4000)
            .filter(|k| owner(&nodes, key_of(&k.to_string())) == Some(2))
            .count();
        assert!((2800..=3200).contains(&to_heavy), "heavy node got {to_heavy} of 4000");
    }

    #[test]
    fn rank_is_deterministic_and_total() {
        let nodes = members(5);
        let key = key_of("acme/app");
        let first = rank(&nodes, key);
        assert_eq!(first, rank(&nodes, key));
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, vec![1, 2, 3, 4, 5]);
        assert_eq!(owner(&[], key), None);
    }
}
