//! Decoding pipeline that runs before the rules: undoes the encodings attackers use to slip a
//! payload past signatures (repeated percent-encoding, `%uXXXX`, overlong UTF-8, HTML
//! entities, fullwidth forms, null bytes, case, whitespace runs, SQL comments, backslashes,
//! dot-segments). Pure functions over bytes; never fails and never allocates unboundedly
//! (output is never longer than input plus a constant per decoded character).

/// What kind of value is decoded: `+` means a space only in query strings and form bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// Query-string or form argument: `+` is a space.
    Form,
    /// URL path: dot-segments are also resolved.
    Path,
    /// Header values, cookies, JSON strings, raw text.
    Plain,
}

/// Evidence of evasion or malformed encoding found while decoding, reported as protocol
/// anomalies by the rule engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Anomalies {
    /// `%` not followed by two hex digits (nor `u` and four).
    pub invalid_percent: bool,
    /// A NUL byte, raw or encoded.
    pub null_byte: bool,
    /// Percent-encoding that was still present after one round of decoding.
    pub multiple_encoding: bool,
    /// Overlong UTF-8 (`%c0%af`), only ever used to evade filters.
    pub overlong_utf8: bool,
}

impl Anomalies {
    pub fn merge(&mut self, o: Anomalies) {
        self.invalid_percent |= o.invalid_percent;
        self.null_byte |= o.null_byte;
        self.multiple_encoding |= o.multiple_encoding;
        self.overlong_utf8 |= o.overlong_utf8;
    }
}

/// How many percent-decoding rounds are applied (triple encoding and then some).
const MAX_PERCENT_ROUNDS: usize = 4;

/// The forms of one value the rules are matched against: the raw bytes, the fully decoded
/// form, and (when they differ) the decoded form with SQL comments removed and, for paths,
/// with dot-segments resolved.
#[derive(Debug, Default, Clone)]
pub struct Forms {
    /// Empty when decoding changed nothing but case (the raw value covers it then).
    pub decoded: Vec<u8>,
    pub sql: Option<Vec<u8>>,
    /// The SQL form with comments removed without leaving a space, when a comment sits inside a
    /// word (`UN/**/ION`): filters that strip comments join the halves back together.
    pub sql_joined: Option<Vec<u8>>,
    pub path: Option<Vec<u8>>,
    /// The decoded form with JavaScript/JSON/C escapes (`\u006a`, `\x3c`, `\n`) resolved, when
    /// there are any. Kept apart from `decoded` because in a Windows path (`..\temp`,
    /// `\xdebug`) the backslash is a separator, not an escape.
    pub escaped: Option<Vec<u8>>,
    /// The decoded form as a shell reads it once quoting is resolved (`c'a't`, `c\at`,
    /// `w"h"oami`, `who$@ami`, cmd.exe's `w^hoami` all run the command they spell). Only made
    /// when the value has a command separator or substitution and such quoting inside a word.
    pub shell: Option<Vec<u8>>,
    pub anomalies: Anomalies,
}

impl Forms {
    /// The decoded forms that differ from the raw value (compared ignoring ASCII case, since
    /// patterns are case-insensitive anyway); raw is always matched separately.
    pub fn extra<'a>(&'a self, raw: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let decoded =
            Some(self.decoded.as_slice()).filter(|d| !d.is_empty() && !d.eq_ignore_ascii_case(raw));
        decoded
            .into_iter()
            .chain(self.sql.as_deref())
            .chain(self.sql_joined.as_deref())
            .chain(self.path.as_deref())
            .chain(self.escaped.as_deref())
            .chain(self.shell.as_deref())
    }
}

