//! A blob body's chunks that have already arrived, passed on as one.
//!
//! Over TLS a body comes one record (at most 16 KiB) at a time; handing
//! each to the disk side alone costs a channel message and a wakeup per
//! record. Gathering what is ready never waits for more data, so it adds
//! no latency, and is bounded, so memory stays bounded.

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, Stream, StreamExt};

/// `body`, with the chunks ready at each step joined up to about `max`
/// bytes. An error comes after the bytes that arrived before it.
pub fn coalesce<E>(
    body: impl Stream<Item = Result<Bytes, E>> + Send + 'static,
    max: usize,
) -> impl Stream<Item = Result<Bytes, E>> + Send
where
    E: Send + 'static,
{
    let state = (Box::pin(body.fuse()), None::<E>);
    futures_util::stream::unfold(state, move |(mut body, pending)| async move {
        if let Some(e) = pending {
            return Some((Err(e), (body, None)));
        }
        let first = match body.next().await? {
            Ok(b) => b,
            Err(e) => return Some((Err(e), (body, None))),
        };
        let mut joined: Option<BytesMut> = None;
        let mut pending = None;
        while joined.as_ref().map_or(first.len(), BytesMut::len) < max {
            match body.next().now_or_never() {
                Some(Some(Ok(more))) => joined
                    .get_or_insert_with(|| BytesMut::from(&first[..]))
                    .extend_from_slice(&more),
                Some(Some(Err(e))) => {
                    pending = Some(e);
                    break;
                }
                // Nothing more yet, or the end.
                _ => break,
            }
        }
        let out = joined.map_or(first, BytesMut::freeze);
        Some((Ok(out), (body, pending)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    fn chunks(n: u8, len: usize) -> Vec<Result<Bytes, String>> {
        (0..n).map(|i| Ok(Bytes::from(vec![i; len]))).collect()
    }

    #[tokio::test]
    async fn ready_chunks_are_joined_up_to_the_bound() {
        let out: Vec<_> = coalesce(stream::iter(chunks(10, 16)), 64)
            .collect::<Vec<_>>()
            .await;
        let lens: Vec<usize> = out.iter().map(|r| r.as_ref().unwrap().len()).collect();
        assert_eq!(lens, vec![64, 64, 32]);
        let all: Vec<u8> = out.into_iter().flat_map(|r| r.unwrap().to_vec()).collect();
        let want: Vec<u8> = (0..10u8).flat_map(|i| vec![i; 16]).collect();
        assert_eq!(all, want);
    }

    #[tokio::test]
    async fn an_error_comes_after_the_bytes_before_it() {
        let mut items = chunks(2, 8);
        items.push(Err("cut".to_string()));
        items.extend(chunks(1, 8));
        let out: Vec<_> = coalesce(stream::iter(items), 1 << 20).collect().await;
        assert_eq!(out[0].as_ref().unwrap().len(), 16);
        assert_eq!(out[1].as_ref().unwrap_err(), "cut");
    }

    #[tokio::test]
    async fn a_chunk_not_yet_arrived_is_not_waited_for() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, String>>();
        tx.send(Ok(Bytes::from_static(b"ab"))).unwrap();
        let rx = stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut out = Box::pin(coalesce(rx, 1 << 20));
        assert_eq!(
            out.next().await.unwrap().unwrap(),
            Bytes::from_static(b"ab")
        );
        tx.send(Ok(Bytes::from_static(b"cd"))).unwrap();
        drop(tx);
        assert_eq!(
            out.next().await.unwrap().unwrap(),
            Bytes::from_static(b"cd")
        );
        assert!(out.next().await.is_none());
    }
}
