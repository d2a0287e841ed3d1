//! The Content-MD5 and the signed SHA-256 of one body in one pass, their rounds stitched.
//!
//! A PBS upload declares both digests, and each is a chain of dependent steps: MD5 is bound by
//! its adds and rotates in the general-purpose registers (~1.55–1.6 CPU-s/GiB here), SHA-256
//! by the SHA-NI round instruction in the vector unit (~0.7). Hashed one after the other they
//! cost the sum (2.24–2.40); with four MD5 steps written between each four SHA-256 rounds of
//! the same 64-byte block, the core runs both chains side by side and SHA-256 adds only
//! 0.2–0.4 to MD5 (`cargo bench -p filters --bench digests`: 1.81–2.00 CPU-s/GiB for both).
//!
//! x86-64 with the SHA extensions only (AMD since Zen, Intel since Ice Lake / Goldmont):
//! [`Md5Sha256::new`] says `None` elsewhere and the caller hashes the two apart. The MD5 steps
//! are inline assembly so that their order is the one written here (the compiler's own
//! schedule put the round function early in the chain: ~25 % slower); SHA-256 is the usual
//! SHA-NI sequence in intrinsics. Correctness: the tests compare with `md-5` and `sha2` every
//! length from 0 to 300 bytes, whole and cut in two at every point (every 7th above 140),
//! random bodies cut at random points, and 5 MiB bodies in uneven pieces.
#![allow(unsafe_code)] // inline assembly and SHA-NI intrinsics, each call behind a feature check

/// MD5 and SHA-256 of one stream.
#[derive(Clone)]
pub struct Md5Sha256 {
    md5: [u32; 4],
    sha256: [u32; 8],
    /// The partial block: `len % 64` bytes.
    tail: [u8; 64],
    len: u64,
}

const MD5_INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
const SHA256_INIT: [u32; 8] = [0x6a09_e667, 0xbb67_ae85, 0x3c6e_f372, 0xa54f_f53a, 0x510e_527f, 0x9b05_688c, 0x1f83_d9ab, 0x5be0_cd19];

impl Md5Sha256 {
    /// `None` where the CPU cannot run the stitched kernel.
    pub fn new() -> Option<Self> {
        kernel::available().then_some(Self { md5: MD5_INIT, sha256: SHA256_INIT, tail: [0; 64], len: 0 })
    }

    pub fn update(&mut self, mut data: &[u8]) {
        let buffered = (self.len % 64) as usize;
        self.len += data.len() as u64;
        if buffered > 0 {
            let take = data.len().min(64 - buffered);
            self.tail[buffered..buffered + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            if buffered + take < 64 {
                return;
            }
            let block = self.tail;
            self.blocks(&[block]);
        }
        let (blocks, rest) = data.as_chunks::<64>();
        self.blocks(blocks);
        self.tail[..rest.len()].copy_from_slice(rest);
    }

    fn blocks(&mut self, blocks: &[[u8; 64]]) {
        // SAFETY: `new` checked that the CPU has what the kernel uses.
        unsafe { kernel::both(&mut self.md5, &mut self.sha256, blocks) }
    }

    /// (MD5, SHA-256) of everything fed.
    pub fn finalize(mut self) -> ([u8; 16], [u8; 32]) {
        // Both pad alike: 0x80, zeros, the bit length in the last 8 bytes of the last block
        // (little-endian for MD5, big-endian for SHA-256), in one block or two.
        let used = (self.len % 64) as usize;
        let mut pad = [[0u8; 64]; 2];
        pad[0][..used].copy_from_slice(&self.tail[..used]);
        pad[0][used] = 0x80;
        let n = if used < 56 { 1 } else { 2 };
        let bits = self.len.wrapping_mul(8);
        let mut md5_pad = pad;
        md5_pad[n - 1][56..].copy_from_slice(&bits.to_le_bytes());
        pad[n - 1][56..].copy_from_slice(&bits.to_be_bytes());
        kernel::md5_only(&mut self.md5, &md5_pad[..n]);
        let sha_blocks = pad.map(|b| sha2::digest::generic_array::GenericArray::clone_from_slice(&b));
        sha2::compress256(&mut self.sha256, &sha_blocks[..n]);
        let mut md5 = [0u8; 16];
        for (out, word) in md5.chunks_exact_mut(4).zip(self.md5) {
            out.copy_from_slice(&word.to_le_bytes());
        }
        let mut sha256 = [0u8; 32];
        for (out, word) in sha256.chunks_exact_mut(4).zip(self.sha256) {
            out.copy_from_slice(&word.to_be_bytes());
        }
        (md5, sha256)
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use core::arch::asm;
    use core::arch::x86_64::*;

    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("sha") && std::arch::is_x86_feature_detected!("sse4.1") && std::arch::is_x86_feature_detected!("ssse3")
    }

    /// MD5's additive constants (RFC 1321, 3.4).
    const K: [u32; 64] = [
        0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501, //
        0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
        0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
        0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
        0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
        0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
        0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
        0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
    ];

    /// MD5's rotations.
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, //
        4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];

