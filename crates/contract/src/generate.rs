//! Recipes for values generated when missing (`keyhole.dev/generate-<name>`):
//! `length=32` (letters and digits), `length=32,alphabet=hex`, or `bytes=32`
//! (random bytes, base64). The injector makes the value; this is the grammar.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The characters of a generated string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alphabet {
    /// `A-Z a-z 0-9`.
    Alnum,
    /// `0-9 a-f`.
    Hex,
    /// Letters, digits and `!#%+-.:=?@^_~`.
    Symbols,
}

impl Alphabet {
    pub fn as_str(self) -> &'static str {
        match self {
            Alphabet::Alnum => "alnum",
            Alphabet::Hex => "hex",
            Alphabet::Symbols => "symbols",
        }
    }
    pub fn chars(self) -> &'static [u8] {
        match self {
            Alphabet::Alnum => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            Alphabet::Hex => b"0123456789abcdef",
            Alphabet::Symbols => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#%+-.:=?@^_~",
        }
    }
}

/// How to make a value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Recipe {
    Chars {
        length: usize,
        alphabet: Alphabet,
    },
    /// Random bytes, written in standard base64.
    Bytes {
        count: usize,
    },
}

/// Lengths and byte counts a recipe may ask for.
pub const MIN_LENGTH: usize = 16;
pub const MAX_LENGTH: usize = 256;

/// Why a recipe does not parse; each says what to write.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecipeError {
    #[error("{0:?} is not a recipe: {RECIPE_EXAMPLE}")]
    Syntax(String),
    #[error("{0} is out of range: from {MIN_LENGTH} to {MAX_LENGTH}")]
    Range(usize),
    #[error("unknown alphabet {0:?}: alnum, hex or symbols")]
    Alphabet(String),
}

const RECIPE_EXAMPLE: &str =
    "write length=<n> (letters and digits), length=<n>,alphabet=hex|alnum|symbols, or bytes=<n> (random bytes, base64)";

impl Recipe {
    pub fn parse(raw: &str) -> Result<Recipe, RecipeError> {
        let syntax = || RecipeError::Syntax(raw.to_owned());
        let mut length = None;
        let mut bytes = None;
        let mut alphabet = None;
        for part in raw.split(',').map(str::trim) {
            let (k, v) = part.split_once('=').ok_or_else(syntax)?;
            let number = || v.trim().parse::<usize>().map_err(|_| syntax());
            match k.trim() {
                "length" if length.is_none() => length = Some(number()?),
                "bytes" if bytes.is_none() => bytes = Some(number()?),
                "alphabet" if alphabet.is_none() => {
                    alphabet = Some(match v.trim() {
                        "alnum" => Alphabet::Alnum,
                        "hex" => Alphabet::Hex,
                        "symbols" => Alphabet::Symbols,
                        other => return Err(RecipeError::Alphabet(other.to_owned())),
                    })
                }
                _ => return Err(syntax()),
            }
        }
        let in_range =
            |n: usize| if (MIN_LENGTH..=MAX_LENGTH).contains(&n) { Ok(n) } else { Err(RecipeError::Range(n)) };
        match (length, bytes, alphabet) {
            (Some(n), None, a) => Ok(Recipe::Chars { length: in_range(n)?, alphabet: a.unwrap_or(Alphabet::Alnum) }),
            (None, Some(n), None) => Ok(Recipe::Bytes { count: in_range(n)? }),
            _ => Err(syntax()),
        }
    }
}

impl fmt::Display for Recipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recipe::Chars { length, alphabet: Alphabet::Alnum } => write!(f, "length={length}"),
            Recipe::Chars { length, alphabet } => write!(f, "length={length},alphabet={}", alphabet.as_str()),
            Recipe::Bytes { count } => write!(f, "bytes={count}"),
        }
    }
}

impl From<Recipe> for String {
    fn from(r: Recipe) -> String {
        r.to_string()
    }
}

impl TryFrom<String> for Recipe {
    type Error = RecipeError;
    fn try_from(s: String) -> Result<Recipe, RecipeError> {
        Recipe::parse(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_round_trip_and_refuse_with_a_hint() {
        for raw in ["length=32", "length=20,alphabet=hex", "length=64,alphabet=symbols", "bytes=32"] {
            assert_eq!(Recipe::parse(raw).unwrap().to_string(), raw);
        }
        assert_eq!(Recipe::parse("length=24, alphabet=alnum").unwrap().to_string(), "length=24");
        for (raw, hint) in [
            ("32", "not a recipe"),
            ("length=8", "out of range"),
            ("bytes=1000", "out of range"),
            ("length=32,alphabet=emoji", "unknown alphabet"),
            ("length=32,bytes=32", "not a recipe"),
            ("bytes=32,alphabet=hex", "not a recipe"),
            ("length=x", "not a recipe"),
        ] {
            let err = Recipe::parse(raw).unwrap_err().to_string();
            assert!(err.contains(hint), "{raw}: {err}");
        }
    }
}
