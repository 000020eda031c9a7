//! The wire types of the OpenAI API (and vLLM's extensions), one module per endpoint family.
//! Requests are parsed leniently (unknown fields are ignored, as OpenAI and vLLM do); their
//! values are checked in `params` and the routes.

pub mod chat;
pub mod common;
pub mod completions;
pub mod models;
pub mod tokenize;