/// Run the whole pipeline on one value.
pub fn normalize(raw: &[u8], ctx: Context) -> Forms {
    let mut anomalies = Anomalies::default();
    if raw.contains(&0) {
        anomalies.null_byte = true;
    }
    // Fast path: nothing to decode in the vast majority of benign values.
    if !needs_work(raw, ctx) {
        return Forms {
            decoded: Vec::new(),
            sql: None,
            sql_joined: None,
            path: None,
            escaped: None,
            shell: None,
            anomalies,
        };
    }

    let mut cur = raw.to_vec();
    let mut next = Vec::with_capacity(raw.len());
    for round in 0..MAX_PERCENT_ROUNDS {
        let plus = ctx == Context::Form && round == 0;
        let (changed, a) = percent_decode(&cur, plus, &mut next);
        if round == 0 {
            anomalies.invalid_percent |= a.invalid_percent;
        } else if changed {
            anomalies.multiple_encoding = true;
        }
        anomalies.null_byte |= a.null_byte;
        std::mem::swap(&mut cur, &mut next);
        if !changed {
            break;
        }
    }
    for _ in 0..2 {
        if !html_entity_decode(&cur, &mut next) {
            break;
        }
        std::mem::swap(&mut cur, &mut next);
        // Entities can hide percent-encoding and vice versa (`&#37;27`).
        let (changed, _) = percent_decode(&cur, false, &mut next);
        if changed {
            std::mem::swap(&mut cur, &mut next);
        }
    }
    // JavaScript/Java/JSON/C escapes (`\u006a`, `\x3c`, `\n`): Log4j lookups, JSON and
    // script contexts, and shells reached through `echo -e` or printf decode them, so payloads
    // arrive hidden in them. A separate form: see `Forms::escaped`.
    let seen = Scan::of(&cur);
    let escaped = if seen.backslash && escape_decode(&cur, &mut next) {
        let mut e = std::mem::take(&mut next);
        let (changed, _) = percent_decode(&e, false, &mut next);
        if changed {
            std::mem::swap(&mut e, &mut next);
        }
        anomalies.overlong_utf8 |= fold_overlong_and_fullwidth(&e, &mut next);
        let mut out = Vec::with_capacity(next.len());
        finish(&next, &mut out, &mut anomalies);
        Some(out)
    } else {
        None
    };
    let shell = if seen.separator && seen.quoted {
        let mut q = Vec::with_capacity(cur.len());
        shell_unquote(&cur, &mut q);
        let mut out = Vec::with_capacity(q.len());
        finish(&q, &mut out, &mut anomalies);
        Some(out)
    } else {
        None
    };
    // Only bytes from C0 up start an overlong or look-alike sequence.
    if seen.high {
        anomalies.overlong_utf8 |= fold_overlong_and_fullwidth(&cur, &mut next);
        std::mem::swap(&mut cur, &mut next);
    }
    finish(&cur, &mut next, &mut anomalies);
    let decoded = next;
    let escaped = escaped.filter(|e| *e != decoded);
    let shell = shell.filter(|q| *q != decoded);

    let sql_seen = SqlScan::of(&decoded);
    let sql = if sql_seen.block_comment || (sql_seen.newline && sql_seen.line_comment) {
        Some(strip_sql_comments(&decoded, false))
    } else {
        None
    };
    let sql_joined = if sql_seen.comment_in_word {
        Some(strip_sql_comments(&decoded, true)).filter(|j| Some(j) != sql.as_ref())
    } else {
        None
    };
    let path = if ctx == Context::Path && (contains(&decoded, b"/.") || decoded.starts_with(b".")) {
        let p = remove_dot_segments(&decoded);
        (p != decoded).then_some(p)
    } else {
        None
    };
    Forms {
        decoded,
        sql,
        sql_joined,
        path,
        escaped,
        shell,
        anomalies,
    }
}

/// What one pass over the percent- and entity-decoded value finds, to decide which of the
/// costlier stages and forms are needed at all.
#[derive(Default)]
struct Scan {
    /// A backslash: escapes may follow.
    backslash: bool,
    /// A byte from C0 up: an overlong or look-alike sequence may start.
    high: bool,
    /// A shell command separator or substitution (`;`, `|`, `&`, backtick, newline, `$(`).
    separator: bool,
    /// Quoting inside a word (`c'a't`, `c\at`, `w^hoami`) or an empty `$@` / `$*` expansion.
    quoted: bool,
}

