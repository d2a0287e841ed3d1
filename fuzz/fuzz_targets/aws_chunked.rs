//! `filters::sigv4::chunked::ChunkedDecoder`, the streaming aws-chunked body decoder.
//!
//! Input: byte 0 picks the mode, then the parameters (a fixed layout in the raw modes,
//! `arbitrary` in the structured ones), then the body (raw modes) or the payload the body
//! is built from (structured modes).
//!
//! * raw modes: the fuzz bytes are the body, decoded in the unsigned-trailer, signed and
//!   signed-trailer modes with fixed signing parameters and a fuzzed
//!   `x-amz-decoded-content-length` / `x-amz-trailer`;
//! * structured modes: a valid body (signed, signed with a trailer, or unsigned with a
//!   trailer) is written for a fuzzed payload and chunking, then damaged by fuzzed mutations.
//!
//! Properties, every mode:
//! * no panic;
//! * after every `feed`, the payload returned so far equals `decoded_so_far()` and never
//!   exceeds `decoded_len`; a successful `finish` means exactly `decoded_len` bytes came out;
//! * the body fed in one piece (`feed`) and split at fuzzed positions (`feed_bytes`, empty
//!   pieces included) gives the same result: the same payload and trailer checksum, or
//!   errors with the same code.
//!
//! Structured modes additionally:
//! * the undamaged body decodes to the payload and the trailer checksum it carries;
//! * signed modes: whatever the damage, a body that decodes decodes to exactly the payload
//!   and checksum that were signed (only letter case and blanks the signature does not cover
//!   may change).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use filters::checksum::ChecksumAlgorithm;
use filters::request::PayloadMode;
use filters::sigv4::chunked::ChunkedDecoder;
use filters::S3ErrorCode;
use libfuzzer_sys::fuzz_target;
use s3cp_fuzz::{apply_mutations, chunked as fx, split_at_cuts, Mutation};

type Decoded = Result<(Vec<u8>, Option<(ChecksumAlgorithm, String)>), S3ErrorCode>;

#[derive(Clone, Copy)]
struct Setup {
    mode: PayloadMode,
    trailer: Option<ChecksumAlgorithm>,
    decoded_len: u64,
}

impl Setup {
    fn decoder(&self) -> Option<ChunkedDecoder> {
        let signing = (self.mode != PayloadMode::StreamingUnsignedTrailer).then(fx::signing);
        // The signed mode without trailer refuses an announced trailer: a constructor error
        // the proxy turns into a 400 before any body byte is read.
        ChunkedDecoder::new(self.mode, signing, self.trailer, self.decoded_len).ok()
    }

    /// Decodes `pieces` in order, checking the length invariants after every call.
    fn decode(&self, pieces: &[&[u8]], owned: bool) -> Decoded {
        let mut d = self.decoder().expect("checked by the caller");
        let mut out = Vec::new();
        for p in pieces {
            let got = if owned {
                d.feed_bytes(Bytes::copy_from_slice(p))
            } else {
                d.feed(p)
            };
            let got = got.map_err(|e| e.code)?;
            out.extend_from_slice(&got);
            assert!(
                out.len() as u64 <= self.decoded_len,
                "{} bytes out, {} declared",
                out.len(),
                self.decoded_len
            );
            assert_eq!(
                out.len() as u64,
                d.decoded_so_far(),
                "decoded_so_far disagrees with the output"
            );
        }
        let trailer = d.finish().map_err(|e| e.code)?;
        assert_eq!(
            out.len() as u64,
            self.decoded_len,
            "finished with a short payload"
        );
        if let (Some(alg), Some((got, _))) = (self.trailer, &trailer) {
            assert_eq!(alg, *got, "a checksum other than the announced one");
        }
        if self.trailer.is_some() {
            assert!(
                trailer.is_some(),
                "announced trailer checksum missing after a successful finish"
            );
        }
        Ok((out, trailer))
    }

    /// The body whole and split at `cuts`: the two must agree. Returns the result.
    fn run(&self, body: &[u8], cuts: &[u16]) -> Decoded {
        let whole = self.decode(&[body], false);
        let split = self.decode(&split_at_cuts(body, cuts), true);
        assert_eq!(
            whole, split,
            "one piece and split pieces disagree (cuts {cuts:?})"
        );
        whole
    }
}

fn trailer_alg(sel: u8) -> Option<ChecksumAlgorithm> {
    ChecksumAlgorithm::ALL
        .get(sel as usize % (ChecksumAlgorithm::ALL.len() + 1))
        .copied()
}

