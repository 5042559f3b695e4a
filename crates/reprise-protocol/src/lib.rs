//! # reprise-protocol — the OpenAI-compatible wire format
//!
//! What LLM servers (vLLM, SGLang, TGI, TensorRT-LLM, llama.cpp) speak, as reprise needs it:
//!
//! - [`openai`]: request bodies of `/v1/chat/completions` and `/v1/completions`
//!   ([`openai::GenerationRequest`], parsed leniently with every unknown field kept),
//!   `usage`, and OpenAI-style error bodies;
//! - [`sse`]: an incremental Server-Sent Events parser ([`sse::SseParser`]) that is fed
//!   network chunks as they arrive and yields complete events, and the framing helpers
//!   that write events exactly as vLLM does (`data: {...}\n\n`, `data: [DONE]\n\n`);
//! - [`openai::content_of`]: what counts as content in a streamed chunk (per
//!   `docs/metrics.md`: `delta.content`, `delta.reasoning_content`, `text`), and what a
//!   client measures of each chunk: [`openai::chunk_facts`] for one,
//!   [`openai::ChunkReader`] for a stream's (read by difference from the last one).
//!
//! This crate depends on no other reprise crate.

pub mod openai;
mod skim;
pub mod sse;