impl Scan {
    fn of(v: &[u8]) -> Scan {
        let mut s = Scan::default();
        let mut prev = 0u8;
        for &b in v {
            match b {
                b'\\' => {
                    s.backslash = true;
                    s.quoted |= prev.is_ascii_alphanumeric();
                }
                0xC0..=0xFF => s.high = true,
                b';' | b'|' | b'&' | b'`' | b'\n' => s.separator = true,
                b'(' if prev == b'$' => s.separator = true,
                b'\'' | b'"' | b'^' if prev.is_ascii_alphanumeric() => s.quoted = true,
                b'@' | b'*' if prev == b'$' => s.quoted = true,
                _ => {}
            }
            prev = b;
        }
        s
    }
}

/// What one pass over the decoded value finds about SQL comments.
#[derive(Default)]
struct SqlScan {
    block_comment: bool,
    /// A `/*` right after a letter or digit (`UN/**/ION`).
    comment_in_word: bool,
    line_comment: bool,
    newline: bool,
}

impl SqlScan {
    fn of(v: &[u8]) -> SqlScan {
        let mut s = SqlScan::default();
        let (mut prev2, mut prev) = (0u8, 0u8);
        for &b in v {
            match b {
                b'*' if prev == b'/' => {
                    s.block_comment = true;
                    s.comment_in_word |= prev2.is_ascii_alphanumeric();
                }
                b'#' => s.line_comment = true,
                b'-' if prev == b'-' => s.line_comment = true,
                b'\n' => s.newline = true,
                _ => {}
            }
            prev2 = prev;
            prev = b;
        }
        s
    }
}

/// Remove what a shell (or cmd.exe) drops when it reads a word: quotes, backslashes, `^`, and
/// the empty expansions `$@` and `$*`.
fn shell_unquote(v: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'\'' | b'"' | b'\\' | b'^' => {}
            b'$' if matches!(v.get(i + 1), Some(b'@' | b'*')) => i += 1,
            b => out.push(b),
        }
        i += 1;
    }
}

/// The last stage: NUL and other control bytes removed, backslashes as slashes, whitespace
/// runs folded to one space (one `\n` if the run had a line break), ASCII lower-cased.
fn finish(input: &[u8], out: &mut Vec<u8>, anomalies: &mut Anomalies) {
    out.clear();
    // Most values have nothing to remove or fold: copy and lower-case in bulk.
    let mut prev = 0u8;
    let plain = input.iter().all(|&b| {
        let ok = b >= 0x20 && b != 0x7f && b != b'\\' && !(b == b' ' && prev == b' ');
        prev = b;
        ok
    });
    if plain {
        out.extend_from_slice(input);
        out.make_ascii_lowercase();
        return;
    }
    let mut last_space = false;
    for &b in input {
        match b {
            0 => {
                anomalies.null_byte = true;
            }
            // Other control characters are dropped as NUL is (`..%01/`): parsers and browsers
            // skip many of them, and no attack needs them to be kept.
            0x01..=0x08 | 0x0e..=0x1f | 0x7f => {}
            // A run with a line break folds to one `\n`, any other run to one space: header
            // injection needs to see the line break, every other pattern uses `\s`.
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                if !last_space {
                    out.push(b' ');
                }
                if matches!(b, b'\n' | b'\r') {
                    if let Some(l) = out.last_mut() {
                        *l = b'\n';
                    }
                }
                last_space = true;
                continue;
            }
            b'\\' => out.push(b'/'),
            _ => out.push(b.to_ascii_lowercase()),
        }
        last_space = false;
    }
}

/// Byte classes for `needs_work`: most bytes are `PLAIN` and cost one table load.
const PLAIN: u8 = 0;
const WORK: u8 = 1;
const PLUS: u8 = 2;
const DOT: u8 = 3;
const STAR: u8 = 4;
const SPACE: u8 = 5;
const SEPARATOR: u8 = 6;
const QUOTE: u8 = 7;
const PAREN: u8 = 8;
const AT: u8 = 9;

const CLASS: [u8; 256] = {
    let mut t = [PLAIN; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = match i as u8 {
            b'%' | b'&' | b'\\' | 0..=0x1f | 0x7f..=0xff => WORK,
            b'+' => PLUS,
            b'.' => DOT,
            b'*' => STAR,
            b' ' => SPACE,
            b';' | b'|' | b'`' => SEPARATOR,
            b'\'' | b'"' | b'^' => QUOTE,
            b'(' => PAREN,
            b'@' => AT,
            _ => PLAIN,
        };
        i += 1;
    }
    t
};

