//! Constrained decoding to one JSON object: for `response_format: {"type": "json_object"}` and for forced tool
//! calls (`tool_choice` required or named), where a small model would otherwise write almost-JSON. Before each
//! sample, every token whose bytes would not continue a valid JSON prefix is masked out; the sequence ends when
//! the top-level object closes. Only well-formedness is enforced, not a schema.

use std::sync::Arc;

use userrl_nn::engine::Constraint;
use userrl_nn::tokenizer::Tokenizer;

/// GGUF token types whose tokens are special (never part of JSON text).
const SPECIAL_TYPES: [i32; 2] = [3, 4];

/// The bytes of every token (`None` for special tokens), from the byte-level vocabulary.
pub fn token_bytes(tokenizer: &Tokenizer) -> Arc<Vec<Option<Vec<u8>>>> {
    let data = tokenizer.data();
    let mut char_to_byte = std::collections::HashMap::new();
    for (byte, ch) in byte_level_chars().into_iter().enumerate() {
        char_to_byte.insert(ch, byte as u8);
    }
    let table = data
        .tokens
        .iter()
        .enumerate()
        .map(|(i, text)| {
            if data.token_types.get(i).is_some_and(|t| SPECIAL_TYPES.contains(t)) {
                return None;
            }
            text.chars().map(|c| char_to_byte.get(&c).copied()).collect::<Option<Vec<u8>>>()
        })
        .collect();
    Arc::new(table)
}

/// GPT-2's byte-to-character map: printable Latin-1 bytes stand for themselves, the rest for 256 + n.
fn byte_level_chars() -> Vec<char> {
    let mut chars = vec!['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        chars[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\0')
        };
    }
    chars
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Before the top-level object.
    Start,
    /// A value is expected (after `:` or `,` in an array).
    Value,
    /// Just after `[`: a value or `]`.
    ValueOrClose,
    /// Just after `{`: a key or `}`.
    KeyOrClose,
    /// After `,` in an object: a key.
    Key,
    Str {
        key: bool,
    },
    Escape {
        key: bool,
    },
    Unicode {
        key: bool,
        left: u8,
    },
    Colon,
    /// After a value: `,` or the container's close.
    After,
    Number(Num),
    Literal {
        which: u8,
        at: u8,
    },
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpInt,
}

const LITERALS: [&[u8]; 3] = [b"true", b"false", b"null"];

/// A JSON-object prefix recogniser, `Copy` so candidate tokens are tried on a copy. Nesting up to 64 deep
/// (one bit per level: object or array).
#[derive(Clone, Copy, Debug)]
pub struct JsonPrefix {
    mode: Mode,
    stack: u64,
    depth: u8,
}

fn ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

impl Default for JsonPrefix {
    fn default() -> Self {
        JsonPrefix { mode: Mode::Start, stack: 0, depth: 0 }
    }
}

impl JsonPrefix {
    pub fn done(&self) -> bool {
        self.mode == Mode::Done
    }

    fn push(&mut self, object: bool) -> bool {
        if self.depth >= 64 {
            return false;
        }
        self.stack = (self.stack << 1) | u64::from(object);
        self.depth += 1;
        self.mode = if object { Mode::KeyOrClose } else { Mode::ValueOrClose };
        true
    }

    fn in_object(&self) -> bool {
        self.stack & 1 == 1
    }

    fn close(&mut self, object: bool) -> bool {
        if self.depth == 0 || self.in_object() != object {
            return false;
        }
        self.stack >>= 1;
        self.depth -= 1;
        self.mode = if self.depth == 0 { Mode::Done } else { Mode::After };
        true
    }

    fn value_start(&mut self, b: u8) -> bool {
        match b {
            b'{' => self.push(true),
            b'[' => self.push(false),
            b'"' => {
                self.mode = Mode::Str { key: false };
                true
            }
            b'-' => {
                self.mode = Mode::Number(Num::Minus);
                true
            }
            b'0' => {
                self.mode = Mode::Number(Num::Zero);
                true
            }
            b'1'..=b'9' => {
                self.mode = Mode::Number(Num::Int);
                true
            }
            b't' | b'f' | b'n' => {
                let which = LITERALS.iter().position(|l| l[0] == b).unwrap_or(0) as u8;
                self.mode = Mode::Literal { which, at: 1 };
                true
            }
            _ => false,
        }
    }

