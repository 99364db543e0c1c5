//! One pass over a JSON document that copies it byte for byte except the
//! values to mask: no tree, no re-serialisation, and nothing allocated for a
//! document with nothing to mask. The whole document is checked as it goes
//! (RFC 8259 grammar, UTF-8, a depth limit): anything that is not JSON is left
//! alone, as a parser would have refused it.

use std::borrow::Cow;

/// Nesting deeper than this is not read (serde_json's own default).
const MAX_DEPTH: usize = 128;

/// What decides which values are masked.
pub(crate) trait Masking {
    /// Whether the value under object key `key` (unescaped) is masked whole.
    fn masks_field(&self, key: &str) -> bool;
    /// `text` (a string value, unescaped) with its detected spans masked, and
    /// how many; `None` if nothing was found.
    fn mask_text(&self, text: &str) -> Option<(String, u64)>;
    /// What a masked value becomes, as text (written as a JSON string).
    fn mask(&self) -> &str;
}

/// The masked document and how many values were masked; `None` when there
/// is nothing to mask or `doc` is not JSON.
pub(crate) fn rewrite(doc: &[u8], masking: &impl Masking) -> Option<(Vec<u8>, u64)> {
    // UTF-8 is checked once for the whole document: one long pass costs less
    // than one per string, and every string then slices this text.
    let mut r = Rewriter::new(std::str::from_utf8(doc).ok()?, masking);
    r.ws();
    r.value(0)?;
    r.ws();
    if r.at != doc.len() || r.masked == 0 {
        return None;
    }
    r.out.extend_from_slice(&doc[r.copied..]);
    Some((r.out, r.masked))
}

struct Rewriter<'a, M> {
    /// The document (checked UTF-8); [`Rewriter::src`] is its bytes.
    text: &'a str,
    /// Whether the document holds any byte below 0x20 (which a string may not).
    controls: bool,
    at: usize,
    /// `src[..copied]` is already in `out` (or replaced there).
    copied: usize,
    out: Vec<u8>,
    masked: u64,
    masking: &'a M,
}

impl<'a, M: Masking> Rewriter<'a, M> {
    fn new(text: &'a str, masking: &'a M) -> Self {
        Rewriter {
            text,
            controls: has_controls(text.as_bytes()),
            at: 0,
            copied: 0,
            out: Vec::new(),
            masked: 0,
            masking,
        }
    }

    fn src(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.src().get(self.at).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.at += 1)
    }

    /// Replaces `src[start..self.at]` with `text` as a JSON string.
    fn replace(&mut self, start: usize, text: &str) {
        if self.out.capacity() == 0 {
            // One allocation for most documents: masks are rarely much longer
            // than what they replace.
            self.out.reserve(self.text.len() + 64);
        }
        self.out.extend_from_slice(&self.src()[self.copied..start]);
        write_string(&mut self.out, text);
        self.copied = self.at;
        self.masked += 1;
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => {
                let start = self.at;
                let text = self.string()?;
                if let Some((masked, n)) = self.masking.mask_text(&text) {
                    self.replace(start, &masked);
                    self.masked += n - 1;
                }
                Some(())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    /// Skips a value (checking it) and replaces it with the mask, unless it
    /// is `null`.
    fn masked_value(&mut self, depth: usize) -> Option<()> {
        if self.peek()? == b'n' {
            return self.literal(b"null");
        }
        let start = self.at;
        // Detected spans inside are moot: the whole value goes. A string (the
        // usual case) is only checked, not searched.
        if self.peek()? == b'"' {
            self.string()?;
        } else {
            let (out_len, copied, masked) = (self.out.len(), self.copied, self.masked);
            self.value(depth)?;
            self.out.truncate(out_len);
            self.copied = copied;
            self.masked = masked;
        }
        self.replace(start, self.masking.mask());
        Some(())
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.ws();
            let key = self.string()?;
            let whole = self.masking.masks_field(&key);
            self.ws();
            self.eat(b':')?;
            self.ws();
            if whole {
                self.masked_value(depth)?;
            } else {
                self.value(depth)?;
            }
            self.ws();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'[')?;
        self.ws();
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            self.ws();
            self.value(depth)?;
            self.ws();
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.src().get(self.at..end)? == word).then(|| self.at = end)
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.eat(b'.').is_some() && self.digits() == 0 {
            return None;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }

    /// How many bytes from `at` are plain string text: up to a quote, a
    /// backslash or a control character.
    #[inline(always)]
    fn plain_run(&self, at: usize) -> Option<usize> {
        let rest = &self.src()[at..];
        if self.controls {
            rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        } else {
            memchr::memchr2(b'"', b'\\', rest)
        }
    }

    /// A string's text, unescaped; borrowed when it has no escapes. Inlined:
    /// every call of a function costs a deadline check in the sandbox.
    #[inline(always)]
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.eat(b'"')?;
        let start = self.at;
        // The plain run, up to the closing quote or the first escape.
        let end = start + self.plain_run(start)?;
        if self.src()[end] == b'"' {
            self.at = end + 1;
            return self.text.get(start..end).map(Cow::Borrowed);
        }
        self.escaped_string(start, end)
    }

    /// The rest of a string from its first escape (or control byte) at `end`.
    #[cold]
    #[inline(never)]
    fn escaped_string(&mut self, start: usize, mut end: usize) -> Option<Cow<'a, str>> {
        let src = self.src();
        let mut text = String::from(self.text.get(start..end)?);
        loop {
            match *src.get(end)? {
                b'"' => {
                    self.at = end + 1;
                    return Some(Cow::Owned(text));
                }
                b'\\' => {
                    end += 1;
                    let c = match *src.get(end)? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = hex4(src.get(end + 1..end + 5)?)?;
                            end += 4;
                            if (0xd800..0xdc00).contains(&hi) {
                                // A surrogate pair: \uD83D\uDE00.
                                if src.get(end + 1..end + 3)? != b"\\u" {
                                    return None;
                                }
                                let lo = hex4(src.get(end + 3..end + 7)?)?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return None;
                                }
                                end += 6;
                                char::from_u32(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00))?
                            } else {
                                char::from_u32(hi)?
                            }
                        }
                        _ => return None,
                    };
                    text.push(c);
                    end += 1;
                }
                b if b < 0x20 => return None,
                _ => {
                    let run = self.plain_run(end)?;
                    text.push_str(self.text.get(end..end + run)?);
                    end += run;
                }
            }
        }
    }
}

