//! The task that fetches an HLS stream's segments ahead of its decoder: playlist reloads (live),
//! keys and init sections (cached), retries, AES-128 decryption and MPEG-TS demuxing. Segments
//! are handed over whole through [`Shared`], at most [`AHEAD`] at a time.

use super::playlist::{self, ByteRange, Media, Segment};
use super::ts;
use crate::net::{Gauge, Net, Request};
use crate::sources::container::{self, Container};
use crate::sources::LoadFailure;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Segments fetched ahead of the one being decoded.
const AHEAD: usize = 2;
/// Largest segment, key and init section accepted.
const MAX_SEGMENT_BYTES: usize = 32 * 1024 * 1024;
const MAX_INIT_BYTES: usize = 1024 * 1024;
/// Tries of one request before the track fails, and the pause after the first failure (doubled
/// after each).
const ATTEMPTS: u32 = 3;
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// A live playlist that adds no segment for this long (or three target durations, if longer)
/// has stopped.
const LIVE_STALL: Duration = Duration::from_secs(30);

/// A segment ready for its reader.
pub struct Fetched {
    pub kind: Kind,
    pub data: Vec<u8>,
}

/// What a segment's bytes are, once decrypted and demuxed.
pub enum Kind {
    /// ADTS AAC frames (from MPEG-TS or packed audio).
    Adts,
    /// MPEG audio frames (from MPEG-TS or packed audio).
    Mpeg,
    /// A fragmented MP4 media segment, and the init section to read it with (empty when the
    /// segment carries its own).
    Fmp4(Arc<Vec<u8>>),
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<Fetched>,
    /// The fetching ended: `Ok` at the end of a VOD playlist, `Err` when it failed.
    done: Option<Result<(), LoadFailure>>,
    /// A seek: start over at this segment.
    restart: Option<usize>,
    /// Bumped by every restart, so a fetch begun before it is dropped.
    generation: u64,
}

/// What the decoder side gets from [`Shared::take`].
pub enum Take {
    Segment(Fetched),
    Wait,
    End,
    Failed(LoadFailure),
}

/// Between the fetching task and the decoder.
pub struct Shared {
    queue: Mutex<Queue>,
    /// A segment arrived or the fetching ended (opening waits on it).
    arrived: Condvar,
    /// The decoder took a segment or asked for a restart (the task waits on it).
    wanted: Notify,
    /// Segments ready, counting the one being read.
    pub gauge: Gauge,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn take(&self) -> Take {
        let mut q = self.lock();
        match q.ready.pop_front() {
            Some(s) => {
                drop(q);
                self.wanted.notify_one();
                Take::Segment(s)
            }
            None => match &q.done {
                None => Take::Wait,
                Some(Ok(())) => Take::End,
                Some(Err(f)) => Take::Failed(f.clone()),
            },
        }
    }