    /// The message word MD5's step `i` adds.
    const fn word(i: usize) -> usize {
        match i / 16 {
            0 => i,
            1 => (5 * i + 1) % 16,
            2 => (3 * i + 5) % 16,
            _ => (7 * i) % 16,
        }
    }

    // One MD5 step, a = b + ((a + K[i] + M[word(i)] + f(b, c, d)) <<< S[i]), as assembly so
    // its order holds: what does not depend on b (the word the previous step made) comes
    // first, leaving on the chain only f's last operations, the add, the rotate and the add.
    // F = d ^ (b & (c ^ d)); G = (b & d) + (c & !d) (disjoint bits: two adds, one of them
    // off the chain); H = b ^ c ^ d; I = c ^ (b | !d).
    macro_rules! md5_step {
        ($f:tt, $a:ident, $b:ident, $c:ident, $d:ident, $m:ident, $i:expr) => {
            asm!(
                "add {a:e}, {k}",
                "add {a:e}, dword ptr [{m} + {w}]",
                md5_step!(@f $f),
                "rol {a:e}, {s}",
                "add {a:e}, {b:e}",
                a = inout(reg) $a, b = in(reg) $b, c = in(reg) $c, d = in(reg) $d, m = in(reg) $m, t = out(reg) _,
                w = const 4 * word($i), k = const K[$i] as i32, s = const S[$i],
                options(pure, readonly, nostack, preserves_flags)
            )
        };
        (@f F) => { "mov {t:e}, {c:e}\nxor {t:e}, {d:e}\nand {t:e}, {b:e}\nxor {t:e}, {d:e}\nadd {a:e}, {t:e}" };
        (@f G) => { "mov {t:e}, {d:e}\nnot {t:e}\nand {t:e}, {c:e}\nadd {a:e}, {t:e}\nmov {t:e}, {d:e}\nand {t:e}, {b:e}\nadd {a:e}, {t:e}" };
        (@f H) => { "mov {t:e}, {c:e}\nxor {t:e}, {d:e}\nxor {t:e}, {b:e}\nadd {a:e}, {t:e}" };
        (@f I) => { "mov {t:e}, {d:e}\nnot {t:e}\nor {t:e}, {b:e}\nxor {t:e}, {c:e}\nadd {a:e}, {t:e}" };
    }

    /// MD5 steps i .. i+3 (they make a, d, c, b in turn).
    macro_rules! md5_4 {
        ($f:tt, $i:expr, $a:ident, $b:ident, $c:ident, $d:ident, $m:ident) => {{
            md5_step!($f, $a, $b, $c, $d, $m, $i);
            md5_step!($f, $d, $a, $b, $c, $m, $i + 1);
            md5_step!($f, $c, $d, $a, $b, $m, $i + 2);
            md5_step!($f, $b, $c, $d, $a, $m, $i + 3);
        }};
    }

