//! A small MPEG-TS demuxer (ISO/IEC 13818-1) for HLS segments: the program map from PAT and
//! PMT, then the PES payloads of the first audio stream, concatenated into its elementary
//! stream (ADTS AAC or MPEG audio frames). HLS puts a PAT and PMT at the start of every
//! segment, so each segment demuxes on its own. Bytes are hostile: every length is checked.

const PACKET: usize = 188;
const SYNC: u8 = 0x47;

/// The elementary stream an audio PID carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audio {
    /// AAC in ADTS frames (stream type 0x0F).
    Adts,
    /// MPEG-1/2 audio, layer III in practice (stream types 0x03 and 0x04).
    Mpeg,
}

/// Demuxes a segment into its audio elementary stream.
pub fn demux(bytes: &[u8]) -> Result<(Audio, Vec<u8>), String> {
    let start = sync_offset(bytes).ok_or("no MPEG-TS sync in the segment")?;
    let mut pmt_pid = None;
    let mut audio: Option<(u16, Audio)> = None;
    let mut unsupported = None;
    let mut es = Vec::with_capacity(bytes.len());
    let mut in_pes = false;
    for packet in bytes[start..].chunks_exact(PACKET) {
        if packet[0] != SYNC {
            // Lost sync: skip this packet (a damaged segment plays what can be read).
            continue;
        }
        let unit_start = packet[1] & 0x40 != 0;
        let pid = u16::from_be_bytes([packet[1] & 0x1F, packet[2]]);
        let Some(payload) = payload(packet) else { continue };
        if pid == 0 {
            if unit_start {
                pmt_pid = pmt_pid.or(parse_pat(payload));
            }
        } else if Some(pid) == pmt_pid {
            if unit_start && audio.is_none() {
                match parse_pmt(payload) {
                    Ok(found) => audio = found,
                    Err(t) => unsupported = Some(t),
                }
            }
        } else if let Some((apid, _)) = audio {
            if pid != apid {
                continue;
            }
            if unit_start {
                in_pes = true;
                match pes_payload(payload) {
                    Some(data) => es.extend_from_slice(data),
                    None => in_pes = false,
                }
            } else if in_pes {
                es.extend_from_slice(payload);
            }
        }
    }
    match audio {
        Some((_, kind)) if !es.is_empty() => Ok((kind, es)),
        Some(_) => Err("the segment's audio stream is empty".into()),
        None => Err(match (pmt_pid, unsupported) {
            (None, _) => "the segment has no program table".into(),
            (Some(_), Some(t)) => format!("the segment's audio stream type 0x{t:02x} is not supported"),
            (Some(_), None) => "the segment has no audio stream".into(),
        }),
    }
}

/// Whether the bytes look like MPEG-TS (sync bytes a packet apart).
pub fn looks_like_ts(bytes: &[u8]) -> bool {
    sync_offset(bytes) == Some(0)
}

/// The first offset with sync bytes at it and at the next two packets (or the end).
fn sync_offset(bytes: &[u8]) -> Option<usize> {
    (0..PACKET.min(bytes.len())).find(|&i| {
        (0..3).all(|k| match bytes.get(i + k * PACKET) {
            Some(b) => *b == SYNC,
            None => k > 0,
        })
    })
}

/// The packet's payload, after the adaptation field.
fn payload(packet: &[u8]) -> Option<&[u8]> {
    let control = (packet[3] >> 4) & 0b11;
    match control {
        0b01 => Some(&packet[4..]),
        0b11 => {
            let skip = 5 + packet[4] as usize;
            packet.get(skip..)
        }
        _ => None,
    }
}

/// The section after the pointer field.
fn section(payload: &[u8]) -> Option<&[u8]> {
    let pointer = *payload.first()? as usize;
    let s = payload.get(1 + pointer..)?;
    let len = (u16::from_be_bytes([*s.get(1)? & 0x0F, *s.get(2)?])) as usize;
    // The section without its CRC; a section longer than the packet is cut to what is here.
    s.get(..(3 + len).saturating_sub(4).min(s.len()))
}

/// The PMT PID of the first program.
fn parse_pat(payload: &[u8]) -> Option<u16> {
    let s = section(payload)?;
    if *s.first()? != 0x00 {
        return None;
    }
    s.get(8..)?.chunks_exact(4).find_map(|p| {
        let program = u16::from_be_bytes([p[0], p[1]]);
        (program != 0).then(|| u16::from_be_bytes([p[2] & 0x1F, p[3]]))
    })
}

