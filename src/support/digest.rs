//! Short, stable keys: image tags, template names, run keys and the
//! settings key are hex digests of what they stand for, so that a change of
//! content is a change of name.

/// `len` random lower-case hex digits: ids that must not repeat across
/// processes (stack ids, database names).
pub(crate) fn random_hex(len: usize) -> String {
    let bytes: Vec<u8> = (0..len.div_ceil(2)).map(|_| rand::random()).collect();
    let mut id = hex(&bytes);
    id.truncate(len);
    id
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
