//! Job assignment: which committee members measure which job, from the epoch seed alone.
//!
//! seed = BLAKE3 of the input certificate's header (the signed bytes every member agrees on;
//! the signature set differs between members' copies, so it cannot be part of the seed). Job `j`
//! goes to the `r` members with the smallest BLAKE3(seed ‖ j ‖ key).

use super::messages::CertHeader;
use crate::ids::PeerKey;

/// The epoch seed derived from the freeze certificate's header.
pub fn epoch_seed(input_header: &CertHeader) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("datanet/epoch/seed/v1");
    h.update(&input_header.to_bytes());
    *h.finalize().as_bytes()
}

/// Reporters per job: 5 when the committee has at least 5 members, else 3 (or all, if fewer),
/// and never more than the manifest's `protocol.replication` (`max`).
pub fn replication(members: usize, max: usize) -> usize {
    (if members >= 5 { 5 } else { members.min(3) }).min(max.max(1))
}

/// Reports a job needs to count: a majority of its `r` reporters.
pub fn min_reports(r: usize) -> usize {
    r / 2 + 1
}

fn rank(seed: &[u8; 32], job: u32, key: &PeerKey) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("datanet/epoch/assign/v1");
    h.update(seed);
    h.update(&job.to_le_bytes());
    h.update(key.as_bytes());
    *h.finalize().as_bytes()
}

/// Member indexes assigned to `job` (`r` of them), in rank order.
pub fn assignees(seed: &[u8; 32], job: u32, members: &[PeerKey], r: usize) -> Vec<usize> {
    let mut ranked: Vec<([u8; 32], usize)> = members.iter().enumerate().map(|(i, k)| (rank(seed, job, k), i)).collect();
    ranked.sort();
    ranked.truncate(r);
    ranked.into_iter().map(|(_, i)| i).collect()
}

/// Whether member `index` is assigned to `job`.
pub fn is_assigned(seed: &[u8; 32], job: u32, members: &[PeerKey], r: usize, index: usize) -> bool {
    assignees(seed, job, members, r).contains(&index)
}

/// The jobs member `index` measures.
pub fn jobs_of(seed: &[u8; 32], job_count: u32, members: &[PeerKey], r: usize, index: usize) -> Vec<u32> {
    (0..job_count).filter(|&j| is_assigned(seed, j, members, r, index)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every job gets exactly r distinct members and the assignment is a pure function of the seed.
    #[test]
    fn r_distinct_members_per_job() {
        let members: Vec<PeerKey> = (0..7u8).map(|i| PeerKey([i; 32])).collect();
        for job in 0..50 {
            let a = assignees(&[1; 32], job, &members, replication(7, 5));
            assert_eq!(a.len(), 5);
            let mut d = a.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 5);
            assert_eq!(a, assignees(&[1; 32], job, &members, 5));
        }
        assert_eq!(replication(4, 5), 3);
        assert_eq!(replication(7, 3), 3);
        assert_eq!(min_reports(replication(4, 5)), 2);
        assert_eq!(min_reports(replication(7, 5)), 3);
    }
}