    /// Feeds one byte; false when it cannot continue valid JSON.
    pub fn feed(&mut self, b: u8) -> bool {
        match self.mode {
            Mode::Done => false,
            Mode::Start => ws(b) || (b == b'{' && self.push(true)),
            Mode::Value => ws(b) || self.value_start(b),
            Mode::ValueOrClose => ws(b) || (b == b']' && self.close(false)) || self.value_start(b),
            Mode::KeyOrClose | Mode::Key => {
                if ws(b) {
                    return true;
                }
                if b == b'"' {
                    self.mode = Mode::Str { key: true };
                    return true;
                }
                self.mode == Mode::KeyOrClose && b == b'}' && self.close(true)
            }
            Mode::Str { key } => match b {
                b'"' => {
                    self.mode = if key { Mode::Colon } else { Mode::After };
                    true
                }
                b'\\' => {
                    self.mode = Mode::Escape { key };
                    true
                }
                0..=0x1f => false,
                _ => true,
            },
            Mode::Escape { key } => match b {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                    self.mode = Mode::Str { key };
                    true
                }
                b'u' => {
                    self.mode = Mode::Unicode { key, left: 4 };
                    true
                }
                _ => false,
            },
            Mode::Unicode { key, left } => {
                if !b.is_ascii_hexdigit() {
                    return false;
                }
                self.mode = if left == 1 { Mode::Str { key } } else { Mode::Unicode { key, left: left - 1 } };
                true
            }
            Mode::Colon => {
                if ws(b) {
                    return true;
                }
                if b == b':' {
                    self.mode = Mode::Value;
                    return true;
                }
                false
            }
            Mode::After => match b {
                _ if ws(b) => true,
                b',' => {
                    self.mode = if self.in_object() { Mode::Key } else { Mode::Value };
                    true
                }
                b'}' => self.close(true),
                b']' => self.close(false),
                _ => false,
            },
            Mode::Literal { which, at } => {
                let lit = LITERALS[which as usize];
                if lit.get(at as usize) != Some(&b) {
                    return false;
                }
                self.mode =
                    if at as usize + 1 == lit.len() { Mode::After } else { Mode::Literal { which, at: at + 1 } };
                true
            }
            Mode::Number(n) => {
                let next = match (n, b) {
                    (Num::Minus, b'0') => Some(Num::Zero),
                    (Num::Minus, b'1'..=b'9') => Some(Num::Int),
                    (Num::Int, b'0'..=b'9') => Some(Num::Int),
                    (Num::Zero | Num::Int, b'.') => Some(Num::Dot),
                    (Num::Dot | Num::Frac, b'0'..=b'9') => Some(Num::Frac),
                    (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Some(Num::Exp),
                    (Num::Exp, b'+' | b'-') => Some(Num::ExpSign),
                    (Num::Exp | Num::ExpSign | Num::ExpInt, b'0'..=b'9') => Some(Num::ExpInt),
                    _ => None,
                };
                match next {
                    Some(n) => {
                        self.mode = Mode::Number(n);
                        true
                    }
                    // The number ends here if it is complete; the byte then belongs to what follows.
                    None if matches!(n, Num::Zero | Num::Int | Num::Frac | Num::ExpInt) => {
                        self.mode = Mode::After;
                        self.feed(b)
                    }
                    None => false,
                }
            }
        }
    }

    /// Feeds a token's bytes; false when any would break the JSON or come after its end.
    pub fn feed_all(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| !self.done() && self.feed(b))
    }
}

/// The engine-side constraint: valid JSON object text, over a model's token table.
#[derive(Clone)]
pub struct JsonConstraint {
    state: JsonPrefix,
    tokens: Arc<Vec<Option<Vec<u8>>>>,
}

impl JsonConstraint {
    /// `already` is JSON text the prompt already holds (a forced `{"name": …, "arguments": `); `None` when it is
    /// not a valid start.
    pub fn new(tokens: Arc<Vec<Option<Vec<u8>>>>, already: &str) -> Option<JsonConstraint> {
        let mut state = JsonPrefix::default();
        state.feed_all(already.as_bytes()).then_some(JsonConstraint { state, tokens })
    }
}

impl Constraint for JsonConstraint {
    fn mask(&self, logits: &mut [f32]) -> bool {
        let mut any = false;
        for (id, logit) in logits.iter_mut().enumerate() {
            let ok = match self.tokens.get(id) {
                Some(Some(bytes)) if !bytes.is_empty() => self.state.clone().feed_all(bytes),
                _ => false,
            };
            if ok {
                any = true;
            } else {
                *logit = f32::NEG_INFINITY;
            }
        }
        any
    }

    fn advance(&mut self, token: u32) -> bool {
        if let Some(Some(bytes)) = self.tokens.get(token as usize) {
            self.state.feed_all(bytes);
        }
        self.state.done()
    }

    fn boxed_clone(&self) -> Box<dyn Constraint> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(text: &str) -> (bool, bool) {
        let mut p = JsonPrefix::default();
        let ok = p.feed_all(text.as_bytes());
        (ok, p.done())
    }

    #[test]
    fn recognises_json_object_prefixes() {
        for full in [
            r#"{}"#,
            r#" {"a": 1, "b": [true, false, null, -0.5e+3, "x\"y\u00e9"], "c": {"d": []}}"#,
            r#"{"response": "Yes"}"#,
        ] {
            assert_eq!(accepts(full), (true, true), "{full}");
            assert!(serde_json::from_str::<serde_json::Value>(full).is_ok());
            for cut in 0..full.len() {
                assert!(accepts(&full[..cut]).0, "prefix of {full}: {}", &full[..cut]);
                assert!(!accepts(&full[..cut]).1);
            }
        }
        for bad in [r#"[1]"#, r#"{"a" 1}"#, r#"{"a": 01}"#, r#"{"a": tru }"#, r#"{,}"#, r#"{"a": "Yes" or"#, "{}x"] {
            assert!(!accepts(bad).0, "{bad}");
        }
    }

    #[test]
    fn byte_level_map_is_a_bijection() {
        let chars = byte_level_chars();
        let unique: std::collections::HashSet<char> = chars.iter().copied().collect();
        assert_eq!(unique.len(), 256);
        assert_eq!((chars[b'a' as usize], chars[b' ' as usize], chars[b'\n' as usize]), ('a', 'Ġ', 'Ċ'));
    }
}
