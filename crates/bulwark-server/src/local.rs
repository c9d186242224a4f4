//! Completions served by an in-process engine, streamed or not.
//!
//! A response stream owns its [`Generation`]: when the client disconnects, hyper drops
//! the body, the generation is dropped with it, and the engine frees the sequence at
//! its next step.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::{IntoResponse, Response};
use axum::Json;
use bulwark_api::chat::ChatRequest;
use bulwark_api::completions::CompletionRequest;
use bulwark_api::response::{
    ChatChoice, ChatChunk, ChatCompletion, ChunkChoice, Delta, FinishReason, FunctionDelta,
    TextChoice, TextCompletion, ToolCallDelta, Usage,
};
use bulwark_api::{ApiError, ErrorKind};
use bulwark_engine::watermark::Marker;
use bulwark_engine::{Engine, Event, Generation};
use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};

use crate::error::Error;
use crate::plan::{self, Reading};
use crate::sse;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unsupported(param: &str, what: &str) -> Error {
    Error(
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("{what} is not supported by the local engine yet."),
        )
        .with_param(param)
        .with_code(bulwark_api::ErrorCode::UnsupportedParameter),
    )
}

/// What a finished generation produced.
struct Collected {
    text: String,
    finish: FinishReason,
    usage: Usage,
}

async fn collect(mut generation: Generation) -> Result<Collected, Error> {
    let mut text = String::new();
    while let Some(ev) = generation.events.recv().await {
        match ev {
            Event::Delta(d) => text.push_str(&d),
            Event::Done { finish, usage } => {
                return Ok(Collected {
                    text,
                    finish,
                    usage,
                })
            }
            Event::Failed(msg) => {
                return Err(Error(
                    ApiError::new(ErrorKind::Internal, msg)
                        .with_code(bulwark_api::ErrorCode::EngineError),
                ))
            }
        }
    }
    Err(Error(
        ApiError::new(
            ErrorKind::Internal,
            "The local engine stopped mid-generation.",
        )
        .with_code(bulwark_api::ErrorCode::EngineError),
    ))
}

/// Puts the watermark's disclosure on an answer that carries it.
fn disclose(mut resp: Response, mark: Option<&Marker>) -> Response {
    if let Some(marker) = mark {
        resp.headers_mut().insert(
            crate::WATERMARK_HEADER,
            crate::route::header_value(&marker.disclosure()),
        );
    }
    resp
}

/// `mark`: the watermark to write the answer with; answers read for tool calls and
/// constrained ones (JSON under a schema) are never marked.
pub async fn chat(
    engine: Arc<Engine>,
    req: ChatRequest,
    mark: Option<Marker>,
) -> Result<Response, Error> {
    if req.wants_logprobs {
        return Err(unsupported("logprobs", "`logprobs`"));
    }
    let plan = plan::plan(&engine, &req)?;
    let mark = mark.filter(|_| plan.grammar.is_none() && matches!(plan.reading, Reading::Text));
    chat_planned(engine, req, plan, mark.as_ref())
        .await
        .map(|resp| disclose(resp, mark.as_ref()))
}

async fn chat_planned(
    engine: Arc<Engine>,
    req: ChatRequest,
    plan: plan::Plan,
    mark: Option<&Marker>,
) -> Result<Response, Error> {
    let prompt = engine.tokenize(&plan.prompt)?;
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = now();
    // Choice `i` samples with `seed + i` when a seed is given (so that the choices
    // differ), else with its own random seed.
    let mut generations = Vec::with_capacity(req.n as usize);
    for i in 0..req.n {
        let mut sampling = req.sampling.clone();
        sampling.seed = sampling.seed.map(|s| s.wrapping_add(i));
        generations.push(match mark {
            Some(marker) => engine.generate_watermarked(prompt.clone(), sampling, marker.clone()),
            None => engine.generate_constrained(prompt.clone(), sampling, plan.grammar.clone()),
        }?);
    }
    if req.stream && matches!(plan.reading, Reading::Text) {
        return Ok(sse::response(if generations.len() == 1 {
            let generation = generations.pop().ok_or_else(stopped)?;
            chat_stream(generation, id, created, req.model, req.include_usage).left_stream()
        } else {
            chat_stream_n(generations, id, created, req.model, req.include_usage).right_stream()
        }));
    }
    // Tool calls are read from a whole choice, so those answers stream once decoded.
    let done = futures_util::future::try_join_all(generations.into_iter().map(collect)).await?;
    let prompt_tokens = done.first().map_or(0, |d| d.usage.prompt_tokens);
    let completion_tokens = done.iter().map(|d| d.usage.completion_tokens).sum();
    let usage = Usage::new(prompt_tokens, completion_tokens);
    let choices: Vec<ChatChoice> = done
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let (message, finish_reason) = plan.reading.message(d.text, d.finish);
            ChatChoice {
                index: i as u32,
                message,
                finish_reason,
                logprobs: None,
            }
        })
        .collect();
    if req.stream {
        return Ok(sse::response(stream::iter(
            whole_choices_stream(&choices, &id, created, &req.model, req.include_usage, usage)
                .into_iter()
                .map(Ok),
        )));
    }
    Ok(Json(ChatCompletion {
        id,
        object: "chat.completion",
        created,
        model: req.model,
        choices,
        usage,
    })
    .into_response())
}