/// Whether any stage of the pipeline could change `raw` beyond ASCII case.
fn needs_work(raw: &[u8], ctx: Context) -> bool {
    if ctx == Context::Path && raw.first() == Some(&b'.') {
        return true;
    }
    let mut prev = 0u8;
    // Shell quoting inside a word next to a separator (`;c'a't`, `|who$@ami`): see `Scan`.
    let (mut separator, mut quoted) = (false, false);
    for &b in raw {
        match CLASS[b as usize] {
            PLAIN => {}
            WORK => return true,
            PLUS if ctx == Context::Form => return true,
            DOT if prev == b'/' => return true,
            STAR if prev == b'/' => return true,
            STAR | AT if prev == b'$' => quoted = true,
            SPACE if prev == b' ' => return true,
            SEPARATOR => separator = true,
            PAREN if prev == b'$' => separator = true,
            QUOTE if prev.is_ascii_alphanumeric() => quoted = true,
            _ => {}
        }
        prev = b;
    }
    separator && quoted
}

fn contains(h: &[u8], n: &[u8]) -> bool {
    h.windows(n.len()).any(|w| w == n)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// One round of `%XX` and `%uXXXX` decoding (and `+` when asked). Returns whether anything
/// was decoded.
pub fn percent_decode(input: &[u8], plus_as_space: bool, out: &mut Vec<u8>) -> (bool, Anomalies) {
    out.clear();
    let mut a = Anomalies::default();
    let mut changed = false;
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'%' {
            if let (Some(h), Some(l)) = (
                input.get(i + 1).copied().and_then(hex),
                input.get(i + 2).copied().and_then(hex),
            ) {
                let v = h << 4 | l;
                if v == 0 {
                    a.null_byte = true;
                }
                out.push(v);
                i += 3;
                changed = true;
                continue;
            }
            // IIS decoded `%XY` without checking that X and Y are hex digits, so `%c0%qf`
            // became C0 AF (an overlong `/`) and `%bg` became C0. That trick was only ever
            // useful inside an overlong UTF-8 sequence, so only there is it decoded.
            if let Some(v) = lenient_hex(input.get(i + 1), input.get(i + 2)) {
                let continues_lead =
                    matches!(out.last(), Some(0xC0 | 0xC1)) && (0x80..=0xBF).contains(&v);
                let starts_lead = matches!(v, 0xC0 | 0xC1) && input.get(i + 3) == Some(&b'%');
                if continues_lead || starts_lead {
                    a.invalid_percent = true;
                    out.push(v);
                    i += 3;
                    changed = true;
                    continue;
                }
            }
            if matches!(input.get(i + 1), Some(b'u' | b'U')) && input.len() >= i + 6 {
                let digits = &input[i + 2..i + 6];
                if let Some(cp) = digits
                    .iter()
                    .try_fold(0u32, |acc, &d| hex(d).map(|v| acc << 4 | v as u32))
                {
                    push_codepoint(out, cp);
                    i += 6;
                    changed = true;
                    continue;
                }
            }
            a.invalid_percent = true;
            out.push(b'%');
            i += 1;
        } else if b == b'+' && plus_as_space {
            out.push(b' ');
            changed = true;
            i += 1;
        } else {
            out.push(b);
            i += 1;
        }
    }
    (changed, a)
}

/// A hex digit as IIS's unchecked decoder computed it: any ASCII letter counts, `g` is 16 and
/// so on (`%qf` is 26 * 16 + 15, truncated to a byte: AF).
fn lenient_hex(h: Option<&u8>, l: Option<&u8>) -> Option<u8> {
    let val = |c: u8| match c {
        b'0'..=b'9' => Some(u32::from(c - b'0')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 10),
        b'A'..=b'Z' => Some(u32::from(c - b'A') + 10),
        _ => None,
    };
    let v = val(*h?)? * 16 + val(*l?)?;
    Some((v & 0xFF) as u8)
}

