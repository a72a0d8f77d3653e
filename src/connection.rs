//! One WebSocket connection after the upgrade: the echo loop, the close handshake and the
//! mapping of every failure to a close code and an end state.
//!
//! Invariants:
//! - every message read is answered (echoed) before anything that comes after it, including
//!   our close frame on shutdown: the drain loses nothing that was read;
//! - writes are batched: echoes are fed while more input is ready, then flushed once;
//! - the loop never returns without recording Closed or Aborted on the tracker.

use std::time::Duration;

use std::future::poll_fn;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
// tokio's clock, not std's: the same one the timer sleeps on (and that tests can pause).
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::metrics::{Kind, Metrics};
use crate::settings::{Settings, Timers};
use crate::state::{AbortReason, ConnState, ConnTracker};

/// How long we wait to hand a close frame to a peer that does not read, and how long we
/// keep reading (and discarding) after failing a connection, so that the peer sees our
/// close frame instead of a reset.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Bytes read and discarded at most while lingering.
const LINGER_MAX_BYTES: usize = 1 << 20;

/// Message contents are logged truncated to this many bytes.
const LOG_CONTENT_MAX: usize = 128;

/// What ended the read loop.
enum Step {
    /// Keep going.
    Continue,
    /// The connection is over; its end state is recorded.
    Done,
}

/// What the connection's one timer asks for when it fires.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    /// Nothing yet (the deadline moved).
    Nothing,
    /// Time for a keepalive ping.
    Ping,
    /// Our ping went unanswered.
    PongTimeout,
    /// No message either way for `idle_timeout`.
    Idle,
    /// `max_lifetime` reached.
    Lifetime,
}

/// Keepalive, idle and lifetime deadlines of one connection, served by a single timer.
struct Deadlines {
    timers: Timers,
    /// When to send the next ping.
    ping_at: Option<Instant>,
    /// When the outstanding ping's pong is due.
    pong_due: Option<Instant>,
    /// When the last message arrived or left (updated once per batch, not per message).
    last_activity: Instant,
    /// When the connection reaches its (jittered) maximum lifetime.
    end_of_life: Option<Instant>,
}

impl Deadlines {
    fn new(timers: Timers, now: Instant) -> Self {
        Deadlines {
            timers,
            ping_at: timers.ping_interval.map(|i| now + i),
            pong_due: None,
            last_activity: now,
            // Up to 10% earlier, at random, so that clients reconnecting together spread out.
            end_of_life: timers
                .max_lifetime
                .map(|l| now + l.mul_f64(1.0 - 0.1 * fastrand::f64())),
        }
    }

    /// The earliest deadline (far away when every timer is off).
    fn next(&self) -> Instant {
        [
            self.ping_at,
            self.pong_due,
            self.timers.idle_timeout.map(|t| self.last_activity + t),
            self.end_of_life,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| self.last_activity + Duration::from_secs(86400 * 365))
    }

    /// What is due at `now`, and the timers rearmed for it.
    fn fire(&mut self, now: Instant) -> Due {
        if self.end_of_life.is_some_and(|t| now >= t) {
            return Due::Lifetime;
        }
        if self.pong_due.is_some_and(|t| now >= t) {
            return Due::PongTimeout;
        }
        if self
            .timers
            .idle_timeout
            .is_some_and(|t| now >= self.last_activity + t)
        {
            return Due::Idle;
        }
        if let (Some(at), Some(interval)) = (self.ping_at, self.timers.ping_interval)
            && now >= at
        {
            self.ping_at = Some(now + interval);
            if self.pong_due.is_none() {
                self.pong_due = Some(now + self.timers.pong_timeout);
            }
            return Due::Ping;
        }
        Due::Nothing
    }

    fn pong_received(&mut self) {
        self.pong_due = None;
    }
}

