//! RTP parsing and transport decryption of Discord's `*_rtpsize` AEAD modes, as songbird 0.6.1
//! produces them:
//!
//! ```text
//! | 12-byte RTP header (+ 4·CC CSRCs) | [4-byte extension preamble] | ciphertext | 16-byte tag | u32 BE nonce counter |
//! ```
//!
//! The associated data is everything before the ciphertext: the RTP header, its CSRCs and, when
//! the X bit is set, the 4-byte extension preamble (profile + length). The extension *body* is
//! encrypted together with the payload and is stripped after decryption. The nonce is the 4
//! counter bytes at `nonce[0..4]`, zero-padded to 12 bytes (AES-256-GCM) or 24 bytes
//! (XChaCha20-Poly1305).

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::Aes256Gcm;
use chacha20poly1305::XChaCha20Poly1305;

pub const MODE_AES256_GCM: &str = "aead_aes256_gcm_rtpsize";
pub const MODE_XCHACHA20: &str = "aead_xchacha20_poly1305_rtpsize";

const TAG_LEN: usize = 16;
const NONCE_LEN: usize = 4;

/// Key material for one connection's negotiated mode.
pub(crate) enum Cipher {
    Aes(Box<Aes256Gcm>),
    XChaCha(Box<XChaCha20Poly1305>),
}

impl Cipher {
    pub(crate) fn new(mode: &str, key: &[u8; 32]) -> Option<Cipher> {
        match mode {
            MODE_AES256_GCM => Some(Cipher::Aes(Box::new(Aes256Gcm::new_from_slice(key).ok()?))),
            MODE_XCHACHA20 => Some(Cipher::XChaCha(Box::new(XChaCha20Poly1305::new_from_slice(key).ok()?))),
            _ => None,
        }
    }
}

/// The plain fields of an RTP header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RtpHeader {
    pub(crate) payload_type: u8,
    pub(crate) seq: u16,
    pub(crate) timestamp: u32,
    pub(crate) ssrc: u32,
}

/// Parses the fixed RTP header (version 2) of a datagram.
pub(crate) fn parse_header(pkt: &[u8]) -> Option<RtpHeader> {
    if pkt.len() < 12 || pkt[0] >> 6 != 2 {
        return None;
    }
    Some(RtpHeader {
        payload_type: pkt[1] & 0x7f,
        seq: u16::from_be_bytes([pkt[2], pkt[3]]),
        timestamp: u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]),
        ssrc: u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]),
    })
}

/// Decrypts one RTP packet and returns its Opus payload, or `None` if the packet is malformed
/// or fails authentication.
pub(crate) fn decrypt(cipher: &Cipher, pkt: &[u8]) -> Option<Vec<u8>> {
    if pkt.len() < 12 {
        return None;
    }
    let csrc_count = usize::from(pkt[0] & 0x0f);
    let has_extension = pkt[0] & 0x10 != 0;
    let has_padding = pkt[0] & 0x20 != 0;
    let header_len = 12 + 4 * csrc_count;
    let aad_len = header_len + if has_extension { 4 } else { 0 };
    if pkt.len() < aad_len + TAG_LEN + NONCE_LEN {
        return None;
    }
    let (aad, rest) = pkt.split_at(aad_len);
    let (sealed, counter) = rest.split_at(rest.len() - NONCE_LEN);
    let (ciphertext, tag) = sealed.split_at(sealed.len() - TAG_LEN);
    let mut plain = ciphertext.to_vec();
    match cipher {
        Cipher::Aes(c) => {
            let mut nonce = aes_gcm::Nonce::default();
            nonce[..NONCE_LEN].copy_from_slice(counter);
            c.decrypt_in_place_detached(&nonce, aad, &mut plain, aes_gcm::Tag::from_slice(tag)).ok()?;
        }
        Cipher::XChaCha(c) => {
            let mut nonce = chacha20poly1305::XNonce::default();
            nonce[..NONCE_LEN].copy_from_slice(counter);
            c.decrypt_in_place_detached(&nonce, aad, &mut plain, chacha20poly1305::Tag::from_slice(tag))
                .ok()?;
        }
    }
    if has_extension {
        // The preamble's length field counts 32-bit words of the (encrypted) extension body.
        let words = usize::from(u16::from_be_bytes([pkt[header_len + 2], pkt[header_len + 3]]));
        if plain.len() < 4 * words {
            return None;
        }
        plain.drain(..4 * words);
    }
    if has_padding {
        let pad = usize::from(*plain.last()?);
        if pad == 0 || pad > plain.len() {
            return None;
        }
        plain.truncate(plain.len() - pad);
    }
    Some(plain)
}

/// Encrypts an Opus payload the way songbird does (used by the double's own unit tests).
#[cfg(test)]
pub(crate) fn encrypt(cipher: &Cipher, header: &[u8; 12], payload: &[u8], counter: u32) -> Vec<u8> {
    let mut body = payload.to_vec();
    let tag: Vec<u8> = match cipher {
        Cipher::Aes(c) => {
            let mut nonce = aes_gcm::Nonce::default();
            nonce[..4].copy_from_slice(&counter.to_be_bytes());
            c.encrypt_in_place_detached(&nonce, header, &mut body).unwrap().to_vec()
        }
        Cipher::XChaCha(c) => {
            let mut nonce = chacha20poly1305::XNonce::default();
            nonce[..4].copy_from_slice(&counter.to_be_bytes());
            c.encrypt_in_place_detached(&nonce, header, &mut body).unwrap().to_vec()
        }
    };
    let mut out = header.to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    out.extend_from_slice(&counter.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_both_modes() {
        let key = [7u8; 32];
        for mode in [MODE_AES256_GCM, MODE_XCHACHA20] {
            let cipher = Cipher::new(mode, &key).unwrap();
            let header = [0x80, 0x78, 0, 1, 0, 0, 3, 0xc0, 0, 0, 0, 42];
            let pkt = encrypt(&cipher, &header, &[0xf8, 0xff, 0xfe], 99);
            let h = parse_header(&pkt).unwrap();
            assert_eq!((h.payload_type, h.seq, h.timestamp, h.ssrc), (0x78, 1, 960, 42));
            assert_eq!(decrypt(&cipher, &pkt).unwrap(), vec![0xf8, 0xff, 0xfe]);
            let mut bad = pkt.clone();
            bad[13] ^= 1;
            assert!(decrypt(&cipher, &bad).is_none());
            let other = Cipher::new(mode, &[8u8; 32]).unwrap();
            assert!(decrypt(&other, &pkt).is_none());
        }
    }
}
