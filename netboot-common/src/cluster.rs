//! Which server of a cluster answers a client: RFC 3074 load balancing, shared by the XDP
//! program and the agent so both always agree.
//!
//! A client falls in one of 256 buckets, the RFC 3074 Pearson hash of its hardware address;
//! the `BUCKET_OWNER` map says for each bucket whether this server answers it. The key is
//! chaddr, not option 61 as RFC 3074 prefers: one machine presents different client ids
//! through its boot chain (none from the PXE ROM, 01:mac from iPXE) and must stay on one
//! server for all of them, and chaddr is at a fixed offset the XDP program reads anyway.

/// The mixing table of RFC 3074 §6 (a permutation of 0..=255), as Kea's load balancing uses.
pub const PEARSON_TABLE: [u8; 256] = [
    251, 175, 119, 215, 81, 14, 79, 191, 103, 49, 181, 143, 186, 157, 0, 232, 31, 32, 55, 60, 152, 58, 17, 237, 174, 70,
    160, 144, 220, 90, 57, 223, 59, 3, 18, 140, 111, 166, 203, 196, 134, 243, 124, 95, 222, 179, 197, 65, 180, 48, 36, 15,
    107, 46, 233, 130, 165, 30, 123, 161, 209, 23, 97, 16, 40, 91, 219, 61, 100, 10, 210, 109, 250, 127, 22, 138, 29, 108,
    244, 67, 207, 9, 178, 204, 74, 98, 126, 249, 167, 116, 34, 77, 193, 200, 121, 5, 20, 113, 71, 35, 128, 13, 182, 94, 25,
    226, 227, 199, 75, 27, 41, 245, 230, 224, 43, 225, 177, 26, 155, 150, 212, 142, 218, 115, 241, 73, 88, 105, 39, 114,
    62, 255, 192, 201, 145, 214, 168, 158, 221, 148, 154, 122, 12, 84, 82, 163, 44, 139, 228, 236, 205, 242, 217, 11, 187,
    146, 159, 64, 86, 239, 195, 42, 106, 198, 118, 112, 184, 172, 87, 2, 173, 117, 176, 229, 247, 253, 137, 185, 99, 164,
    102, 147, 45, 66, 231, 52, 141, 211, 194, 206, 246, 238, 56, 110, 78, 248, 63, 240, 189, 93, 92, 51, 53, 183, 19, 171,
    72, 50, 33, 104, 101, 69, 8, 252, 83, 120, 76, 135, 85, 54, 202, 125, 188, 213, 96, 235, 136, 208, 162, 129, 190, 132,
    156, 38, 47, 1, 7, 254, 24, 4, 216, 131, 89, 21, 28, 133, 37, 153, 149, 80, 170, 68, 6, 169, 234, 151,
];

/// Buckets of the load balancing.
pub const BUCKETS: u32 = 256;

/// `BUCKET_OWNER` values. Zero (a new map) means "this server": one server alone answers all.
pub const OWNER_SELF: u8 = 0;
pub const OWNER_OTHER: u8 = 1;

/// RFC 3074 §6 `loadb_p_hash`: the hash starts at the key's length and takes the key's bytes
/// from the last to the first.
#[inline(always)]
pub fn pearson(key: &[u8]) -> u8 {
    let mut hash = key.len() as u8;
    let mut i = key.len();
    while i > 0 {
        i -= 1;
        hash = PEARSON_TABLE[(hash ^ key[i]) as usize];
    }
    hash
}

/// The bucket of a client by its hardware address (unrolled for the XDP program).
#[inline(always)]
pub fn bucket(chaddr: &[u8; 6]) -> u8 {
    let t = &PEARSON_TABLE;
    let mut h = 6u8;
    h = t[(h ^ chaddr[5]) as usize];
    h = t[(h ^ chaddr[4]) as usize];
    h = t[(h ^ chaddr[3]) as usize];
    h = t[(h ^ chaddr[2]) as usize];
    h = t[(h ^ chaddr[1]) as usize];
    t[(h ^ chaddr[0]) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_a_permutation() {
        let mut seen = [false; 256];
        for v in PEARSON_TABLE {
            assert!(!seen[v as usize], "{v} twice");
            seen[v as usize] = true;
        }
    }

    #[test]
    fn bucket_is_the_rfc_hash_of_the_six_bytes() {
        for m in [[0u8; 6], [0xff; 6], [0x52, 0x54, 0x00, 0x12, 0x34, 0x56], [2, 0, 0, 0, 0, 1]] {
            assert_eq!(bucket(&m), pearson(&m));
        }
        // Worked by hand from RFC 3074 §6: hash = len = 0 for the empty key; one byte 0x00:
        // T[1 ^ 0] = T[1] = 175.
        assert_eq!(pearson(&[]), 0);
        assert_eq!(pearson(&[0]), 175);
        assert_eq!(pearson(&[1]), 251); // T[1 ^ 1] = T[0]
    }
}