/// Serves one upgraded connection until it ends, recording its end state on `tracker`.
/// `drain` starts a graceful close with 1000 and the configured reason.
pub async fn serve<S>(
    mut ws: WebSocketStream<S>,
    tracker: &ConnTracker,
    metrics: &Metrics,
    settings: &Settings,
    drain: &CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tracker.set(ConnState::Open);
    let write_timeout = settings.timers.write_timeout;
    let mut deadlines = Deadlines::new(settings.timers, Instant::now());
    let timer = tokio::time::sleep_until(deadlines.next());
    tokio::pin!(timer);
    loop {
        let next = if tracker.state() == ConnState::Open {
            tokio::select! {
                biased;
                () = drain.cancelled() => {
                    let frame = CloseFrame { code: CloseCode::Normal, reason: settings.close_reason.clone() };
                    if Box::pin(send_close(&mut ws, tracker, metrics, frame)).await.is_err() {
                        tracker.aborted(AbortReason::Reset);
                        return;
                    }
                    continue;
                }
                () = &mut timer => {
                    let due = deadlines.fire(Instant::now());
                    let fired = Box::pin(on_timer(&mut ws, due, tracker, metrics, write_timeout));
                    if let Step::Done = fired.await {
                        return;
                    }
                    timer.as_mut().reset(deadlines.next());
                    continue;
                }
                next = ws.next() => next,
            }
        } else {
            ws.next().await
        };
        let mut pending = false;
        let mut data = false;
        let mut batch = Batch {
            pending: &mut pending,
            data: &mut data,
            deadlines: &mut deadlines,
        };
        if let Step::Done = handle(&mut ws, next, tracker, metrics, settings, &mut batch).await {
            return;
        }
        // Batch: take every message that is already here before flushing once.
        while let Some(next) = ws.next().now_or_never() {
            if let Step::Done = handle(&mut ws, next, tracker, metrics, settings, &mut batch).await
            {
                return;
            }
        }
        if data && settings.timers.idle_timeout.is_some() {
            // Data, not pings and pongs, counts as activity.
            deadlines.last_activity = Instant::now();
            timer.as_mut().reset(deadlines.next());
        }
        if pending && let Step::Done = flush(&mut ws, tracker, metrics, write_timeout).await {
            return;
        }
    }
}

/// Per-batch state the message handler updates.
struct Batch<'a> {
    /// Something waits to be flushed.
    pending: &'a mut bool,
    /// A data message arrived.
    data: &'a mut bool,
    /// Keepalive state (pongs clear the outstanding ping).
    deadlines: &'a mut Deadlines,
}

/// Acts on what the timer found due.
async fn on_timer<S>(
    ws: &mut WebSocketStream<S>,
    due: Due,
    tracker: &ConnTracker,
    metrics: &Metrics,
    write_timeout: Duration,
) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (reason, text) = match due {
        Due::Nothing => return Step::Continue,
        Due::Ping => {
            metrics.ping_sent();
            if let Step::Done = feed(
                ws,
                Message::Ping(Bytes::new()),
                tracker,
                metrics,
                write_timeout,
            )
            .await
            {
                return Step::Done;
            }
            return flush(ws, tracker, metrics, write_timeout).await;
        }
        Due::PongTimeout => {
            debug!("no pong in time, aborting");
            tracker.aborted(AbortReason::PongTimeout);
            return Step::Done;
        }
        Due::Idle => (AbortReason::IdleTimeout, "idle timeout"),
        Due::Lifetime => (
            AbortReason::MaxLifetime,
            "maximum connection lifetime reached",
        ),
    };
    debug!("{text}, closing");
    let frame = CloseFrame {
        code: CloseCode::Away,
        reason: Utf8Bytes::from_static(text),
    };
    let _ = send_close(ws, tracker, metrics, frame).await;
    linger(ws.get_mut()).await;
    tracker.aborted(reason);
    Step::Done
}

