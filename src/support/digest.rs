//! Short, stable keys: image tags, template names, run keys and the
//! settings key are hex digests of what they stand for, so that a change of
//! content is a change of name.

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