    /// SHA-256's round constants (FIPS 180-4, 4.2.2).
    const K256: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, //
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ];

    /// Message schedule: the next four words from the last sixteen.
    #[inline(always)]
    unsafe fn schedule(w0: __m128i, w1: __m128i, w2: __m128i, w3: __m128i) -> __m128i {
        _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32(w0, w1), _mm_alignr_epi8(w3, w2, 4)), w3)
    }

    /// SHA-256 rounds 4q .. 4q+3 on words `w`.
    macro_rules! sha_4 {
        ($abef:ident, $cdgh:ident, $w:expr, $q:expr) => {{
            let k = _mm_set_epi32(K256[4 * $q + 3] as i32, K256[4 * $q + 2] as i32, K256[4 * $q + 1] as i32, K256[4 * $q] as i32);
            let wk = _mm_add_epi32($w, k);
            $cdgh = _mm_sha256rnds2_epu32($cdgh, $abef, wk);
            $abef = _mm_sha256rnds2_epu32($abef, $cdgh, _mm_shuffle_epi32(wk, 0x0E));
        }};
    }

    /// MD5 and SHA-256 of `blocks`: each four SHA-256 rounds are followed by four MD5 steps
    /// of the same block.
    ///
    /// # Safety
    /// The CPU has SHA, SSSE3 and SSE4.1 ([`available`]).
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub unsafe fn both(md5: &mut [u32; 4], sha256: &mut [u32; 8], blocks: &[[u8; 64]]) {
        let be32 = _mm_set_epi64x(0x0C0D_0E0F_0809_0A0Bu64 as i64, 0x0405_0607_0001_0203u64 as i64);
        // SHA-NI keeps the state as (a, b, e, f) and (c, d, g, h).
        let dcba = _mm_loadu_si128(sha256.as_ptr().cast());
        let efgh = _mm_loadu_si128(sha256.as_ptr().add(4).cast());
        let cdab = _mm_shuffle_epi32(dcba, 0xB1);
        let hgfe = _mm_shuffle_epi32(efgh, 0x1B);
        let mut abef = _mm_alignr_epi8(cdab, hgfe, 8);
        let mut cdgh = _mm_blend_epi16(hgfe, cdab, 0xF0);
        let mut md = *md5;
        for block in blocks {
            let m = block.as_ptr();
            let [mut a, mut b, mut c, mut d] = md;
            let (abef_in, cdgh_in) = (abef, cdgh);
            let mut w0 = _mm_shuffle_epi8(_mm_loadu_si128(m.cast()), be32);
            let mut w1 = _mm_shuffle_epi8(_mm_loadu_si128(m.add(16).cast()), be32);
            let mut w2 = _mm_shuffle_epi8(_mm_loadu_si128(m.add(32).cast()), be32);
            let mut w3 = _mm_shuffle_epi8(_mm_loadu_si128(m.add(48).cast()), be32);
            let mut w4;
            sha_4!(abef, cdgh, w0, 0);
            md5_4!(F, 0, a, b, c, d, m);
            sha_4!(abef, cdgh, w1, 1);
            md5_4!(F, 4, a, b, c, d, m);
            sha_4!(abef, cdgh, w2, 2);
            md5_4!(F, 8, a, b, c, d, m);
            sha_4!(abef, cdgh, w3, 3);
            md5_4!(F, 12, a, b, c, d, m);
            w4 = schedule(w0, w1, w2, w3);
            sha_4!(abef, cdgh, w4, 4);
            md5_4!(G, 16, a, b, c, d, m);
            w0 = schedule(w1, w2, w3, w4);
            sha_4!(abef, cdgh, w0, 5);
            md5_4!(G, 20, a, b, c, d, m);
            w1 = schedule(w2, w3, w4, w0);
            sha_4!(abef, cdgh, w1, 6);
            md5_4!(G, 24, a, b, c, d, m);
            w2 = schedule(w3, w4, w0, w1);
            sha_4!(abef, cdgh, w2, 7);
            md5_4!(G, 28, a, b, c, d, m);
            w3 = schedule(w4, w0, w1, w2);
            sha_4!(abef, cdgh, w3, 8);
            md5_4!(H, 32, a, b, c, d, m);
            w4 = schedule(w0, w1, w2, w3);
            sha_4!(abef, cdgh, w4, 9);
            md5_4!(H, 36, a, b, c, d, m);
            w0 = schedule(w1, w2, w3, w4);
            sha_4!(abef, cdgh, w0, 10);
            md5_4!(H, 40, a, b, c, d, m);
            w1 = schedule(w2, w3, w4, w0);
            sha_4!(abef, cdgh, w1, 11);
            md5_4!(H, 44, a, b, c, d, m);
            w2 = schedule(w3, w4, w0, w1);
            sha_4!(abef, cdgh, w2, 12);
            md5_4!(I, 48, a, b, c, d, m);
            w3 = schedule(w4, w0, w1, w2);
            sha_4!(abef, cdgh, w3, 13);
            md5_4!(I, 52, a, b, c, d, m);
            w4 = schedule(w0, w1, w2, w3);
            sha_4!(abef, cdgh, w4, 14);
            md5_4!(I, 56, a, b, c, d, m);
            w0 = schedule(w1, w2, w3, w4);
            sha_4!(abef, cdgh, w0, 15);
            md5_4!(I, 60, a, b, c, d, m);
            abef = _mm_add_epi32(abef, abef_in);
            cdgh = _mm_add_epi32(cdgh, cdgh_in);
            md = [md[0].wrapping_add(a), md[1].wrapping_add(b), md[2].wrapping_add(c), md[3].wrapping_add(d)];
        }
        *md5 = md;
        let feba = _mm_shuffle_epi32(abef, 0x1B);
        let dchg = _mm_shuffle_epi32(cdgh, 0xB1);
        _mm_storeu_si128(sha256.as_mut_ptr().cast(), _mm_blend_epi16(feba, dchg, 0xF0));
        _mm_storeu_si128(sha256.as_mut_ptr().add(4).cast(), _mm_alignr_epi8(dchg, feba, 8));
    }

    /// MD5 alone (the padding blocks, which differ from SHA-256's): plain x86-64.
    pub fn md5_only(md5: &mut [u32; 4], blocks: &[[u8; 64]]) {
        for block in blocks {
            let m = block.as_ptr();
            let [mut a, mut b, mut c, mut d] = *md5;
            // SAFETY: each step reads one 32-bit word at offset 0..64 of `block`.
            unsafe {
                md5_4!(F, 0, a, b, c, d, m);
                md5_4!(F, 4, a, b, c, d, m);
                md5_4!(F, 8, a, b, c, d, m);
                md5_4!(F, 12, a, b, c, d, m);
                md5_4!(G, 16, a, b, c, d, m);
                md5_4!(G, 20, a, b, c, d, m);
                md5_4!(G, 24, a, b, c, d, m);
                md5_4!(G, 28, a, b, c, d, m);
                md5_4!(H, 32, a, b, c, d, m);
                md5_4!(H, 36, a, b, c, d, m);
                md5_4!(H, 40, a, b, c, d, m);
                md5_4!(H, 44, a, b, c, d, m);
                md5_4!(I, 48, a, b, c, d, m);
                md5_4!(I, 52, a, b, c, d, m);
                md5_4!(I, 56, a, b, c, d, m);
                md5_4!(I, 60, a, b, c, d, m);
            }
            *md5 = [md5[0].wrapping_add(a), md5[1].wrapping_add(b), md5[2].wrapping_add(c), md5[3].wrapping_add(d)];
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    pub fn available() -> bool {
        false
    }
    pub unsafe fn both(_: &mut [u32; 4], _: &mut [u32; 8], _: &[[u8; 64]]) {
        unreachable!("Md5Sha256::new says None here")
    }
    pub fn md5_only(_: &mut [u32; 4], _: &[[u8; 64]]) {
        unreachable!("Md5Sha256::new says None here")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Md5;
    use sha2::{Digest, Sha256};

    fn reference(data: &[u8]) -> ([u8; 16], [u8; 32]) {
        (Md5::digest(data).into(), Sha256::digest(data).into())
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
    }

    /// Skips (with a line on stderr) where the CPU has no SHA extensions; CI's machines have.
    fn hasher() -> Option<Md5Sha256> {
        let h = Md5Sha256::new();
        if h.is_none() {
            eprintln!("no SHA extensions on this CPU: Md5Sha256 is not used here");
        }
        h
    }

    #[test]
    fn known_answers() {
        let Some(mut h) = hasher() else { return };
        h.update(b"abc");
        let (md5, sha) = h.finalize();
        assert_eq!(hex::encode(md5), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(hex::encode(sha), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let (md5, sha) = hasher().unwrap().finalize();
        assert_eq!(hex::encode(md5), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex::encode(sha), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    /// Every length through two padding blocks and several whole ones, whole and split at
    /// every point (the partial block carried between updates).
    #[test]
    fn equals_md5_and_sha256_for_every_length_and_split() {
        let Some(fresh) = hasher() else { return };
        let all = data(300);
        for n in 0..=300 {
            let body = &all[..n];
            let want = reference(body);
            let mut h = fresh.clone();
            h.update(body);
            assert_eq!(h.finalize(), want, "length {n} whole");
            for cut in (0..=n).step_by(if n > 140 { 7 } else { 1 }) {
                let mut h = fresh.clone();
                h.update(&body[..cut]);
                h.update(&body[cut..]);
                assert_eq!(h.finalize(), want, "length {n} cut at {cut}");
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Random bytes cut at random points: the same digests as `md-5` and `sha2`.
        #[test]
        fn random_bodies_and_cuts(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..5000), cuts in proptest::collection::vec(0usize..5000, 0..8)) {
            if let Some(mut h) = Md5Sha256::new() {
                let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
                cuts.sort_unstable();
                let mut at = 0;
                for c in cuts.into_iter().chain([data.len()]) {
                    h.update(&data[at..c]);
                    at = c;
                }
                proptest::prop_assert_eq!(h.finalize(), reference(&data));
            }
        }
    }

    #[test]
    fn large_bodies_in_uneven_pieces() {
        let Some(fresh) = hasher() else { return };
        let body = data(5 << 20 | 77);
        let want = reference(&body);
        for piece in [1, 63, 65, 1000, 16_384, 65_536 + 13, 1 << 20] {
            let mut h = fresh.clone();
            let pieces = if piece == 1 { &body[..100_000] } else { &body[..] };
            for p in pieces.chunks(piece) {
                h.update(p);
            }
            let want = if piece == 1 { reference(pieces) } else { want };
            assert_eq!(h.finalize(), want, "pieces of {piece}");
        }
    }
}