/// Handles one item from the stream.
async fn handle<S>(
    ws: &mut WebSocketStream<S>,
    next: Option<Result<Message, WsError>>,
    tracker: &ConnTracker,
    metrics: &Metrics,
    settings: &Settings,
    batch: &mut Batch<'_>,
) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let write_timeout = settings.timers.write_timeout;
    let msg = match next {
        Some(Ok(msg)) => msg,
        // Boxed, like the other rare paths, to keep every connection's future small.
        Some(Err(e)) => return Box::pin(failed(ws, e, tracker, metrics)).await,
        None => {
            // tokio-tungstenite ends the stream only after a close handshake.
            end_after_close(tracker);
            return Step::Done;
        }
    };
    match msg {
        Message::Text(text) => {
            if settings.count_messages {
                metrics.message_received(Kind::Text, text.len());
            }
            log_message(settings, Kind::Text, text.as_bytes());
            if tracker.state() != ConnState::Open {
                // Read after our close frame: the peer will not get an answer (RFC 6455 5.5.1).
                return Step::Continue;
            }
            let reply = match &settings.reply_prefix {
                None => text,
                Some(prefix) => {
                    let mut s = String::with_capacity(prefix.len() + text.len());
                    s.push_str(prefix);
                    s.push_str(&text);
                    Utf8Bytes::from(s)
                }
            };
            if settings.count_messages {
                metrics.message_sent(Kind::Text, reply.len());
            }
            *batch.pending = true;
            *batch.data = true;
            feed(ws, Message::Text(reply), tracker, metrics, write_timeout).await
        }
        Message::Binary(data) => {
            if settings.count_messages {
                metrics.message_received(Kind::Binary, data.len());
            }
            log_message(settings, Kind::Binary, &data);
            if tracker.state() != ConnState::Open {
                return Step::Continue;
            }
            if settings.count_messages {
                metrics.message_sent(Kind::Binary, data.len());
            }
            *batch.pending = true;
            *batch.data = true;
            feed(ws, Message::Binary(data), tracker, metrics, write_timeout).await
        }
        Message::Ping(_) => {
            // tungstenite queued the pong; it goes out with the next flush.
            metrics.ping_received();
            *batch.pending = true;
            Step::Continue
        }
        Message::Pong(_) => {
            metrics.pong_received();
            batch.deadlines.pong_received();
            Step::Continue
        }
        Message::Close(frame) => {
            let code = frame.as_ref().map(|f| u16::from(f.code));
            metrics.close_received(code);
            debug!(code = ?code, reason = frame.as_ref().map(|f| f.reason.as_str()), "close received");
            if tracker.state() == ConnState::CloseSent {
                // The peer answered our close: the handshake is complete.
                tracker.closed();
                return Step::Done;
            }
            // The peer closed first. tungstenite queued a reply carrying the peer's code and
            // reason (or 1002 if that code may not be sent); flush it, then end.
            tracker.set(ConnState::CloseReceived);
            let reply = frame.map(|f| {
                if f.code.is_allowed() {
                    u16::from(f.code)
                } else {
                    u16::from(CloseCode::Protocol)
                }
            });
            match Box::pin(tokio::time::timeout(CLOSE_LINGER, ws.flush())).await {
                Ok(Ok(())) | Ok(Err(WsError::ConnectionClosed)) => {
                    metrics.close_sent(reply);
                    tracker.closed();
                }
                _ => tracker.aborted(AbortReason::Reset),
            }
            Step::Done
        }
        Message::Frame(_) => Step::Continue,
    }
}

/// Queues a message. tokio-tungstenite writes to the socket only when its buffer is full or
/// on flush; while the peer does not read we wait (backpressure: we stop reading too), but
/// no longer than `write_timeout`.
async fn feed<S>(
    ws: &mut WebSocketStream<S>,
    msg: Message,
    tracker: &ConnTracker,
    metrics: &Metrics,
    write_timeout: Duration,
) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ready = match poll_fn(|cx| ws.poll_ready_unpin(cx)).now_or_never() {
        Some(r) => Ok(r),
        // Only a blocked peer costs a timer.
        None => {
            Box::pin(tokio::time::timeout(
                write_timeout,
                poll_fn(|cx| ws.poll_ready_unpin(cx)),
            ))
            .await
        }
    };
    let result = match ready {
        Ok(Ok(())) => ws.start_send_unpin(msg),
        Ok(Err(e)) => Err(e),
        Err(_) => return Box::pin(write_timed_out(ws, tracker, metrics)).await,
    };
    match result {
        Ok(()) => Step::Continue,
        Err(e) => {
            debug!(error = %e, "write failed");
            tracker.aborted(AbortReason::Reset);
            Step::Done
        }
    }
}