/// The ASCII character a Unicode code point stands for where servers and filesystems fold it:
/// fullwidth forms (U+FF01..U+FF5E, NFKC), small and one-dot-leader forms (NFKC), and the
/// slash and backslash look-alikes that Windows "best fit" conversion maps to `/` and `\`
/// (U+2215 DIVISION SLASH, U+2216 SET MINUS, ...).
fn ascii_lookalike(cp: u32) -> Option<u8> {
    Some(match cp {
        0xFF01..=0xFF5E => (cp - 0xFF01 + 0x21) as u8,
        0x2044 | 0x2215 | 0x2571 | 0x29F8 => b'/',
        0x2216 | 0x29F5 | 0x29F9 | 0xFE68 => b'\\',
        0x2024 | 0xFE52 => b'.',
        0xFE64 => b'<',
        0xFE65 => b'>',
        _ => return None,
    })
}

fn push_codepoint(out: &mut Vec<u8>, cp: u32) {
    if let Some(a) = ascii_lookalike(cp) {
        out.push(a);
        return;
    }
    match char::from_u32(cp) {
        Some(c) => {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
        None => out.push(b'?'),
    }
}

/// Map overlong UTF-8 encodings of ASCII, and the Unicode look-alikes of ASCII punctuation
/// (`ascii_lookalike`), to plain ASCII. Returns whether an overlong sequence was seen.
///
/// Overlong forms are decoded the way lax decoders (IIS's among them) did, without checking
/// that continuation bytes are well formed: `C0 AE`, `C0 2E` and `C0 EE` are all `.` there, and
/// 4-, 5- and 6-byte forms (`F0 80 80 AE`) too. A lone C0/C1 before an ASCII byte is dropped.
/// Valid UTF-8 never contains C0, C1 or an overlong form, so real text is not changed.
fn fold_overlong_and_fullwidth(input: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let mut overlong = false;
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        let cont = |k: usize| input.get(i + k).is_some_and(|c| c & 0xC0 == 0x80);
        match b {
            0xC0 | 0xC1 if i + 1 < input.len() => {
                let c = input[i + 1];
                let masked = ((b & 1) << 6) | (c & 0x3F);
                if c & 0xC0 == 0x80 || matches!(masked, b'.' | b'/' | b'\\') {
                    out.push(masked);
                    overlong = true;
                    i += 2;
                    continue;
                }
                if c < 0x80 {
                    out.push(c);
                    overlong = true;
                    i += 2;
                    continue;
                }
            }
            0xE0 if i + 2 < input.len() && input[i + 1] < 0xC0 && cont(2) => {
                let cp = ((input[i + 1] & 0x3F) as u32) << 6 | (input[i + 2] & 0x3F) as u32;
                if cp < 0x80 {
                    out.push(cp as u8);
                    overlong = true;
                    i += 3;
                    continue;
                }
            }
            0xF0 | 0xF8 | 0xFC => {
                // 4-, 5- and 6-byte forms of an ASCII character: the lead's payload bits and
                // every continuation but the last two are zero.
                let n = match b {
                    0xF0 => 4,
                    0xF8 => 5,
                    _ => 6,
                };
                if (1..n).all(cont)
                    && input[i + 1..i + n - 2].iter().all(|&c| c == 0x80)
                    && input[i + n - 2] & 0x3E == 0
                {
                    let cp = ((input[i + n - 2] & 0x01) << 6) | (input[i + n - 1] & 0x3F);
                    out.push(cp);
                    overlong = true;
                    i += n;
                    continue;
                }
            }
            0xE1..=0xEF if cont(1) && cont(2) => {
                let cp = ((b & 0x0F) as u32) << 12
                    | ((input[i + 1] & 0x3F) as u32) << 6
                    | (input[i + 2] & 0x3F) as u32;
                if let Some(a) = ascii_lookalike(cp) {
                    out.push(a);
                    i += 3;
                    continue;
                }
            }
            _ => {}
        }
        out.push(b);
        i += 1;
    }
    overlong
}