fn stopped() -> Error {
    Error::from(bulwark_engine::EngineError::Stopped)
}

/// The chunks of answers already complete: per choice a role chunk, its text, each tool
/// call as OpenAI streams one (a chunk with its id and name, then one with its
/// arguments), and its finish chunk; then the usage chunk when asked for, and `[DONE]`.
fn whole_choices_stream(
    choices: &[ChatChoice],
    id: &str,
    created: u64,
    model: &str,
    include_usage: bool,
    usage: Usage,
) -> Vec<Bytes> {
    let usage_field = include_usage.then_some(None);
    let chunk = |index: u32, delta: Delta<'_>, finish: Option<FinishReason>| {
        sse::event(&ChatChunk {
            id,
            object: "chat.completion.chunk",
            created,
            model,
            choices: vec![ChunkChoice {
                index,
                delta,
                finish_reason: finish,
                logprobs: None,
            }],
            usage: usage_field,
        })
    };
    let mut out = Vec::new();
    for c in choices {
        out.push(chunk(c.index, Delta::role(), None));
        if let Some(text) = c.message.content.as_deref().filter(|t| !t.is_empty()) {
            out.push(chunk(c.index, Delta::text(text), None));
        }
        for (i, call) in c.message.tool_calls.iter().enumerate() {
            let head = ToolCallDelta {
                index: i as u32,
                id: Some(&call.id),
                kind: Some("function"),
                function: FunctionDelta {
                    name: Some(&call.function.name),
                    arguments: "",
                },
            };
            let args = ToolCallDelta {
                index: i as u32,
                id: None,
                kind: None,
                function: FunctionDelta {
                    name: None,
                    arguments: &call.function.arguments,
                },
            };
            for part in [head, args] {
                out.push(chunk(
                    c.index,
                    Delta {
                        role: None,
                        content: None,
                        tool_calls: Some(vec![part]),
                    },
                    None,
                ));
            }
        }
        out.push(chunk(c.index, Delta::empty(), Some(c.finish_reason)));
    }
    if include_usage {
        out.push(sse::event(&ChatChunk {
            id,
            object: "chat.completion.chunk",
            created,
            model,
            choices: Vec::new(),
            usage: Some(Some(usage)),
        }));
    }
    out.push(Bytes::from_static(sse::DONE));
    out
}