/// Flushes what was queued, bounded by `write_timeout`.
async fn flush<S>(
    ws: &mut WebSocketStream<S>,
    tracker: &ConnTracker,
    metrics: &Metrics,
    write_timeout: Duration,
) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let result = match ws.flush().now_or_never() {
        Some(r) => Ok(r),
        None => Box::pin(tokio::time::timeout(write_timeout, ws.flush())).await,
    };
    match result {
        Ok(Ok(())) => Step::Continue,
        Ok(Err(e)) => {
            debug!(error = %e, "write failed");
            tracker.aborted(AbortReason::Reset);
            Step::Done
        }
        Err(_) => Box::pin(write_timed_out(ws, tracker, metrics)).await,
    }
}

/// The peer has not taken our data for `write_timeout`: try to say 1008, then give up.
async fn write_timed_out<S>(
    ws: &mut WebSocketStream<S>,
    tracker: &ConnTracker,
    metrics: &Metrics,
) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    debug!("peer does not read, closing");
    let frame = CloseFrame {
        code: CloseCode::Policy,
        reason: Utf8Bytes::from_static("write timeout: read your messages"),
    };
    // Best effort: the peer is not reading, so this rarely gets through.
    let _ = tokio::time::timeout(
        Duration::from_millis(100),
        send_close(ws, tracker, metrics, frame),
    )
    .await;
    tracker.aborted(AbortReason::WriteTimeout);
    Step::Done
}

/// The stream ended: Closed if the close handshake completed, else Aborted.
fn end_after_close(tracker: &ConnTracker) {
    match tracker.state() {
        ConnState::CloseSent | ConnState::CloseReceived => tracker.closed(),
        _ => tracker.aborted(AbortReason::Reset),
    }
}

/// Maps a read error to the close code RFC 6455 asks for, fails the connection with it and
/// records Aborted.
async fn failed<S>(
    ws: &mut WebSocketStream<S>,
    e: WsError,
    tracker: &ConnTracker,
    metrics: &Metrics,
) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (code, reason) = match &e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            end_after_close(tracker);
            return Step::Done;
        }
        WsError::Io(_) | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            debug!(error = %e, "connection reset");
            // A peer that half-closed may still read: deliver the echoes of this batch.
            let _ = tokio::time::timeout(CLOSE_LINGER, ws.flush()).await;
            tracker.aborted(AbortReason::Reset);
            return Step::Done;
        }
        WsError::Utf8(_) => (CloseCode::Invalid, "invalid UTF-8 in text message"),
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            (CloseCode::Size, "message too big")
        }
        WsError::Capacity(_) => (CloseCode::Size, "too big"),
        WsError::Protocol(_) => (CloseCode::Protocol, "protocol error"),
        _ => (CloseCode::Error, "internal error"),
    };
    debug!(error = %e, code = u16::from(code), "failing the connection");
    if tracker.state() == ConnState::Open {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = send_close(ws, tracker, metrics, frame).await;
    }
    linger(ws.get_mut()).await;
    tracker.aborted(AbortReason::ProtocolError);
    Step::Done
}

/// Sends our close frame first (Open → CloseSent), bounded in time.
async fn send_close<S>(
    ws: &mut WebSocketStream<S>,
    tracker: &ConnTracker,
    metrics: &Metrics,
    frame: CloseFrame,
) -> Result<(), ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let code = u16::from(frame.code);
    tracker.set(ConnState::CloseSent);
    match tokio::time::timeout(CLOSE_LINGER, ws.close(Some(frame))).await {
        Ok(Ok(())) => {
            metrics.close_sent(Some(code));
            Ok(())
        }
        _ => Err(()),
    }
}

/// After failing a connection: half-close and discard what the peer still sends, for a
/// short while, so the kernel does not answer it with a reset that could destroy our
/// close frame before the peer reads it.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) {
    let discard = async {
        let _ = io.shutdown().await;
        // On the heap: an array here would sit in every connection's future, used or not.
        let mut buf = vec![0u8; 4096];
        let mut total = 0;
        while total < LINGER_MAX_BYTES {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, discard).await;
}

