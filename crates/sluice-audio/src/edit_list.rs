//! The MP4 edit list (`elst`) of one track, read by hand because symphonia 0.5 parses but
//! discards it (Symphonia issue #544): without it AAC decodes with the encoder's priming
//! samples in front (1024 for ffmpeg, 2112 for Apple) and the last frame's padding behind.
//!
//! Only the three fields needed are read (movie and media timescales, one edit), and any layout
//! this does not expect yields `None`, so the caller falls back to the untrimmed stream.

/// Frames to drop at the start and (when the edit states it) frames to keep after that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Edit {
    pub skip: u64,
    pub keep: Option<u64>,
}

/// The edit of the `track`-th `trak` (symphonia's track id), scaled to `sample_rate` frames.
pub(crate) fn audio_edit(file: &[u8], track: usize, sample_rate: u32) -> Option<Edit> {
    let moov = children(file).find(|(kind, _)| kind == b"moov")?.1;
    let movie_scale = timescale(child(moov, b"mvhd")?)?;
    let trak = children(moov)
        .filter(|(kind, _)| kind == b"trak")
        .nth(track)?
        .1;
    let mdia = child(trak, b"mdia")?;
    let hdlr = child(mdia, b"hdlr")?;
    if hdlr.get(8..12)? != b"soun" {
        return None;
    }
    let media_scale = timescale(child(mdia, b"mdhd")?)?;
    let elst = child(child(trak, b"edts")?, b"elst")?;
    let (version, count) = (*elst.first()?, be_u32(elst.get(4..8)?)?);
    // Several edits (or an empty edit that inserts silence) describe a timeline, not a trim.
    if count != 1 {
        return None;
    }
    let (duration, media_time) = if version == 1 {
        (be_u64(elst.get(8..16)?)?, be_u64(elst.get(16..24)?)? as i64)
    } else {
        (
            u64::from(be_u32(elst.get(8..12)?)?),
            i64::from(be_u32(elst.get(12..16)?)? as i32),
        )
    };
    let media_time = u64::try_from(media_time).ok()?;
    let rate = u64::from(sample_rate);
    Some(Edit {
        skip: scale(media_time, rate, media_scale),
        // A zero duration is what fragmented files write: "the whole media", so keep it all.
        keep: (duration > 0).then(|| scale(duration, rate, movie_scale)),
    })
}

/// Largest `moov` read: the sample tables of a day of AAC fit many times over.
const MAX_MOOV: u64 = 256 << 20;

/// The `moov` box of an MP4 file (header and body, as [`audio_edit`] takes it), found by walking
/// the top-level boxes with seeks, so a long file's media data is never read; `None` when there
/// is none or the layout is not understood.
pub(crate) fn read_moov<R: std::io::Read + std::io::Seek>(
    file: &mut R,
) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::SeekFrom;
    let mut at = file.seek(SeekFrom::Start(0))?;
    let end = file.seek(SeekFrom::End(0))?;
    while at + 8 <= end {
        file.seek(SeekFrom::Start(at))?;
        let mut header = [0u8; 16];
        file.read_exact(&mut header[..8])?;
        let kind: [u8; 4] = header[4..8].try_into().expect("four bytes");
        let (header_len, size) = match u64::from(u32::from_be_bytes(
            header[..4].try_into().expect("four bytes"),
        )) {
            0 => (8, end - at),
            1 => {
                file.read_exact(&mut header[8..16])?;
                (
                    16,
                    u64::from_be_bytes(header[8..16].try_into().expect("eight bytes")),
                )
            }
            n => (8, n),
        };
        if size < header_len || at + size > end {
            return Ok(None);
        }
        if &kind == b"moov" {
            if size > MAX_MOOV {
                return Ok(None);
            }
            let mut moov = vec![0u8; size as usize];
            file.seek(SeekFrom::Start(at))?;
            file.read_exact(&mut moov)?;
            return Ok(Some(moov));
        }
        at += size;
    }
    Ok(None)
}

/// `value * to / from`, rounded to nearest.
fn scale(value: u64, to: u64, from: u64) -> u64 {
    let (v, t, f) = (u128::from(value), u128::from(to), u128::from(from));
    ((2 * v * t + f) / (2 * f)) as u64
}

/// The `timescale` field of an `mvhd` or `mdhd` body (same layout in both).
fn timescale(body: &[u8]) -> Option<u64> {
    let at = if *body.first()? == 1 { 20 } else { 12 };
    let scale = be_u32(body.get(at..at + 4)?)?;
    (scale > 0).then_some(u64::from(scale))
}

fn child<'a>(body: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    children(body).find(|(k, _)| k == kind).map(|(_, b)| b)
}

/// Iterates the boxes laid end to end in `data`, stopping at the first malformed header.
fn children(mut data: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        let size = u64::from(be_u32(data.get(0..4)?)?);
        let kind: [u8; 4] = data.get(4..8)?.try_into().ok()?;
        let (header, size) = match size {
            0 => (8, data.len() as u64),
            1 => (16, be_u64(data.get(8..16)?)?),
            n => (8, n),
        };
        let size = usize::try_from(size).ok()?;
        if size < header || size > data.len() {
            return None;
        }
        let body = &data[header..size];
        data = &data[size..];
        Some((kind, body))
    })
}

fn be_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}