/// Decode `\uXXXX`, `\xXX`, `\n`, `\r` and `\t` escapes. Returns whether anything was decoded.
pub fn escape_decode(input: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    if !input.contains(&b'\\') {
        out.extend_from_slice(input);
        return false;
    }
    let mut changed = false;
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'\\' {
            match input.get(i + 1) {
                Some(b'u' | b'U') if input.len() >= i + 6 => {
                    if let Some(cp) = input[i + 2..i + 6]
                        .iter()
                        .try_fold(0u32, |acc, &d| hex(d).map(|v| acc << 4 | v as u32))
                    {
                        push_codepoint(out, cp);
                        i += 6;
                        changed = true;
                        continue;
                    }
                }
                Some(&c @ (b'n' | b'r' | b't')) => {
                    out.push(match c {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        _ => b'\t',
                    });
                    i += 2;
                    changed = true;
                    continue;
                }
                Some(b'x' | b'X') if input.len() >= i + 4 => {
                    if let (Some(h), Some(l)) = (hex(input[i + 2]), hex(input[i + 3])) {
                        out.push(h << 4 | l);
                        i += 4;
                        changed = true;
                        continue;
                    }
                }
                _ => {}
            }
        }
        out.push(input[i]);
        i += 1;
    }
    changed
}

const NAMED_ENTITIES: &[(&[u8], u8)] = &[
    (b"lt", b'<'),
    (b"gt", b'>'),
    (b"quot", b'"'),
    (b"apos", b'\''),
    (b"amp", b'&'),
    (b"colon", b':'),
    (b"semi", b';'),
    (b"lpar", b'('),
    (b"rpar", b')'),
    (b"lsqb", b'['),
    (b"rsqb", b']'),
    (b"lbrack", b'['),
    (b"rbrack", b']'),
    (b"lcub", b'{'),
    (b"rcub", b'}'),
    (b"sol", b'/'),
    (b"bsol", b'\\'),
    (b"period", b'.'),
    (b"comma", b','),
    (b"equals", b'='),
    (b"excl", b'!'),
    (b"num", b'#'),
    (b"percnt", b'%'),
    (b"grave", b'`'),
    (b"tab", b'\t'),
    (b"newline", b'\n'),
    (b"nbsp", b' '),
    (b"plus", b'+'),
    (b"ast", b'*'),
    (b"vert", b'|'),
    (b"dollar", b'$'),
];