fn log_message(settings: &Settings, kind: Kind, payload: &[u8]) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    if settings.log_message_content {
        let shown = &payload[..payload.len().min(LOG_CONTENT_MAX)];
        let content = match kind {
            Kind::Text => String::from_utf8_lossy(shown).into_owned(),
            Kind::Binary => shown.iter().map(|b| format!("{b:02x}")).collect(),
        };
        debug!(
            r#type = kind.label(),
            size = payload.len(),
            truncated = payload.len() > LOG_CONTENT_MAX,
            content,
            "message"
        );
    } else {
        debug!(r#type = kind.label(), size = payload.len(), "message");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::DuplexStream;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

    use super::*;

    struct Harness {
        client: WebSocketStream<DuplexStream>,
        metrics: Arc<Metrics>,
        drain: CancellationToken,
        server: tokio::task::JoinHandle<()>,
    }

    async fn start(settings: Settings) -> Harness {
        let (a, b) = tokio::io::duplex(1 << 16);
        let metrics = Arc::new(Metrics::new());
        let drain = CancellationToken::new();
        let server = {
            let (metrics, drain) = (metrics.clone(), drain.clone());
            tokio::spawn(async move {
                let ws = WebSocketStream::from_raw_socket(a, Role::Server, Some(settings.ws)).await;
                let tracker = ConnTracker::new(metrics.clone());
                serve(ws, &tracker, &metrics, &settings, &drain).await;
            })
        };
        let cfg = WebSocketConfig::default()
            .max_frame_size(None)
            .max_message_size(None);
        let client = WebSocketStream::from_raw_socket(b, Role::Client, Some(cfg)).await;
        Harness {
            client,
            metrics,
            drain,
            server,
        }
    }

    async fn recv(ws: &mut WebSocketStream<DuplexStream>) -> Message {
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no answer within 5 s")
            .expect("stream ended")
            .expect("read error")
    }

    async fn finish(h: Harness) -> Arc<Metrics> {
        tokio::time::timeout(Duration::from_secs(5), h.server)
            .await
            .expect("server did not end")
            .unwrap();
        h.metrics
    }

    #[tokio::test]
    async fn echoes_text_and_binary_keeping_type() {
        let mut h = start(Settings::default()).await;
        h.client.send(Message::text("hello")).await.unwrap();
        assert_eq!(recv(&mut h.client).await, Message::text("hello"));
        h.client
            .send(Message::binary(vec![0u8, 1, 255]))
            .await
            .unwrap();
        assert_eq!(
            recv(&mut h.client).await,
            Message::binary(vec![0u8, 1, 255])
        );
        h.client.close(None).await.unwrap();
        assert!(matches!(recv(&mut h.client).await, Message::Close(None)));
        let m = finish(h).await;
        assert_eq!(m.ended(ConnState::Closed), 1);
        assert_eq!(m.messages_received_total(), 2);
    }

    #[tokio::test]
    async fn pipelined_messages_come_back_in_order() {
        let mut h = start(Settings::default()).await;
        for i in 0..500 {
            h.client.feed(Message::text(i.to_string())).await.unwrap();
        }
        h.client.flush().await.unwrap();
        for i in 0..500 {
            assert_eq!(recv(&mut h.client).await, Message::text(i.to_string()));
        }
    }

    #[tokio::test]
    async fn reply_prefix_applies_to_text_only() {
        let mut h = start(Settings {
            reply_prefix: Some("서버에서 응답: ".into()),
            ..Settings::default()
        })
        .await;
        h.client.send(Message::text("안녕")).await.unwrap();
        assert_eq!(
            recv(&mut h.client).await,
            Message::text("서버에서 응답: 안녕")
        );
        h.client.send(Message::binary(vec![1u8])).await.unwrap();
        assert_eq!(recv(&mut h.client).await, Message::binary(vec![1u8]));
    }

    #[tokio::test]
    async fn client_close_is_answered_with_its_code_and_reason() {
        let mut h = start(Settings::default()).await;
        let frame = CloseFrame {
            code: CloseCode::Away,
            reason: "bye".into(),
        };
        h.client.close(Some(frame.clone())).await.unwrap();
        assert_eq!(recv(&mut h.client).await, Message::Close(Some(frame)));
        let m = finish(h).await;
        assert_eq!(m.ended(ConnState::Closed), 1);
    }

    #[tokio::test]
    async fn pings_are_answered() {
        let mut h = start(Settings::default()).await;
        h.client
            .send(Message::Ping(vec![7u8].into()))
            .await
            .unwrap();
        assert_eq!(recv(&mut h.client).await, Message::Pong(vec![7u8].into()));
    }

    #[tokio::test]
    async fn too_big_message_gets_1009() {
        let mut s = Settings::default();
        s.ws = s.ws.max_message_size(Some(1000)).max_frame_size(Some(1000));
        let mut h = start(s).await;
        h.client
            .send(Message::binary(vec![0u8; 1001]))
            .await
            .unwrap();
        let Message::Close(Some(f)) = recv(&mut h.client).await else {
            panic!("expected a close frame")
        };
        assert_eq!(f.code, CloseCode::Size);
        drop(h.client);
        let m = tokio::time::timeout(Duration::from_secs(5), h.server).await;
        m.unwrap().unwrap();
        assert_eq!(h.metrics.aborted_for(AbortReason::ProtocolError), 1);
    }

    #[tokio::test]
    async fn fragmented_message_is_reassembled_up_to_the_limit() {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        let mut s = Settings::default();
        s.ws = s.ws.max_message_size(Some(1000)).max_frame_size(Some(1000));
        let mut h = start(s).await;
        let part = |op, fin, data: &[u8]| {
            let mut f = Frame::message(data.to_vec(), op, fin);
            f.header_mut().is_final = fin;
            Message::Frame(f)
        };
        h.client
            .send(part(OpCode::Data(Data::Text), false, b"hel"))
            .await
            .unwrap();
        h.client
            .send(part(OpCode::Data(Data::Continue), true, b"lo"))
            .await
            .unwrap();
        assert_eq!(recv(&mut h.client).await, Message::text("hello"));
        // 3 × 400 bytes: every frame fits, the message does not.
        h.client
            .send(part(OpCode::Data(Data::Binary), false, &[0; 400]))
            .await
            .unwrap();
        h.client
            .send(part(OpCode::Data(Data::Continue), false, &[0; 400]))
            .await
            .unwrap();
        h.client
            .send(part(OpCode::Data(Data::Continue), true, &[0; 400]))
            .await
            .unwrap();
        let Message::Close(Some(f)) = recv(&mut h.client).await else {
            panic!("expected a close frame")
        };
        assert_eq!(f.code, CloseCode::Size);
    }

    #[tokio::test]
    async fn invalid_utf8_gets_1007() {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        let mut h = start(Settings::default()).await;
        let f = Frame::message(vec![0xff, 0xfe], OpCode::Data(Data::Text), true);
        h.client.send(Message::Frame(f)).await.unwrap();
        let Message::Close(Some(f)) = recv(&mut h.client).await else {
            panic!("expected a close frame")
        };
        assert_eq!(f.code, CloseCode::Invalid);
    }

    #[tokio::test]
    async fn drain_echoes_what_was_read_then_closes_with_1000() {
        let mut h = start(Settings {
            close_reason: "bye now".into(),
            ..Settings::default()
        })
        .await;
        h.client.send(Message::text("before")).await.unwrap();
        assert_eq!(recv(&mut h.client).await, Message::text("before"));
        h.drain.cancel();
        let Message::Close(Some(f)) = recv(&mut h.client).await else {
            panic!("expected a close frame")
        };
        assert_eq!((f.code, f.reason.as_str()), (CloseCode::Normal, "bye now"));
        // Our reply completes the handshake (tungstenite sends it on the next poll).
        assert!(h.client.next().await.is_none());
        let m = finish(h).await;
        assert_eq!(m.ended(ConnState::Closed), 1);
        assert_eq!(m.ended(ConnState::Aborted), 0);
    }

    #[tokio::test]
    async fn reset_without_close_is_aborted() {
        let h = start(Settings::default()).await;
        drop(h.client);
        let m = tokio::time::timeout(Duration::from_secs(5), h.server).await;
        m.unwrap().unwrap();
        assert_eq!(h.metrics.aborted_for(AbortReason::Reset), 1);
    }
}
