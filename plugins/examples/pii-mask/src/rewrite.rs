//! One pass over a JSON document that copies it byte for byte except the
//! values to mask: no tree, no re-serialisation, and nothing allocated for a
//! document with nothing to mask. The whole document is checked as it goes
//! (RFC 8259 grammar, UTF-8, a depth limit): anything that is not JSON is left
//! alone, as a parser would have refused it.
//!
//! A masked document costs one allocation, its copy: spans found inside a
//! string without escapes are written straight from the source.

use std::borrow::Cow;

/// Nesting deeper than this is not read (serde_json's own default).
const MAX_DEPTH: usize = 128;

/// What decides which values are masked.
pub(crate) trait Masking {
    /// Whether the value under object key `key` (unescaped UTF-8) is masked whole.
    fn masks_field(&self, key: &[u8]) -> bool;
    /// Calls `span` with each byte range of `text` (a string value, unescaped
    /// UTF-8) to mask: in order, disjoint, on character boundaries.
    fn find_spans(&self, text: &[u8], span: impl FnMut(usize, usize));
    /// What a masked value or span becomes, escaped for the inside of a JSON
    /// string (see [`escape_into`]).
    fn mask_json(&self) -> &[u8];
}

/// What one look at every byte of a document finds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scan {
    /// A backslash: the document may have escapes.
    pub(crate) backslash: bool,
    /// A byte below 0x20 (which a string may not hold).
    pub(crate) controls: bool,
    /// A byte above 0x7f: the document is not ASCII, its UTF-8 needs a check.
    pub(crate) non_ascii: bool,
}

/// Scans `doc` in one loop without branches, which the compiler turns into
/// vector code.
pub(crate) fn scan(doc: &[u8]) -> Scan {
    let (mut backslash, mut controls, mut non_ascii) = (false, false, false);
    for &b in doc {
        backslash |= b == b'\\';
        controls |= b < 0x20;
        non_ascii |= b > 0x7f;
    }
    Scan {
        backslash,
        controls,
        non_ascii,
    }
}

/// The masked document and how many values were masked; `None` when there
/// is nothing to mask or `doc` is not JSON. `scan` is [`scan`]`(doc)`.
pub(crate) fn rewrite(doc: &[u8], scan: Scan, masking: &impl Masking) -> Option<(Vec<u8>, u64)> {
    // UTF-8 is checked once for the whole document (one long pass costs less
    // than one per string), and only if it is not ASCII.
    if scan.non_ascii && std::str::from_utf8(doc).is_err() {
        return None;
    }
    let mut r = Rewriter::new(doc, scan.controls, masking);
    r.ws();
    r.value(0)?;
    r.ws();
    if r.at != doc.len() || r.masked == 0 {
        return None;
    }
    append(&mut r.out, &doc[r.copied..]);
    Some((r.out, r.masked))
}

