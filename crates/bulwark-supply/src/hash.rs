//! SHA-256 and BLAKE3 of a file in one read: the reader thread fills 4 MiB buffers and
//! each hash runs on its own thread, so the slower of the two sets the pace, not their
//! sum.

use std::io::Read;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use sha2::{Digest, Sha256};

const CHUNK: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub size: u64,
    pub sha256: String,
    pub blake3: String,
}

/// Hashes `path`, calling `progress` with the bytes read so far.
pub fn file(path: &Path, progress: &dyn Fn(u64)) -> std::io::Result<Digests> {
    let mut f = std::fs::File::open(path)?;
    let (tx_s, rx_s) = mpsc::sync_channel::<Arc<Vec<u8>>>(4);
    let (tx_b, rx_b) = mpsc::sync_channel::<Arc<Vec<u8>>>(4);
    let sha = std::thread::spawn(move || {
        let mut h = Sha256::new();
        for c in rx_s {
            h.update(&c[..]);
        }
        hex::encode(h.finalize())
    });
    let b3 = std::thread::spawn(move || {
        let mut h = blake3::Hasher::new();
        for c in rx_b {
            h.update(&c[..]);
        }
        h.finalize().to_hex().to_string()
    });
    let mut size = 0u64;
    let read = (|| -> std::io::Result<()> {
        loop {
            let mut buf = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                let n = f.read(&mut buf[filled..])?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                return Ok(());
            }
            buf.truncate(filled);
            size += filled as u64;
            let buf = Arc::new(buf);
            if tx_s.send(Arc::clone(&buf)).is_err() || tx_b.send(buf).is_err() {
                return Err(std::io::Error::other("a hashing thread stopped"));
            }
            progress(size);
            if filled < CHUNK {
                return Ok(());
            }
        }
    })();
    drop((tx_s, tx_b));
    let sha256 = sha
        .join()
        .map_err(|_| std::io::Error::other("SHA-256 thread panicked"))?;
    let blake3 = b3
        .join()
        .map_err(|_| std::io::Error::other("BLAKE3 thread panicked"))?;
    read?;
    Ok(Digests {
        size,
        sha256,
        blake3,
    })
}