/// The first audio stream of the program: `Ok(None)` when the table is unreadable, `Err` with
/// the stream type when it has audio of a type not supported.
fn parse_pmt(payload: &[u8]) -> Result<Option<(u16, Audio)>, u8> {
    let Some(s) = section(payload) else { return Ok(None) };
    if s.first() != Some(&0x02) || s.len() < 12 {
        return Ok(None);
    }
    let info_len = (u16::from_be_bytes([s[10] & 0x0F, s[11]])) as usize;
    let mut rest = s.get(12 + info_len..).unwrap_or_default();
    let mut other_audio = None;
    while rest.len() >= 5 {
        let stream_type = rest[0];
        let pid = u16::from_be_bytes([rest[1] & 0x1F, rest[2]]);
        let es_info = (u16::from_be_bytes([rest[3] & 0x0F, rest[4]])) as usize;
        match stream_type {
            0x0F => return Ok(Some((pid, Audio::Adts))),
            0x03 | 0x04 => return Ok(Some((pid, Audio::Mpeg))),
            // LATM AAC, AC-3, E-AC-3, private data (Opus and others).
            0x11 | 0x81 | 0x87 => other_audio = other_audio.or(Some(stream_type)),
            _ => {}
        }
        rest = rest.get(5 + es_info..).unwrap_or_default();
    }
    other_audio.map_or(Ok(None), Err)
}

/// The payload of a PES packet's first TS packet, after the PES header.
fn pes_payload(payload: &[u8]) -> Option<&[u8]> {
    if payload.get(..3)? != [0, 0, 1] {
        return None;
    }
    let header_len = *payload.get(8)? as usize;
    payload.get(9 + header_len..)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds TS packets: a PAT, a PMT with one stream of `stream_type` on PID 0x100, and the
    /// elementary stream in PES packets of `pes_size` bytes.
    pub fn mux(stream_type: u8, es: &[u8], pes_size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut packet = |pid: u16, start: bool, data: &[u8]| {
            let mut p = vec![SYNC, (if start { 0x40 } else { 0 }) | (pid >> 8) as u8, pid as u8];
            if data.len() < 184 {
                // Pad with an adaptation field of stuffing.
                let stuffing = 184 - data.len() - 1;
                p.push(0x30);
                p.push(stuffing as u8);
                if stuffing > 0 {
                    p.push(0);
                    p.extend(std::iter::repeat_n(0xFF, stuffing - 1));
                }
            } else {
                p.push(0x10);
            }
            p.extend_from_slice(data);
            assert_eq!(p.len(), PACKET);
            out.extend(p);
        };
        packet(0, true, &[0, 0x00, 0xB0, 13, 0, 1, 0xC1, 0, 0, 0, 1, 0xE0 | 0x10, 0x00, 0, 0, 0, 0]);
        packet(0x1000, true, &[0, 0x02, 0xB0, 18, 0, 1, 0xC1, 0, 0, 0xE1, 0x00, 0xF0, 0, stream_type, 0xE1, 0x00, 0xF0, 0, 0, 0, 0, 0]);
        for chunk in es.chunks(pes_size) {
            let mut pes = vec![0, 0, 1, 0xC0, 0, 0, 0x80, 0x80, 5, 0x21, 0, 1, 0, 1];
            pes.extend_from_slice(chunk);
            for (i, part) in pes.chunks(184).enumerate() {
                packet(0x100, i == 0, part);
            }
        }
        out
    }

    #[test]
    fn demuxes_the_audio_stream() {
        let es: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let ts = mux(0x0F, &es, 700);
        assert!(looks_like_ts(&ts));
        assert_eq!(demux(&ts).unwrap(), (Audio::Adts, es.clone()));
        let (kind, _) = demux(&mux(0x03, &es, 700)).unwrap();
        assert_eq!(kind, Audio::Mpeg);
    }

    #[test]
    fn hostile_segments() {
        assert!(demux(b"").is_err());
        assert!(demux(&[SYNC; 10]).is_err());
        assert!(demux(&mux(0x1B, b"video", 100)).unwrap_err().contains("no audio"));
        assert!(demux(&mux(0x81, b"ac3", 100)).unwrap_err().contains("0x81"));
        // Truncated and garbled: no panic.
        let ts = mux(0x0F, &[7u8; 3000], 500);
        for cut in [1, 5, 187, 188, 189, 400, ts.len() - 1] {
            let _ = demux(&ts[..cut]);
        }
        let mut garbled = ts.clone();
        for (i, b) in garbled.iter_mut().enumerate() {
            if i % 7 == 3 {
                *b = b.wrapping_mul(31);
            }
        }
        let _ = demux(&garbled);
    }
}
