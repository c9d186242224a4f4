//! Reading an answer's body as it passes to the client, without holding it back: the
//! cache stores a copy, the meter reads its usage.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::header;

type Done = Box<dyn FnOnce(Vec<u8>) + Send>;

struct Tap {
    /// `None` once given up (too large, failed) or handed over.
    buf: Option<Vec<u8>>,
    done: Option<Done>,
}

impl Tap {
    /// The whole body and what to do with it, at most once.
    fn take(&mut self) -> Option<(Vec<u8>, Done)> {
        Some((self.buf.take()?, self.done.take()?))
    }
}

/// Calls `done` once with the whole body after it has passed through: when its declared
/// `Content-Length` is reached (hyper may stop polling then) or when it ends. A body
/// larger than `limit`, or one that fails, is given up on and `done` is not called.
pub fn on_whole_body(
    resp: Response,
    limit: usize,
    done: impl FnOnce(Vec<u8>) + Send + 'static,
) -> Response {
    let declared = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let (parts, body) = resp.into_parts();
    let tap = Arc::new(Mutex::new(Tap {
        buf: Some(Vec::new()),
        done: Some(Box::new(done)),
    }));
    let seen = Arc::clone(&tap);
    let data = body.into_data_stream().map(move |chunk| {
        let whole = {
            let mut t = crate::lock(&seen);
            let grown = match (&chunk, t.buf.as_mut()) {
                (Ok(bytes), Some(buf)) if buf.len() + bytes.len() <= limit => {
                    buf.extend_from_slice(bytes);
                    Some(buf.len())
                }
                _ => None,
            };
            match grown {
                None => {
                    t.buf = None;
                    None
                }
                Some(len) if Some(len) == declared => t.take(),
                Some(_) => None,
            }
        };
        if let Some((body, done)) = whole {
            done(body);
        }
        chunk
    });
    let at_end = stream::once(async move {
        let whole = crate::lock(&tap).take();
        if let Some((body, done)) = whole {
            done(body);
        }
    })
    .filter_map(|()| async { None::<Result<Bytes, axum::Error>> });
    Response::from_parts(parts, Body::from_stream(data.chain(at_end)))
}