struct Rewriter<'a, M> {
    /// The document's bytes, checked UTF-8.
    src: &'a [u8],
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
    /// `src` must be checked UTF-8.
    fn new(src: &'a [u8], controls: bool, masking: &'a M) -> Self {
        Rewriter {
            src,
            controls,
            at: 0,
            copied: 0,
            out: Vec::new(),
            masked: 0,
            masking,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.at).copied()
    }

    /// Skips whitespace. Compact JSON has none between tokens: one look,
    /// and the loop (a deadline check per turn in the sandbox) only if needed.
    #[inline(always)]
    fn ws(&mut self) {
        if matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.ws_run();
        }
    }

    #[inline(never)]
    fn ws_run(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.at += 1)
    }

    /// Writes `parts` in place of `src[start..end]` (everything before it
    /// not yet copied is copied first) and counts one masked value.
    fn splice(&mut self, start: usize, end: usize, parts: &[&[u8]]) {
        if self.out.capacity() == 0 {
            // One allocation for most documents: masks are rarely much longer
            // than what they replace.
            self.out.reserve(self.src.len() + 64);
        }
        append(&mut self.out, &self.src[self.copied..start]);
        for part in parts {
            append(&mut self.out, part);
        }
        self.copied = end;
        self.masked += 1;
    }

    /// Any value. Only containers recurse: an object's or array's items are
    /// read by [`Rewriter::item`], inlined into their loops, so a string or
    /// number costs no call (each call costs a deadline check in the sandbox).
    #[inline(never)]
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            _ => self.scalar(),
        }
    }

    /// An item of an object or array: a container is read by [`Rewriter::value`].
    #[inline(always)]
    fn item(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' | b'[' => self.value(depth),
            _ => self.scalar(),
        }
    }

    /// A string (searched for spans to mask), a number or a literal.
    #[inline(always)]
    fn scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => {
                let start = self.at;
                let masking = self.masking;
                match self.string()? {
                    // No escapes: the text is the source from `start + 1` on,
                    // so each span is replaced where it stands.
                    Cow::Borrowed(text) => {
                        let body = start + 1;
                        masking.find_spans(text, |s, e| self.splice(body + s, body + e, &[masking.mask_json()]));
                    }
                    Cow::Owned(text) => self.mask_escaped(start, &text),
                }
                Some(())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    /// Masks spans in a string that had escapes (`text` is unescaped; the
    /// string is `src[start..self.at]`): the string is written again whole.
    #[cold]
    #[inline(never)]
    fn mask_escaped(&mut self, start: usize, text: &[u8]) {
        let mask = self.masking.mask_json();
        let mut string = vec![b'"'];
        let (mut at, mut n) = (0, 0);
        self.masking.find_spans(text, |s, e| {
            escape_into(&mut string, &text[at..s]);
            string.extend_from_slice(mask);
            at = e;
            n += 1;
        });
        if n == 0 {
            return;
        }
        escape_into(&mut string, &text[at..]);
        string.push(b'"');
        self.splice(start, self.at, &[&string]);
        self.masked += n - 1;
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
        self.splice(start, self.at, &[b"\"", self.masking.mask_json(), b"\""]);
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
                self.item(depth)?;
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
            self.item(depth)?;
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
        (self.src.get(self.at..end)? == word).then(|| self.at = end)
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        self.at - start
    }

    #[inline(always)]
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
        let rest = &self.src[at..];
        if self.controls {
            return rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
        }
        // Most keys and many values are short: up to 32 bytes are looked at
        // eight at a time (memchr's setup costs more on so few, and it goes
        // byte by byte below 16), the rest with memchr.
        let mut off = 0;
        while off < 32 {
            let Some(word) = rest.get(off..).and_then(|r| r.first_chunk::<8>()) else {
                break;
            };
            if let Some(at) = quote_or_backslash(word) {
                return Some(off + at);
            }
            off += 8;
        }
        memchr::memchr2(b'"', b'\\', &rest[off..]).map(|n| n + off)
    }

    /// A string's text, unescaped (UTF-8); borrowed when it has no escapes.
    /// Inlined: every call of a function costs a deadline check in the sandbox.
    #[inline(always)]
    fn string(&mut self) -> Option<Cow<'a, [u8]>> {
        self.eat(b'"')?;
        let start = self.at;
        // The plain run, up to the closing quote or the first escape.
        let end = start + self.plain_run(start)?;
        if self.src[end] == b'"' {
            self.at = end + 1;
            return Some(Cow::Borrowed(&self.src[start..end]));
        }
        self.escaped_string(start, end)
    }

    /// The rest of a string from its first escape (or control byte) at `end`.
    /// The source is UTF-8 and is only cut at ASCII bytes, so the text stays
    /// UTF-8.
    #[cold]
    #[inline(never)]
    fn escaped_string(&mut self, start: usize, mut end: usize) -> Option<Cow<'a, [u8]>> {
        let src = self.src;
        let mut text = src[start..end].to_vec();
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
                    text.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    end += 1;
                }
                b if b < 0x20 => return None,
                _ => {
                    let run = self.plain_run(end)?;
                    text.extend_from_slice(&src[end..end + run]);
                    end += run;
                }
            }
        }
    }
}

/// Where the first quote or backslash of `word` is, eight bytes at once in
/// a 64-bit integer (the classic test for a zero byte, which is exact for
/// the lowest one).
#[inline(always)]
fn quote_or_backslash(word: &[u8; 8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let v = u64::from_le_bytes(*word);
    let zero_at = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let hits = zero_at(v ^ (ONES * u64::from(b'"'))) | zero_at(v ^ (ONES * u64::from(b'\\')));
    (hits != 0).then(|| hits.trailing_zeros() as usize / 8)
}

/// `out.extend_from_slice(bytes)` in copies of a size known when compiling,
/// which compile to plain loads and stores. In the sandbox (without the
/// bulk-memory instructions, which wasmtime runs as calls out of it) a
/// copy of unknown size is a call to a `memcpy` that moves 4 bytes a step;
/// elsewhere the platform's `memcpy` is the better choice.
#[cfg(not(target_arch = "wasm32"))]
#[inline(always)]
fn append(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
}

/// See the other `append`.
#[cfg(target_arch = "wasm32")]
#[inline(always)]
fn append(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        out.extend_from_slice(chunk);
    }
    let mut rest = chunks.remainder();
    if let Some((eight, tail)) = rest.split_first_chunk::<8>() {
        out.extend_from_slice(eight);
        rest = tail;
    }
    if let Some((four, tail)) = rest.split_first_chunk::<4>() {
        out.extend_from_slice(four);
        rest = tail;
    }
    if let Some((two, tail)) = rest.split_first_chunk::<2>() {
        out.extend_from_slice(two);
        rest = tail;
    }
    // At most one byte is left: a push, not a `memcpy` call.
    if let Some(&last) = rest.first() {
        out.push(last);
    }
}

