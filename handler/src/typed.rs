//! Serde helpers for modules whose input and output are typed values, the
//! counterpart of the client's `do_typed`.

use serde::{de::DeserializeOwned, Serialize};
use taskmaster_proto::codec;

/// Decodes a job's input as a `T`; the error text suits a job failure.
pub fn decode_input<T: DeserializeOwned>(input: &[u8]) -> Result<T, String> {
    codec::decode_value(input).map_err(|e| format!("bad input: {e}"))
}

/// Encodes a response value.
pub fn encode_output<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    codec::encode_value(value).map_err(|e| format!("cannot encode response: {e}"))
}