/// Decode HTML character references: named (a useful subset) and numeric, with or without
/// the trailing `;` (browsers accept both). Returns whether anything was decoded.
pub fn html_entity_decode(input: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    if !input.contains(&b'&') {
        out.extend_from_slice(input);
        return false;
    }
    let mut changed = false;
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'&' {
            if let Some((len, cp)) = entity_at(&input[i + 1..]) {
                push_codepoint(out, cp);
                i += 1 + len;
                changed = true;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    changed
}

/// Parse an entity after `&`; returns (bytes consumed, code point).
fn entity_at(s: &[u8]) -> Option<(usize, u32)> {
    if s.first() == Some(&b'#') {
        let (radix, start) = match s.get(1) {
            Some(b'x' | b'X') => (16, 2),
            _ => (10, 1),
        };
        let mut v: u32 = 0;
        let mut n = start;
        while n < s.len() && n < start + 8 {
            let d = match (radix, s[n]) {
                (16, c) => hex(c).map(u32::from),
                (_, c @ b'0'..=b'9') => Some((c - b'0') as u32),
                _ => None,
            };
            match d {
                Some(d) => v = v.saturating_mul(radix).saturating_add(d),
                None => break,
            }
            n += 1;
        }
        if n == start {
            return None;
        }
        if s.get(n) == Some(&b';') {
            n += 1;
        }
        return Some((n, v.min(0x10FFFF)));
    }
    for (name, c) in NAMED_ENTITIES {
        if s.len() >= name.len() && s[..name.len()].eq_ignore_ascii_case(name) {
            let mut n = name.len();
            if s.get(n) == Some(&b';') {
                n += 1;
            } else if s.get(n).is_some_and(|c| c.is_ascii_alphanumeric()) {
                continue;
            }
            return Some((n, *c as u32));
        }
    }
    None
}

/// Remove SQL comments: `/* ... */` becomes a space (nothing when `joined`), MySQL's
/// executable `/*!50000 ... */` keeps its content (MySQL runs it), and a `#` or `--` line
/// comment is removed up to the line break that ends it (`UNION#x\nSELECT`). A `#` or `--`
/// with no line break after it is left alone: it ends the query, and rules look for it.
pub fn strip_sql_comments(input: &[u8], joined: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'/' && input.get(i + 1) == Some(&b'*') {
            let body_start = i + 2;
            let end = input[body_start..]
                .windows(2)
                .position(|w| w == b"*/")
                .map(|p| body_start + p);
            if input.get(body_start) == Some(&b'!') {
                let mut s = body_start + 1;
                while s < input.len() && input[s].is_ascii_digit() {
                    s += 1;
                }
                out.push(b' ');
                let stop = end.unwrap_or(input.len());
                out.extend_from_slice(&input[s.min(stop)..stop]);
                out.push(b' ');
            } else if !joined {
                out.push(b' ');
            }
            i = end.map_or(input.len(), |e| e + 2);
            continue;
        }
        let line = input[i] == b'#' || (input[i] == b'-' && input.get(i + 1) == Some(&b'-'));
        if line {
            if let Some(nl) = input[i..].iter().position(|&b| b == b'\n') {
                out.push(b' ');
                i += nl;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    // Fold the spaces the removal created.
    let mut folded = Vec::with_capacity(out.len());
    for &b in &out {
        if b == b' ' && folded.last() == Some(&b' ') {
            continue;
        }
        folded.push(b);
    }
    folded
}

/// RFC 3986 §5.2.4 remove_dot_segments on the path part (the query is left alone).
pub fn remove_dot_segments(input: &[u8]) -> Vec<u8> {
    let (path, rest) = match input.iter().position(|&b| b == b'?') {
        Some(q) => (&input[..q], &input[q..]),
        None => (input, &b""[..]),
    };
    let absolute = path.first() == Some(&b'/');
    let mut stack: Vec<&[u8]> = Vec::new();
    let segments: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            b"." => trailing_slash = i == last,
            b".." => {
                stack.pop();
                trailing_slash = i == last;
            }
            b"" => trailing_slash = i == last && i != 0,
            s => {
                stack.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = Vec::with_capacity(input.len());
    if absolute {
        out.push(b'/');
    }
    out.extend_from_slice(&stack.join(&b'/'));
    if trailing_slash && !stack.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str, ctx: Context) -> String {
        let f = normalize(s.as_bytes(), ctx);
        if f.decoded.is_empty() {
            return s.to_ascii_lowercase();
        }
        String::from_utf8_lossy(&f.decoded).into_owned()
    }

    #[test]
    fn undoes_layered_encodings() {
        assert_eq!(dec("%253Cscript%253E", Context::Form), "<script>");
        assert_eq!(dec("%25252e%25252e%25252f", Context::Path), "../");
        assert_eq!(
            dec("%u003Cimg%u0020src%3Dx%3E", Context::Form),
            "<img src=x>"
        );
        assert_eq!(
            dec("&lt;svg&#x2f;onload&#61;alert(1)&gt;", Context::Plain),
            "<svg/onload=alert(1)>"
        );
        assert_eq!(dec("&#60&#115;cript", Context::Plain), "<script");
        assert_eq!(dec("1+UNION++SELECT", Context::Form), "1 union select");
        assert_eq!(dec("a%20%0d%0a%09b", Context::Form), "a\nb");
        assert_eq!(dec("a%00b", Context::Form), "ab");
        assert_eq!(dec("..%5c..%5cwindows", Context::Path), "../../windows");
        assert_eq!(dec("%c0%ae%c0%ae%c0%af", Context::Path), "../");
        assert_eq!(dec("%EF%BC%9Cscript%EF%BC%9E", Context::Form), "<script>");
        assert!(
            normalize(b"a%2541", Context::Form)
                .anomalies
                .multiple_encoding
        );
        assert!(
            normalize(b"100%zz", Context::Form)
                .anomalies
                .invalid_percent
        );
        assert!(normalize(b"x%00", Context::Form).anomalies.null_byte);
    }

    #[test]
    fn lax_overlong_and_lookalike_separators() {
        // IIS's unchecked hex digits inside overlong sequences.
        assert_eq!(
            dec("..%c0%qf..%c0%9vetc%c1%8spasswd", Context::Form),
            "../../etc/passwd"
        );
        assert_eq!(
            dec("..%bg%qf..%c1%pcboot.ini", Context::Form),
            "../../boot.ini"
        );
        // Malformed and longer overlong forms.
        assert_eq!(dec("%c0%2e%c0%2e%c0%2f", Context::Form), "../");
        assert_eq!(dec("%c0%ee%c0.%c0%5c", Context::Form), "../");
        assert_eq!(
            dec("%e0%40%ae%f0%80%80%ae%f8%80%80%80%af", Context::Form),
            "../"
        );
        assert_eq!(
            dec(
                "%fc%80%80%80%80%ae%fc%80%80%80%80%ae%f0%80%81%9c",
                Context::Form
            ),
            "../"
        );
        // Unicode look-alikes, however they are encoded.
        assert_eq!(dec("..%u2215..%u2216x", Context::Form), "../../x");
        assert_eq!(
            dec("%E2%88%95etc%EF%BC%8Fpasswd", Context::Form),
            "/etc/passwd"
        );
        assert_eq!(dec("%uff0e%uff0e%u2215", Context::Form), "../");
        // Control characters are dropped like NUL.
        assert_eq!(dec("..%01/..%1f/", Context::Form), "../../");
        // JavaScript escapes, in their own form: the decoded form keeps Windows paths.
        let esc = |s: &str| {
            normalize(s.as_bytes(), Context::Plain)
                .escaped
                .unwrap_or_default()
        };
        assert_eq!(esc("${\\u006a\\u006edi:x}"), b"${jndi:x}");
        assert_eq!(esc("\\x3cscript\\x3e"), b"<script>");
        assert_eq!(esc(";id\\n"), b";id\n");
        assert_eq!(
            dec("..\\..\\temp\\xdebug", Context::Form),
            "../../temp/xdebug"
        );
        // Shell quoting, read as the shell reads it, only next to a separator.
        let sh = |s: &str| normalize(s.as_bytes(), Context::Form).shell;
        assert_eq!(
            sh(";c'a't /et\\c/pa\"ss\"wd").as_deref(),
            Some(&b";cat /etc/passwd"[..])
        );
        assert_eq!(sh("|who$@ami").as_deref(), Some(&b"|whoami"[..]));
        assert_eq!(sh("it's O'Reilly"), None);
        // The lenient digits are only decoded inside an overlong sequence, and real UTF-8
        // text is left alone.
        assert_eq!(dec("100%qf", Context::Form), "100%qf");
        assert_eq!(
            dec("caf%C3%A9 %E2%80%93 na%C3%AFve", Context::Form),
            "café – naïve"
        );
        assert_eq!(dec("C:%5Cusers%5Cxampp", Context::Form), "c:/users/xampp");
    }

    #[test]
    fn plus_is_space_only_in_forms() {
        assert_eq!(dec("a+b", Context::Plain), "a+b");
        assert_eq!(dec("a%2Bb", Context::Form), "a+b");
    }

    #[test]
    fn sql_comments_and_dot_segments() {
        let f = normalize(b"1 UNION/**/SELECT/*!50000password*/", Context::Form);
        assert_eq!(f.sql.as_deref(), Some(&b"1 union select password "[..]));
        let f = normalize(b"1 UN/**/ION SEL/*x*/ECT 2", Context::Form);
        assert_eq!(f.sql_joined.as_deref(), Some(&b"1 union select 2"[..]));
        let f = normalize(b"1 union%23foo%0aselect-- x%0d%0a2#", Context::Form);
        assert_eq!(f.sql.as_deref(), Some(&b"1 union \nselect \n2#"[..]));
        assert_eq!(
            remove_dot_segments(b"/api/../etc/./passwd?x=../y"),
            b"/etc/passwd?x=../y"
        );
        assert_eq!(remove_dot_segments(b"/a/b/../../../c/"), b"/c/");
        let f = normalize(b"/static/%2e%2e/%2e%2e/etc/passwd", Context::Path);
        assert_eq!(f.decoded, b"/static/../../etc/passwd");
        assert_eq!(f.path.as_deref(), Some(&b"/etc/passwd"[..]));
    }

    #[test]
    fn benign_values_take_the_fast_path() {
        let f = normalize(b"Hello", Context::Form);
        assert!(f.decoded.is_empty());
        assert_eq!(f.extra(b"Hello").count(), 0);
    }
}