    /// Waits (blocking) for the first segment.
    pub fn wait_first(&self, deadline: Instant) -> Result<Fetched, LoadFailure> {
        let mut q = self.lock();
        loop {
            if let Some(s) = q.ready.pop_front() {
                drop(q);
                self.wanted.notify_one();
                return Ok(s);
            }
            match &q.done {
                Some(Err(f)) => return Err(f.clone()),
                Some(Ok(())) => return Err(LoadFailure::common("The HLS playlist is empty.", "it has no segment".into())),
                None => {}
            }
            let left = deadline.checked_duration_since(Instant::now()).ok_or_else(|| {
                LoadFailure::suspicious("Loading the HLS stream timed out.", "its first segment did not arrive in time".into())
            })?;
            q = self.arrived.wait_timeout(q, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Starts the fetching over at segment `index` (a seek).
    pub fn restart(&self, index: usize) {
        let mut q = self.lock();
        q.ready.clear();
        q.done = None;
        q.restart = Some(index);
        q.generation += 1;
        self.gauge.reset();
        drop(q);
        self.wanted.notify_one();
    }

    /// Hands a fetched segment over, unless a restart came since `generation` began.
    fn push(&self, generation: u64, segment: Fetched) {
        let mut q = self.lock();
        if q.generation == generation {
            q.ready.push_back(segment);
            self.gauge.add(1);
            self.arrived.notify_all();
        }
    }

    fn finish(&self, generation: u64, end: Result<(), LoadFailure>) {
        let mut q = self.lock();
        if q.generation == generation && q.done.is_none() {
            q.done = Some(end);
            self.gauge.finish();
            self.arrived.notify_all();
        }
    }
}

/// Ends the stream with an error if the task stops without saying why (a panic on hostile
/// bytes is caught by the runtime; the decoder must not wait forever).
struct Guard(Arc<Shared>);

impl Drop for Guard {
    fn drop(&mut self) {
        let generation = self.0.lock().generation;
        self.0.finish(generation, Err(LoadFailure::fault("Something broke when playing the track.", "the HLS fetcher stopped".into())));
    }
}

/// Starts fetching `media` (fetched from `url`) at segment `first`; every request is made like
/// `base` (its path, headers and egress).
pub fn start(net: &Net, base: &Request, url: String, media: Media, first: usize) -> (Arc<Shared>, tokio::task::JoinHandle<()>) {
    let shared = Arc::new(Shared { queue: Mutex::default(), arrived: Condvar::new(), wanted: Notify::new(), gauge: Gauge::new(1) });
    let next = media.segments.get(first).map_or(media.media_sequence, |s| s.sequence);
    let fetcher = Fetcher { net: net.clone(), base: base.clone(), url, media, next, keys: Vec::new(), init: None, reloaded: Instant::now(), advanced: Instant::now() };
    let guard = Guard(shared.clone());
    let task = net.runtime().spawn(async move {
        fetcher.run(&guard.0).await;
    });
    (shared, task)
}

struct Fetcher {
    net: Net,
    /// What every request copies besides its URL and range.
    base: Request,
    /// The media playlist's URL (reloaded for live streams).
    url: String,
    media: Media,
    /// The sequence number of the next segment to fetch.
    next: u64,
    /// AES keys by URI (the last few).
    keys: Vec<(String, [u8; 16])>,
    init: Option<(Arc<playlist::Map>, Arc<Vec<u8>>)>,
    reloaded: Instant,
    /// When the live playlist last added a segment.
    advanced: Instant,
}

impl Fetcher {
    async fn run(mut self, shared: &Shared) {
        loop {
            let wanted = shared.wanted.notified();
            let (generation, idle) = {
                let mut q = shared.lock();
                if let Some(index) = q.restart.take() {
                    if let Some(s) = self.media.segments.get(index) {
                        self.next = s.sequence;
                    }
                }
                (q.generation, q.ready.len() >= AHEAD || q.done.is_some())
            };
            if idle {
                wanted.await;
                continue;
            }
            drop(wanted);
            let first = self.media.segments.first().map_or(self.media.media_sequence, |s| s.sequence);
            let index = self.next.checked_sub(first).map(|i| i as usize);
            match index.and_then(|i| self.media.segments.get(i)).cloned() {
                Some(segment) => match self.segment(&segment).await {
                    Ok(fetched) => {
                        self.next += 1;
                        shared.push(generation, fetched);
                    }
                    Err(f) => shared.finish(generation, Err(f)),
                },
                None if self.media.ended => shared.finish(generation, Ok(())),
                None if index.is_none() => {
                    // Fell behind a sliding window: go on from its oldest segment.
                    tracing::debug!(url = %self.url, from = self.next, to = first, "the live window moved past us");
                    self.next = first;
                }
                None => {
                    if let Err(f) = self.reload().await {
                        shared.finish(generation, Err(f));
                    }
                }
            }
        }
    }

    /// Waits for the reload time, then fetches the live playlist again.
    async fn reload(&mut self) -> Result<(), LoadFailure> {
        let target = Duration::from_secs_f64(self.media.target_duration);
        let stall = LIVE_STALL.max(3 * target);
        if self.advanced.elapsed() > stall {
            return Err(LoadFailure::suspicious(
                "The live stream stopped updating.",
                format!("{}: no new segment for {} s", self.url, stall.as_secs()),
            ));
        }
        // RFC 8216 §6.3.4: a target duration after the last load, half of it when the last
        // load brought nothing new.
        let wait = if self.advanced >= self.reloaded { target } else { target / 2 };
        tokio::time::sleep_until((self.reloaded + wait).into()).await;
        self.reloaded = Instant::now();
        let bytes = self.get(&self.url.clone(), None, super::MAX_PLAYLIST_BYTES, "playlist").await?;
        let base = url::Url::parse(&self.url).map_err(|e| LoadFailure::common("Not a valid URL.", e.to_string()))?;
        let playlist::Playlist::Media(media) = playlist::parse(&String::from_utf8_lossy(&bytes), &base)? else {
            return Err(LoadFailure::common("The HLS playlist is malformed.", format!("{} turned into a master playlist", self.url)));
        };
        let last = |m: &Media| m.segments.last().map(|s| s.sequence);
        if last(&media) > last(&self.media) || media.ended {
            self.advanced = Instant::now();
        }
        self.media = media;
        Ok(())
    }

    /// Fetches one segment, with its key and init section, and makes it readable.
    async fn segment(&mut self, segment: &Segment) -> Result<Fetched, LoadFailure> {
        let mut data = self.get(&segment.uri, segment.range, MAX_SEGMENT_BYTES, "segment").await?;
        if let Some(key) = &segment.key {
            let k = self.key(&key.uri).await?;
            let iv = key.iv.unwrap_or_else(|| u128::from(segment.sequence).to_be_bytes());
            data = decrypt(&data, &k, &iv).ok_or_else(|| {
                LoadFailure::suspicious("An HLS segment could not be decrypted.", format!("{}: bad padding or length", segment.uri))
            })?;
        }
        let unreadable = |why: String| LoadFailure::suspicious("An HLS segment could not be read.", format!("{}: {why}", segment.uri));
        if let Some(map) = &segment.map {
            let init = self.init(map).await?;
            return Ok(Fetched { kind: Kind::Fmp4(init), data });
        }
        if data.get(4..8) == Some(b"ftyp") || data.get(4..8) == Some(b"styp") {
            return Ok(Fetched { kind: Kind::Fmp4(Arc::default()), data });
        }
        if ts::looks_like_ts(&data) {
            let (audio, es) = ts::demux(&data).map_err(unreadable)?;
            let kind = match audio {
                ts::Audio::Adts => Kind::Adts,
                ts::Audio::Mpeg => Kind::Mpeg,
            };
            return Ok(Fetched { kind, data: es });
        }
        // Packed audio: raw frames, after an ID3 tag with the timestamp.
        let frames = strip_id3(&data);
        match container::detect(frames) {
            Some(Container::Adts) => Ok(Fetched { kind: Kind::Adts, data: frames.to_vec() }),
            Some(Container::Mp3) => Ok(Fetched { kind: Kind::Mpeg, data: frames.to_vec() }),
            _ => Err(unreadable("not MPEG-TS, fragmented MP4 or packed AAC/MP3".into())),
        }
    }

    async fn key(&mut self, uri: &str) -> Result<[u8; 16], LoadFailure> {
        if let Some((_, k)) = self.keys.iter().find(|(u, _)| u == uri) {
            return Ok(*k);
        }
        let bytes = self.get(uri, None, 64, "key").await?;
        let key: [u8; 16] = bytes.as_slice().try_into().map_err(|_| {
            LoadFailure::suspicious("An HLS segment could not be decrypted.", format!("{uri}: the key is {} bytes, not 16", bytes.len()))
        })?;
        if self.keys.len() >= 4 {
            self.keys.remove(0);
        }
        self.keys.push((uri.to_string(), key));
        Ok(key)
    }

    async fn init(&mut self, map: &Arc<playlist::Map>) -> Result<Arc<Vec<u8>>, LoadFailure> {
        if let Some((m, bytes)) = &self.init {
            if **m == **map {
                return Ok(bytes.clone());
            }
        }
        let bytes = Arc::new(self.get(&map.uri, map.range, MAX_INIT_BYTES, "init section").await?);
        self.init = Some((map.clone(), bytes.clone()));
        Ok(bytes)
    }

    /// One resource, retried a few times (a segment that still fails fails the track).
    async fn get(&self, uri: &str, range: Option<ByteRange>, limit: usize, what: &str) -> Result<Vec<u8>, LoadFailure> {
        let mut request = Request { url: uri.to_string(), from: None, to: None, deadline: None, ..self.base.clone() };
        if let Some(r) = range {
            request.from = Some(r.offset);
            request.to = Some(r.offset + r.len.max(1) - 1);
        }
        let mut pause = RETRY_PAUSE;
        let mut attempt = 1;
        loop {
            match self.net.fetch(&request, limit).await {
                Ok((bytes, _)) => return Ok(bytes),
                Err(f) if attempt >= ATTEMPTS => {
                    let message = format!("An HLS {what} could not be loaded.");
                    return Err(LoadFailure::suspicious(&message, format!("{} ({}), after {ATTEMPTS} attempts", f.cause, f.message)));
                }
                Err(f) => tracing::debug!(uri, error = %f.cause, attempt, "HLS request failed; retrying"),
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
            attempt += 1;
        }
    }
}

/// The bytes after a leading ID3v2 tag (packed audio carries its timestamp in one).
fn strip_id3(data: &[u8]) -> &[u8] {
    match container::id3_len(data) {
        Some(len) => data.get(len..).unwrap_or_default(),
        None => data,
    }
}

/// AES-128-CBC with PKCS#7 padding (RFC 8216 §4.3.2.4).
fn decrypt(data: &[u8], key: &[u8; 16], iv: &[u8; 16]) -> Option<Vec<u8>> {
    use aes::cipher::generic_array::GenericArray;
    use aes::cipher::{BlockDecrypt, KeyInit};
    if data.is_empty() || data.len() % 16 != 0 {
        return None;
    }
    let cipher = aes::Aes128::new(GenericArray::from_slice(key));
    let mut out = data.to_vec();
    let mut previous = *iv;
    for block in out.chunks_exact_mut(16) {
        let encrypted: [u8; 16] = block.try_into().expect("16-byte chunks");
        cipher.decrypt_block(GenericArray::from_mut_slice(block));
        block.iter_mut().zip(previous).for_each(|(b, p)| *b ^= p);
        previous = encrypted;
    }
    let pad = *out.last()? as usize;
    if pad == 0 || pad > 16 || !out[out.len() - pad..].iter().all(|b| *b as usize == pad) {
        return None;
    }
    out.truncate(out.len() - pad);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_cbc() {
        // NIST SP 800-38A F.2.2 (CBC-AES128.Decrypt), first block, with a PKCS#7 block added by
        // encrypting it here (the decrypt of a known pair is checked first).
        use aes::cipher::generic_array::GenericArray;
        use aes::cipher::{BlockEncrypt, KeyInit};
        let key: [u8; 16] = [0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c];
        let iv: [u8; 16] = std::array::from_fn(|i| i as u8);
        let plain: [u8; 16] = [0x6b, 0xc1, 0xbe, 0xe2, 0x2e, 0x40, 0x9f, 0x96, 0xe9, 0x3d, 0x7e, 0x11, 0x73, 0x93, 0x17, 0x2a];
        let cipher1: [u8; 16] = [0x76, 0x49, 0xab, 0xac, 0x81, 0x19, 0xb2, 0x46, 0xce, 0xe9, 0x8e, 0x9b, 0x12, 0xe9, 0x19, 0x7d];
        let aes = aes::Aes128::new(GenericArray::from_slice(&key));
        let mut pad = [16u8; 16];
        pad.iter_mut().zip(cipher1).for_each(|(p, c)| *p ^= c);
        aes.encrypt_block(GenericArray::from_mut_slice(&mut pad));
        let data = [cipher1, pad].concat();
        assert_eq!(decrypt(&data, &key, &iv).unwrap(), plain);
        assert!(decrypt(&data[..20], &key, &iv).is_none());
        assert!(decrypt(&data, &[0; 16], &iv).is_none_or(|p| p != plain));
    }

    #[test]
    fn id3_is_stripped() {
        let mut packed = b"ID3\x04\0\0\0\0\0\x03abc".to_vec();
        packed.extend([0xFF, 0xF1]);
        assert_eq!(strip_id3(&packed), &[0xFF, 0xF1]);
        assert_eq!(strip_id3(b"ID3\x04\0\0\0\0\x7F\x7F"), b"");
        assert_eq!(strip_id3(&[1, 2, 3]), &[1, 2, 3]);
    }
}