#[derive(Arbitrary, Debug)]
struct StructuredParams {
    trailer: u8,
    /// Data chunk sizes; the body's last data chunk takes what is left.
    sizes: Vec<u16>,
    /// An extra trailing header (signed-trailer and unsigned modes), besides the checksum.
    extra: Option<(u8, String)>,
    mutations: Vec<Mutation>,
    cuts: Vec<u16>,
    payload_len: u16,
}

/// Raw modes: `trailer (u8) ‖ decoded_len (u16 LE) ‖ n (u8, mod 9) ‖ n cuts (u16 LE) ‖ body`,
/// a fixed layout so that seeds are easy to write by hand.
fn raw(mode: PayloadMode, data: &[u8]) {
    let [trailer, l0, l1, n, rest @ ..] = data else {
        return;
    };
    let n = usize::from(*n % 9);
    if rest.len() < 2 * n {
        return;
    }
    let (cut_bytes, body) = rest.split_at(2 * n);
    let cuts: Vec<u16> = cut_bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let setup = Setup {
        mode,
        trailer: trailer_alg(*trailer),
        decoded_len: u64::from(u16::from_le_bytes([*l0, *l1])),
    };
    if setup.decoder().is_none() {
        return;
    }
    let _ = setup.run(body, &cuts);
}

fn structured(mode: PayloadMode, data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    let p = StructuredParams::arbitrary(&mut u)?;
    let rest = u.take_rest();
    let len = p.payload_len as usize % 4097;
    // The payload: the remaining input, repeated if it is shorter than the chosen length.
    let payload: Vec<u8> = if rest.is_empty() {
        vec![b'x'; len]
    } else {
        rest.iter().cycle().take(len).copied().collect()
    };
    let trailer = match mode {
        PayloadMode::StreamingSigned => None,
        _ => trailer_alg(p.trailer),
    };
    let mut lines: Vec<(String, String)> = Vec::new();
    if let Some(alg) = trailer {
        lines.push((
            alg.header_name().to_string(),
            fx::checksum_b64(alg, &payload),
        ));
    }
    if let (Some((name_sel, value)), false) = (&p.extra, mode == PayloadMode::StreamingSigned) {
        // A well-formed extra trailing header: `x-amz-meta-<letters>` and a printable value
        // without leading/trailing blanks (the decoder trims them).
        let name = format!("x-amz-meta-{}", (b'a' + name_sel % 26) as char);
        let value: String = value
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(40)
            .collect();
        lines.insert((*name_sel as usize) % (lines.len() + 1), (name, value));
    }
    let sizes: Vec<usize> = p
        .sizes
        .iter()
        .take(32)
        .map(|&s| usize::from(s) % 2048 + 1)
        .collect();
    let body = match mode {
        PayloadMode::StreamingSigned => fx::signed_body(&fx::signing_key(), &payload, &sizes, None),
        PayloadMode::StreamingSignedTrailer => {
            fx::signed_body(&fx::signing_key(), &payload, &sizes, Some(&lines))
        }
        _ => fx::unsigned_body(&payload, &sizes, &lines),
    };
    let setup = Setup {
        mode,
        trailer,
        decoded_len: payload.len() as u64,
    };
    let cuts: Vec<u16> = p.cuts.into_iter().take(16).collect();
    let expected_checksum = trailer.map(|alg| (alg, fx::checksum_b64(alg, &payload)));

    // The undamaged body decodes, whole and in pieces.
    match setup.run(&body, &cuts) {
        Ok((out, checksum)) => {
            assert!(out == payload, "valid body: payload changed");
            assert_eq!(checksum, expected_checksum, "valid body: checksum");
        }
        Err(code) => panic!("a valid {mode:?} body was refused: {code:?}"),
    }

    let mut damaged = body.clone();
    apply_mutations(&mut damaged, &p.mutations);
    if damaged == body {
        return Ok(());
    }
    let result = setup.run(&damaged, &cuts);
    if mode != PayloadMode::StreamingUnsignedTrailer {
        if let Ok((out, checksum)) = result {
            assert!(
                out == payload,
                "damaged signed body accepted with a different payload"
            );
            assert_eq!(
                checksum, expected_checksum,
                "damaged signed body accepted with a different checksum"
            );
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 6 {
        0 => raw(PayloadMode::StreamingUnsignedTrailer, rest),
        1 => raw(PayloadMode::StreamingSigned, rest),
        2 => raw(PayloadMode::StreamingSignedTrailer, rest),
        // `Err`: no parameters could be built from this input; nothing to check.
        3 => drop(structured(PayloadMode::StreamingSigned, rest)),
        4 => drop(structured(PayloadMode::StreamingSignedTrailer, rest)),
        _ => drop(structured(PayloadMode::StreamingUnsignedTrailer, rest)),
    }
});
