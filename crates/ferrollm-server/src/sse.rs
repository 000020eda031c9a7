//! Server-sent events for streamed completions.
//!
//! The response body owns the engine's request streams. When a client goes away, hyper drops
//! the body at its next write, which drops the `RequestStream`s, whose `Drop` aborts the
//! requests and frees their KV blocks. Nothing here may hold a stream anywhere else.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ferrollm_engine::RequestOutput;
use futures::stream::{self, BoxStream, StreamExt};

use crate::errors::ApiError;

/// Turns engine deltas into chunk payloads (JSON text, one per SSE event).
pub trait ChunkFormatter: Send + 'static {
    /// Chunks for one delta of prompt `prompt`. An error ends the stream with an error event.
    fn on_output(&mut self, prompt: usize, out: RequestOutput) -> Result<Vec<String>, ApiError>;
    /// Chunks after every request finished (the usage chunk).
    fn on_end(&mut self) -> Vec<String>;
}

struct BodyState<F> {
    outputs: BoxStream<'static, (usize, RequestOutput)>,
    formatter: F,
    queue: VecDeque<String>,
    finished: bool,
}

/// The SSE response: each chunk as `data: {json}`, then `data: [DONE]`, as OpenAI sends.
pub fn sse_response<F: ChunkFormatter>(outputs: BoxStream<'static, (usize, RequestOutput)>, formatter: F) -> Response {
    let state = BodyState { outputs, formatter, queue: VecDeque::new(), finished: false };
    let events = stream::unfold(state, |mut st| async move {
        loop {
            if let Some(data) = st.queue.pop_front() {
                return Some((Ok::<_, Infallible>(Event::default().data(data)), st));
            }
            if st.finished {
                return None;
            }
            match st.outputs.next().await {
                Some((prompt, out)) => match st.formatter.on_output(prompt, out) {
                    Ok(chunks) => st.queue.extend(chunks),
                    Err(e) => {
                        // The status line has gone out as 200; the error travels as an event,
                        // as vLLM does. Dropping the outputs aborts the other requests.
                        st.outputs = stream::empty().boxed();
                        st.queue.push_back(e.body_json());
                        st.queue.push_back("[DONE]".into());
                        st.finished = true;
                    }
                },
                None => {
                    st.queue.extend(st.formatter.on_end());
                    st.queue.push_back("[DONE]".into());
                    st.finished = true;
                }
            }
        }
    });
    // Keep-alive comments let a client's disconnect surface while a request waits in the queue.
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))).into_response()
}
