//! Handlers as plain async functions with typed inputs, as axum does it.
//!
//! An `ask` handler takes a [`Context`], optionally the app's [`State`], and
//! its input: [`Data`] (the raw JSON, relayed untouched) or [`Json<T>`] (any
//! `Deserialize` type; a payload that does not fit is answered `bad_request`
//! with serde's message). It returns `Result<O, CommandError>` for any
//! `Serialize` output `O` (`Data` included, passed through unchanged). `tell`
//! handlers take the same inputs and return nothing.
//!
//! The marker type parameter `M` of [`AskHandler`] and [`TellHandler`] only
//! tells the impls for each handler shape apart; app code never names it.

use super::context::Context;
use crate::{data::Data, error::CommandError};
use futures_util::future::BoxFuture;
use serde::{Serialize, de::DeserializeOwned};
use std::{
    any::{TypeId, type_name},
    future::Future,
};

/// Typed JSON: as a handler input it is deserialized from the frame's `data`
/// (a mismatch answers `bad_request`); as an output it is serialized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

impl<T: Serialize> Serialize for Json<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// The app's shared state (see [`crate::App::with_state`]) as a handler input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State<S>(pub S);

/// What a handler can take as its input.
pub trait FromData: Sized + Send + 'static {
    /// Builds the input from the frame's `data`.
    fn from_data(data: Data) -> Result<Self, CommandError>;
}

impl FromData for Data {
    fn from_data(data: Data) -> Result<Self, CommandError> {
        Ok(data)
    }
}

impl<T: DeserializeOwned + Send + 'static> FromData for Json<T> {
    fn from_data(data: Data) -> Result<Self, CommandError> {
        data.parse().map(Json)
    }
}

/// The state type a handler needs, checked when the server starts.
pub(crate) type StateNeed = Option<(TypeId, &'static str)>;

/// A handler for `ask` frames; implemented for async functions of the shapes
/// `(Context, I)` and `(Context, State<S>, I)` returning `Result<O, CommandError>`.
pub trait AskHandler<M>: Send + Sync + 'static {
    /// Runs the handler; the reply's `data` is its serialized output.
    fn call(&self, cx: Context, data: Data) -> BoxFuture<'static, Result<Data, CommandError>>;
    /// The state type the handler reads, if any.
    #[doc(hidden)]
    fn state_need(&self) -> StateNeed {
        None
    }
}

/// A handler for `tell` frames; implemented for async functions of the shapes
/// `(Context, I)` and `(Context, State<S>, I)` returning `()`.
pub trait TellHandler<M>: Send + Sync + 'static {
    /// Starts the handler; an input that does not fit is refused at once
    /// (the connection answers it with an `error` frame without id).
    fn call(&self, cx: Context, data: Data) -> Result<BoxFuture<'static, ()>, CommandError>;
    /// The state type the handler reads, if any.
    #[doc(hidden)]
    fn state_need(&self) -> StateNeed {
        None
    }
}

fn need<S: 'static>() -> StateNeed {
    Some((TypeId::of::<S>(), type_name::<S>()))
}

fn reply<O: Serialize>(result: Result<O, CommandError>) -> Result<Data, CommandError> {
    result.and_then(|output| Data::json(&output))
}

impl<F, Fut, I, O> AskHandler<(I,)> for F
where
    F: Fn(Context, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, CommandError>> + Send + 'static,
    I: FromData,
    O: Serialize,
{
    fn call(&self, cx: Context, data: Data) -> BoxFuture<'static, Result<Data, CommandError>> {
        match I::from_data(data) {
            Ok(input) => {
                let fut = self(cx, input);
                Box::pin(async move { reply(fut.await) })
            }
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
}

impl<F, Fut, S, I, O> AskHandler<(State<S>, I)> for F
where
    F: Fn(Context, State<S>, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, CommandError>> + Send + 'static,
    S: Clone + Send + Sync + 'static,
    I: FromData,
    O: Serialize,
{
    fn call(&self, cx: Context, data: Data) -> BoxFuture<'static, Result<Data, CommandError>> {
        match cx.state::<S>().and_then(|s| Ok((s, I::from_data(data)?))) {
            Ok((state, input)) => {
                let fut = self(cx, State(state), input);
                Box::pin(async move { reply(fut.await) })
            }
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn state_need(&self) -> StateNeed {
        need::<S>()
    }
}

impl<F, Fut, I> TellHandler<(I,)> for F
where
    F: Fn(Context, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
    I: FromData,
{
    fn call(&self, cx: Context, data: Data) -> Result<BoxFuture<'static, ()>, CommandError> {
        let input = I::from_data(data)?;
        Ok(Box::pin(self(cx, input)))
    }
}

impl<F, Fut, S, I> TellHandler<(State<S>, I)> for F
where
    F: Fn(Context, State<S>, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
    S: Clone + Send + Sync + 'static,
    I: FromData,
{
    fn call(&self, cx: Context, data: Data) -> Result<BoxFuture<'static, ()>, CommandError> {
        let state = cx.state::<S>()?;
        let input = I::from_data(data)?;
        Ok(Box::pin(self(cx, State(state), input)))
    }

    fn state_need(&self) -> StateNeed {
        need::<S>()
    }
}
