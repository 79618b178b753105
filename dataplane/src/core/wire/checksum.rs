//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Sums are kept in a `u64` accumulator; the ones-complement sum is
//! independent of the word width used (RFC 1071 §2(B)), so folding the
//! 64-bit sum to 16 bits gives the same result as summing 16-bit words.

/// Add `data`, taken as big-endian 16-bit words (an odd last byte is padded
/// with a zero byte), to the ones-complement accumulator `acc`.
///
/// 32-bit words are added into the 64-bit accumulator with plain (not
/// end-around) additions: carries collect in the upper 32 bits and `fold`
/// adds them back, which is the same ones-complement sum. No overflow is
/// possible: an IPv4 packet has at most 2^14 such words, each < 2^32, so
/// the sum stays below 2^46 plus the caller's small `acc`. Plain additions
/// of independent words let the compiler vectorise the loop.
#[inline]
pub fn add_bytes(acc: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(4);
    let mut sum: u64 = 0;
    for w in &mut words {
        sum += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let mut acc = add_u64(acc, sum);
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc = add_u64(acc, u64::from(u16::from_be_bytes([p[0], p[1]])));
    }
    if let [last] = pairs.remainder() {
        acc = add_u64(acc, u64::from(*last) << 8);
    }
    acc
}

/// Ones-complement addition of one 64-bit word.
#[inline]
pub fn add_u64(acc: u64, v: u64) -> u64 {
    let (s, carry) = acc.overflowing_add(v);
    s + u64::from(carry)
}

/// Fold a 64-bit ones-complement sum to 16 bits (not complemented).
#[inline]
pub fn fold(acc: u64) -> u16 {
    let mut s = (acc >> 32) + (acc & 0xffff_ffff);
    s = (s >> 32) + (s & 0xffff_ffff);
    s = (s >> 16) + (s & 0xffff);
    s = (s >> 16) + (s & 0xffff);
    s as u16
}

/// The checksum to store in a header: the complemented folded sum.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(add_bytes(0, data))
}

/// The TCP/UDP pseudo-header sum (source, destination, zero+protocol,
/// L4 length), not folded.
#[inline]
pub fn pseudo_header(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: u16) -> u64 {
    u64::from(u16::from_be_bytes([src[0], src[1]]))
        + u64::from(u16::from_be_bytes([src[2], src[3]]))
        + u64::from(u16::from_be_bytes([dst[0], dst[1]]))
        + u64::from(u16::from_be_bytes([dst[2], dst[3]]))
        + u64::from(proto)
        + u64::from(l4_len)
}

/// RFC 1624 eqn. 3: the new checksum after one 16-bit word of the covered
/// data changed from `old` to `new`: `HC' = ~(~HC + ~m + m')`.
#[inline]
pub fn update16(hc: u16, old: u16, new: u16) -> u16 {
    let acc = u64::from(!hc) + u64::from(!old) + u64::from(new);
    !fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum by the straightforward 16-bit reference sum.
    fn reference(data: &[u8]) -> u16 {
        !crate::core::pipeline::fixtures::ref_sum(&[data])
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add_bytes(0, &d)), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
    }

    #[test]
    fn wide_sum_matches_reference_for_all_lengths() {
        let data: Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(131) ^ 0xa5) as u8)
            .collect();
        for n in 0..data.len() {
            assert_eq!(checksum(&data[..n]), reference(&data[..n]), "len {n}");
        }
        let ones = [0xffu8; 64];
        assert_eq!(checksum(&ones), reference(&ones));
    }

    #[test]
    fn incremental_update_matches_recompute() {
        let mut hdr = [
            0x45, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 10, 88, 0, 2,
            10, 88, 0, 3,
        ];
        let c = checksum(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        for ttl in (0..=64u8).rev() {
            let old = u16::from_be_bytes([hdr[8], hdr[9]]);
            hdr[8] = ttl;
            let new = u16::from_be_bytes([hdr[8], hdr[9]]);
            let hc = u16::from_be_bytes([hdr[10], hdr[11]]);
            let upd = update16(hc, old, new);
            hdr[10..12].copy_from_slice(&upd.to_be_bytes());
            assert_eq!(fold(add_bytes(0, &hdr)), 0xffff, "ttl {ttl}");
        }
    }
}