/// Exactly four hex digits (`from_str_radix` would also take a sign).
fn hex4(digits: &[u8]) -> Option<u32> {
    if digits.len() != 4 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    std::str::from_utf8(digits).ok().and_then(|s| u32::from_str_radix(s, 16).ok())
}

/// Appends `text` (UTF-8) escaped for the inside of a JSON string: quotes,
/// backslashes and control characters; everything else as it is.
pub(crate) fn escape_into(out: &mut Vec<u8>, text: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut at = 0;
    for (i, &b) in text.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            b if b < 0x20 => &[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]],
            _ => continue,
        };
        out.extend_from_slice(&text[at..i]);
        out.extend_from_slice(short);
        at = i + 1;
    }
    out.extend_from_slice(&text[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Masks the field "secret" and the word "pin" inside strings with `*`.
    struct Words;

    impl Masking for Words {
        fn masks_field(&self, key: &[u8]) -> bool {
            key == b"secret"
        }
        fn find_spans(&self, text: &[u8], mut span: impl FnMut(usize, usize)) {
            for at in memchr::memmem::find_iter(text, b"pin") {
                span(at, at + 3);
            }
        }
        fn mask_json(&self) -> &[u8] {
            b"*"
        }
    }

    fn run(doc: &str) -> Option<(String, u64)> {
        rewrite(doc.as_bytes(), scan(doc.as_bytes()), &Words).map(|(b, n)| (String::from_utf8(b).expect("utf-8"), n))
    }

    #[test]
    fn copies_everything_but_what_it_masks() {
        assert_eq!(
            run(r#" { "a" : 1.5e3 , "secret": {"deep": [1, "pin"]}, "b": "pin and pin" } "#),
            Some((r#" { "a" : 1.5e3 , "secret": "*", "b": "* and *" } "#.into(), 3))
        );
        assert_eq!(run(r#"{"secret": null, "n": "none"}"#), None);
        assert_eq!(run(r#"["pin", {"\u0073ecret": "s"}]"#), Some((r#"["*", {"\u0073ecret": "*"}]"#.into(), 2)));
    }

    #[test]
    fn escapes_are_read_and_written() {
        assert_eq!(run(r#""p\u0069n \"q\" \ud83d\ude00""#), Some((r#""* \"q\" 😀""#.into(), 1)));
        assert_eq!(run("\"pin\\n\\t\\u0001\""), Some(("\"*\\n\\t\\u0001\"".into(), 1)));
    }

    #[test]
    fn quotes_and_backslashes_are_found_eight_bytes_at_once() {
        for at in 0..8 {
            for b in 0..=255u8 {
                let mut word = [b'a'; 8];
                word[at] = b;
                // A later quote must not hide an earlier match.
                if at < 7 {
                    word[7] = b'"';
                }
                let expected = if b == b'"' || b == b'\\' {
                    Some(at)
                } else if at < 7 {
                    Some(7)
                } else {
                    None
                };
                assert_eq!(quote_or_backslash(&word), expected, "byte {b:#x} at {at}");
            }
        }
    }

    #[test]
    fn masks_are_escaped_for_json() {
        let mut out = Vec::new();
        escape_into(&mut out, "a \"b\" \\ \n\u{1}\u{1f} é".as_bytes());
        assert_eq!(String::from_utf8(out).expect("utf-8"), r#"a \"b\" \\ \n\u0001\u001f é"#);
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
        assert_eq!(rewrite(b"\"pin\xff\"", scan(b"\"pin\xff\""), &Words), None, "invalid UTF-8");
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
                let mut r = Rewriter::new(prefix.as_bytes(), scan(prefix.as_bytes()).controls, &Words);
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