/// Whether `doc` holds a byte below 0x20 (a loop without branches, which the
/// compiler turns into vector code).
fn has_controls(doc: &[u8]) -> bool {
    doc.iter().fold(0u8, |any, &b| any | u8::from(b < 0x20)) != 0
}

/// Exactly four hex digits (`from_str_radix` would also take a sign).
fn hex4(digits: &[u8]) -> Option<u32> {
    if digits.len() != 4 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    std::str::from_utf8(digits).ok().and_then(|s| u32::from_str_radix(s, 16).ok())
}

/// `text` as a JSON string, quotes included.
fn write_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    for c in text.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Masks the field "secret" and the word "pin" inside strings.
    struct Words;

    impl Masking for Words {
        fn masks_field(&self, key: &str) -> bool {
            key == "secret"
        }
        fn mask_text(&self, text: &str) -> Option<(String, u64)> {
            let n = text.matches("pin").count() as u64;
            (n > 0).then(|| (text.replace("pin", "*"), n))
        }
        fn mask(&self) -> &str {
            "\"x\""
        }
    }

    fn run(doc: &str) -> Option<(String, u64)> {
        rewrite(doc.as_bytes(), &Words).map(|(b, n)| (String::from_utf8(b).expect("utf-8"), n))
    }

    #[test]
    fn copies_everything_but_what_it_masks() {
        assert_eq!(
            run(r#" { "a" : 1.5e3 , "secret": {"deep": [1, "pin"]}, "b": "pin and pin" } "#),
            Some((r#" { "a" : 1.5e3 , "secret": "\"x\"", "b": "* and *" } "#.into(), 3))
        );
        assert_eq!(run(r#"{"secret": null, "n": "none"}"#), None);
        assert_eq!(run(r#"["pin", {"\u0073ecret": "s"}]"#), Some((r#"["*", {"\u0073ecret": "\"x\""}]"#.into(), 2)));
    }

    #[test]
    fn escapes_are_read_and_written() {
        assert_eq!(run(r#""p\u0069n \"q\" \ud83d\ude00""#), Some((r#""* \"q\" 😀""#.into(), 1)));
        assert_eq!(run("\"pin\\n\\t\\u0001\""), Some(("\"*\\n\\t\\u0001\"".into(), 1)));
    }

    #[test]
    fn anything_not_json_is_left_alone() {
        for doc in [
            "", "{", r#"{"a" 1}"#, r#"{"a":1,}"#, "[1 2]", "01", "1.", "-", "1e", "tru", r#""pin"#,
            "\"pi\u{1}n\"", r#""\x""#, r#""\u+041""#, r#""\ud800""#, r#""\ud800\u0041""#, r#"{"secret": 1} x"#,
            r#"{"secret": [1, }"#,
        ] {
            assert_eq!(run(doc), None, "{doc:?}");
        }
        assert_eq!(rewrite(b"\"pin\xff\"", &Words), None, "invalid UTF-8");
        let deep = "[".repeat(MAX_DEPTH + 1) + "\"pin\"" + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(run(&deep), None);
        let ok = "[".repeat(MAX_DEPTH) + "\"pin\"" + &"]".repeat(MAX_DEPTH);
        assert!(run(&ok).is_some());
    }

    #[test]
    fn agrees_with_serde_json_on_what_is_json() {
        // Every prefix of a document with every construct: valid exactly when
        // serde_json says so.
        let doc = r#"{"a":[1,-2.5E+3,true,false,null,"s\"\u00e9"],"secret":{"b":{}},"c":"pin"}"#;
        for end in 0..=doc.len() {
            let Some(prefix) = doc.get(..end) else { continue };
            let serde_ok = serde_json::from_str::<serde_json::Value>(prefix).is_ok();
            let ours = {
                let mut r = Rewriter::new(prefix, &Words);
                r.ws();
                r.value(0).is_some() && {
                    r.ws();
                    r.at == prefix.len()
                }
            };
            assert_eq!(ours, serde_ok, "{prefix:?}");
        }
    }
}