/// The SSE frames of a chat stream: a role chunk, content chunks, a finish chunk, the
/// usage chunk when asked for, and `[DONE]`.
fn chat_stream(
    generation: Generation,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    let usage_field = include_usage.then_some(None);
    let chunk = move |choice: Option<(Delta<'_>, Option<FinishReason>)>,
                      usage: Option<Option<Usage>>| {
        sse::event(&ChatChunk {
            id: &id,
            object: "chat.completion.chunk",
            created,
            model: &model,
            choices: choice
                .map(|(delta, finish)| ChunkChoice {
                    index: 0,
                    delta,
                    finish_reason: finish,
                    logprobs: None,
                })
                .into_iter()
                .collect(),
            usage,
        })
    };
    let first = chunk(Some((Delta::role(), None)), usage_field);
    frames(generation, first, move |ev| match ev {
        Frame::Delta(text) => vec![chunk(Some((Delta::text(&text), None)), usage_field)],
        Frame::Done(finish, usage) => {
            let mut out = vec![chunk(Some((Delta::empty(), Some(finish))), usage_field)];
            if include_usage {
                // OpenAI's final usage chunk: no choices, only usage.
                out.push(chunk(None, Some(Some(usage))));
            }
            out
        }
    })
}

/// The SSE frames of `n` choices streamed together: a role chunk per choice, then each
/// event of choice `i` as it comes, with `index: i`; the usage chunk (every choice's
/// tokens) and `[DONE]` once all have finished. An engine failure ends the stream with
/// an `error` event.
fn chat_stream_n(
    generations: Vec<Generation>,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    let n = generations.len();
    let prompt_tokens = generations.first().map_or(0, |g| g.prompt_tokens);
    let tagged = stream::select_all(generations.into_iter().enumerate().map(|(i, g)| {
        stream::unfold(Some(g), move |g| async move {
            let mut g = g?;
            let ev = g.events.recv().await?;
            let last = !matches!(ev, Event::Delta(_));
            Some(((i as u32, ev), (!last).then_some(g)))
        })
        .boxed()
    }));
    let chunk = move |index: u32,
                      delta: Delta<'_>,
                      finish: Option<FinishReason>,
                      usage: Option<Option<Usage>>| {
        sse::event(&ChatChunk {
            id: &id,
            object: "chat.completion.chunk",
            created,
            model: &model,
            choices: if usage.is_some_and(|u| u.is_some()) {
                Vec::new()
            } else {
                vec![ChunkChoice {
                    index,
                    delta,
                    finish_reason: finish,
                    logprobs: None,
                }]
            },
            usage,
        })
    };
    let usage_field = include_usage.then_some(None);
    let first: Vec<Bytes> = (0..n as u32)
        .map(|i| chunk(i, Delta::role(), None, usage_field))
        .collect();
    let body = tagged
        .scan(
            (0usize, 0u32, false),
            move |(done, completion, failed), (index, ev)| {
                if *failed {
                    return std::future::ready(None);
                }
                let mut out = Vec::new();
                match ev {
                    Event::Delta(text) => {
                        out.push(chunk(index, Delta::text(&text), None, usage_field))
                    }
                    Event::Done { finish, usage } => {
                        *done += 1;
                        *completion += usage.completion_tokens;
                        out.push(chunk(index, Delta::empty(), Some(finish), usage_field));
                        if *done == n {
                            if include_usage {
                                let total = Usage::new(prompt_tokens, *completion);
                                out.push(chunk(0, Delta::empty(), None, Some(Some(total))));
                            }
                            out.push(Bytes::from_static(sse::DONE));
                        }
                    }
                    Event::Failed(msg) => {
                        *failed = true;
                        let err = ApiError::new(ErrorKind::Internal, msg)
                            .with_code(bulwark_api::ErrorCode::EngineError);
                        out.push(Bytes::from(format!("data: {}\n\n", err.body_json())));
                        out.push(Bytes::from_static(sse::DONE));
                    }
                }
                std::future::ready(Some(out))
            },
        )
        .flat_map(stream::iter);
    stream::iter(first).chain(body).map(Ok)
}

enum Frame {
    Delta(String),
    Done(FinishReason, Usage),
}

/// Drives a generation into SSE frames: `first`, then `render` for each event, then
/// `[DONE]`. An engine failure becomes an OpenAI-shaped `error` event.
fn frames<F>(
    generation: Generation,
    first: Bytes,
    render: F,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send
where
    F: Fn(Frame) -> Vec<Bytes> + Send + 'static,
{
    let head = stream::once(async move { first });
    let body = stream::unfold(Some((generation, render)), |state| async move {
        let (mut generation, render) = state?;
        match generation.events.recv().await {
            Some(Event::Delta(text)) => {
                Some((render(Frame::Delta(text)), Some((generation, render))))
            }
            Some(Event::Done { finish, usage }) => {
                let mut out = render(Frame::Done(finish, usage));
                out.push(Bytes::from_static(sse::DONE));
                Some((out, None))
            }
            Some(Event::Failed(msg)) => {
                let err = ApiError::new(ErrorKind::Internal, msg)
                    .with_code(bulwark_api::ErrorCode::EngineError);
                let frame = Bytes::from(format!("data: {}\n\n", err.body_json()));
                Some((vec![frame, Bytes::from_static(sse::DONE)], None))
            }
            None => None,
        }
    })
    .flat_map(stream::iter);
    head.chain(body).map(Ok)
}

pub async fn completion(
    engine: Arc<Engine>,
    req: CompletionRequest,
    mark: Option<Marker>,
) -> Result<Response, Error> {
    let prompt = engine.tokenize(&req.prompt)?;
    let generation = match &mark {
        Some(marker) => engine.generate_watermarked(prompt, req.sampling.clone(), marker.clone()),
        None => engine.generate(prompt, req.sampling.clone()),
    }?;
    completion_generated(req, generation)
        .await
        .map(|resp| disclose(resp, mark.as_ref()))
}

async fn completion_generated(
    req: CompletionRequest,
    generation: Generation,
) -> Result<Response, Error> {
    let id = format!("cmpl-{}", uuid::Uuid::new_v4().simple());
    let created = now();
    let echo = req.echo.then(|| req.prompt.clone());
    if req.stream {
        let model = req.model;
        let include_usage = req.include_usage;
        let piece = move |text: &str, finish: Option<FinishReason>, usage: Option<Usage>| {
            sse::event(&TextCompletion {
                id: &id,
                object: "text_completion",
                created,
                model: &model,
                choices: if usage.is_some() {
                    Vec::new()
                } else {
                    vec![TextChoice {
                        index: 0,
                        text,
                        finish_reason: finish,
                        logprobs: None,
                    }]
                },
                usage,
            })
        };
        let first = piece(echo.as_deref().unwrap_or(""), None, None);
        return Ok(sse::response(frames(
            generation,
            first,
            move |ev| match ev {
                Frame::Delta(text) => vec![piece(&text, None, None)],
                Frame::Done(finish, usage) => {
                    let mut out = vec![piece("", Some(finish), None)];
                    if include_usage {
                        out.push(piece("", None, Some(usage)));
                    }
                    out
                }
            },
        )));
    }
    let done = collect(generation).await?;
    let text = match echo {
        Some(mut p) => {
            p.push_str(&done.text);
            p
        }
        None => done.text,
    };
    let body = TextCompletion {
        id: &id,
        object: "text_completion",
        created,
        model: &req.model,
        choices: vec![TextChoice {
            index: 0,
            text: &text,
            finish_reason: Some(done.finish),
            logprobs: None,
        }],
        usage: Some(done.usage),
    };
    Ok(Json(body).into_response())
}
