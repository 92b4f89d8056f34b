//! The audience expression language: tags combined with `AND`, `OR`, `NOT`
//! and parentheses, parsed into an [`Expr`] and evaluated over one roaring
//! bitmap per tag.
//!
//! ```text
//! (5 AND 2) AND NOT 3
//! VIP客户 AND (活跃交易者 OR "High Net Worth") AND NOT LowRiskUserTask
//! ```
//!
//! - A tag is its id (`5`) or a name the caller resolves (a tag's
//!   description or task class); a name with spaces or parentheses is
//!   written in double quotes (`\"` and `\\` escape inside them).
//! - Keywords are case-insensitive; `NOT` binds tighter than `AND`, and
//!   `AND` tighter than `OR`.
//! - `NOT x` means the users of the universe (those holding any tag) who
//!   do not hold `x`.
//!
//! Every error names the character position (0-based, counted in
//! characters, not bytes) and the token it stopped at.

use roaring::RoaringBitmap;
use std::borrow::Cow;
use std::fmt;

/// The longest expression accepted, in characters.
pub const MAX_CHARS: usize = 4096;
/// The deepest nesting of parentheses and `NOT`s accepted.
pub const MAX_DEPTH: usize = 64;

/// A parsed expression over tag ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// The users holding a tag.
    Tag(u32),
    /// The universe's users not in the inner expression.
    Not(Box<Expr>),
    /// The users in every operand.
    And(Vec<Expr>),
    /// The users in any operand.
    Or(Vec<Expr>),
}

/// Why an expression was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// The character position the error points at (0-based).
    pub position: usize,
    /// The token found there (empty at the end of the expression).
    pub token: String,
    /// What was wrong, in English.
    pub reason: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.token.is_empty() {
            write!(f, "{} at position {} (the end)", self.reason, self.position)
        } else {
            write!(
                f,
                "{} at position {}: {:?}",
                self.reason, self.position, self.token
            )
        }
    }
}

impl std::error::Error for ExprError {}

/// One lexical token and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Open,
    Close,
    And,
    Or,
    Not,
    /// A bare word or a quoted name; `quoted` names are never ids or keywords.
    Word {
        text: String,
        quoted: bool,
    },
    End,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    /// Character position.
    at: usize,
    /// As written.
    raw: String,
}

/// Splits `text` into tokens.
fn tokens(text: &str) -> Result<Vec<Token>, ExprError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let kind = match c {
            '(' => {
                i += 1;
                Kind::Open
            }
            ')' => {
                i += 1;
                Kind::Close
            }
            '"' => {
                let (name, end) = quoted(&chars, i)?;
                i = end;
                Kind::Word {
                    text: name,
                    quoted: true,
                }
            }
            _ => {
                while i < chars.len() && !is_break(chars[i]) {
                    i += 1;
                }
                keyword(chars[start..i].iter().collect())
            }
        };
        let raw = chars[start..i].iter().collect();
        out.push(Token {
            kind,
            at: start,
            raw,
        });
    }
    out.push(Token {
        kind: Kind::End,
        at: chars.len(),
        raw: String::new(),
    });
    Ok(out)
}

fn is_break(c: char) -> bool {
    c.is_whitespace() || c == '(' || c == ')' || c == '"'
}

fn keyword(word: String) -> Kind {
    match word.to_ascii_uppercase().as_str() {
        "AND" => Kind::And,
        "OR" => Kind::Or,
        "NOT" => Kind::Not,
        _ => Kind::Word {
            text: word,
            quoted: false,
        },
    }
}

/// The quoted name starting at `chars[open]` (a `"`), and the position
/// after its closing quote.
fn quoted(chars: &[char], open: usize) -> Result<(String, usize), ExprError> {
    let mut name = String::new();
    let mut i = open + 1;
    while i < chars.len() {
        match chars[i] {
            '"' => return Ok((name, i + 1)),
            '\\' if i + 1 < chars.len() => {
                name.push(chars[i + 1]);
                i += 2;
            }
            c => {
                name.push(c);
                i += 1;
            }
        }
    }
    Err(ExprError {
        position: open,
        token: chars[open..].iter().take(40).collect(),
        reason: "unterminated quoted name".into(),
    })
}

/// Parses `text`; `resolve` turns a tag id or name into a known tag's id
/// (`None`: no such tag).
pub fn parse(
    text: &str,
    resolve: &dyn Fn(Reference<'_>) -> Option<u32>,
) -> Result<Expr, ExprError> {
    let length = text.chars().count();
    if length > MAX_CHARS {
        return Err(ExprError {
            position: MAX_CHARS,
            token: String::new(),
            reason: format!("the expression is longer than {MAX_CHARS} characters ({length})"),
        });
    }
    let tokens = tokens(text)?;
    let mut parser = Parser {
        tokens,
        next: 0,
        resolve,
        depth: 0,
    };
    let expr = parser.or()?;
    let end = parser.peek();
    if end.kind != Kind::End {
        let reason = match end.kind {
            Kind::Close => "a closing parenthesis without an opening one",
            _ => "expected AND, OR or the end of the expression",
        };
        return Err(parser.error(reason));
    }
    Ok(expr)
}

/// An expression written over tag ids alone (a saved audience's
/// canonical form): a name is an error.
pub fn parse_ids(text: &str) -> Result<Expr, ExprError> {
    parse(text, &|r| match r {
        Reference::Id(id) => Some(id),
        Reference::Name(_) => None,
    })
}

/// A tag as the expression names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference<'a> {
    /// A number: a tag id.
    Id(u32),
    /// A word or quoted name.
    Name(&'a str),
}

struct Parser<'r> {
    tokens: Vec<Token>,
    next: usize,
    resolve: &'r dyn Fn(Reference<'_>) -> Option<u32>,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        &self.tokens[self.next.min(self.tokens.len() - 1)]
    }

    fn bump(&mut self) {
        if self.next < self.tokens.len() - 1 {
            self.next += 1;
        }
    }

    fn error(&self, reason: &str) -> ExprError {
        let token = self.peek();
        ExprError {
            position: token.at,
            token: token.raw.clone(),
            reason: reason.to_string(),
        }
    }

    /// or := and (OR and)*
    fn or(&mut self) -> Result<Expr, ExprError> {
        self.chain(Kind::Or, Self::and)
    }

    /// and := unary (AND unary)*
    fn and(&mut self) -> Result<Expr, ExprError> {
        self.chain(Kind::And, Self::unary)
    }

    /// `operand (op operand)*`, flattened.
    fn chain(
        &mut self,
        op: Kind,
        operand: fn(&mut Self) -> Result<Expr, ExprError>,
    ) -> Result<Expr, ExprError> {
        let mut terms = vec![operand(self)?];
        while self.peek().kind == op {
            self.bump();
            terms.push(operand(self)?);
        }
        Ok(flatten(terms, op == Kind::And))
    }

    /// unary := NOT unary | ( or ) | tag
    fn unary(&mut self) -> Result<Expr, ExprError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(&format!("nested deeper than {MAX_DEPTH} levels")));
        }
        match self.peek().kind.clone() {
            Kind::Not => {
                self.bump();
                self.depth += 1;
                let inner = self.unary()?;
                self.depth -= 1;
                Ok(Expr::Not(Box::new(inner)))
            }
            Kind::Open => {
                self.bump();
                self.depth += 1;
                let inner = self.or()?;
                self.depth -= 1;
                if self.peek().kind != Kind::Close {
                    return Err(self.error("expected a closing parenthesis"));
                }
                self.bump();
                Ok(inner)
            }
            Kind::Word { text, quoted } => {
                let reference = match text.parse::<u32>() {
                    Ok(id) if !quoted => Reference::Id(id),
                    _ => Reference::Name(&text),
                };
                match (self.resolve)(reference) {
                    Some(id) => {
                        self.bump();
                        Ok(Expr::Tag(id))
                    }
                    None => Err(self.error("no such tag")),
                }
            }
            _ => Err(self.error("expected a tag, NOT or an opening parenthesis")),
        }
    }
}

/// One operand as is; several as their `AND` (`and`) or `OR`, with the
/// operands that are themselves the same operation spliced in (`(a AND b)
/// AND c` is `a AND b AND c`).
fn flatten(mut terms: Vec<Expr>, and: bool) -> Expr {
    if terms.len() == 1 {
        return terms.remove(0);
    }
    let mut flat = Vec::with_capacity(terms.len());
    for term in terms {
        match term {
            Expr::And(inner) if and => flat.extend(inner),
            Expr::Or(inner) if !and => flat.extend(inner),
            other => flat.push(other),
        }
    }
    if and {
        Expr::And(flat)
    } else {
        Expr::Or(flat)
    }
}

impl Expr {
    /// The tag ids the expression names, ascending, each once.
    pub fn tags(&self) -> Vec<u32> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    fn collect(&self, out: &mut Vec<u32>) {
        match self {
            Expr::Tag(id) => out.push(*id),
            Expr::Not(inner) => inner.collect(out),
            Expr::And(terms) | Expr::Or(terms) => terms.iter().for_each(|t| t.collect(out)),
        }
    }

    /// The users the expression selects out of `members` (a tag nobody
    /// holds selects no one; `NOT` ranges over `members.universe()`).
    pub fn select(&self, members: &dyn Members) -> RoaringBitmap {
        self.evaluate(members).into_owned()
    }

    fn evaluate<'m>(&self, members: &'m dyn Members) -> Cow<'m, RoaringBitmap> {
        match self {
            Expr::Tag(id) => match members.tag(*id) {
                Some(bits) => Cow::Borrowed(bits),
                None => Cow::Owned(RoaringBitmap::new()),
            },
            Expr::Not(inner) => Cow::Owned(members.universe() - inner.evaluate(members).as_ref()),
            Expr::And(terms) => Cow::Owned(Expr::intersect(terms, members)),
            Expr::Or(terms) => {
                use roaring::MultiOps;
                let parts: Vec<Cow<'_, RoaringBitmap>> =
                    terms.iter().map(|t| t.evaluate(members)).collect();
                Cow::Owned(parts.iter().map(|p| p.as_ref()).union())
            }
        }
    }

    /// The users in every one of `terms`: the plain terms intersected,
    /// smallest first, then each `NOT x` taken away as `x` (no complement
    /// of the universe is built unless every term is a `NOT`).
    fn intersect(terms: &[Expr], members: &dyn Members) -> RoaringBitmap {
        let (negated, plain): (Vec<&Expr>, Vec<&Expr>) =
            terms.iter().partition(|t| matches!(t, Expr::Not(_)));
        let mut sets: Vec<Cow<'_, RoaringBitmap>> =
            plain.iter().map(|t| t.evaluate(members)).collect();
        sets.sort_by_key(|b| b.len());
        let mut acc = match sets.first() {
            Some(smallest) => smallest.as_ref().clone(),
            None => members.universe().clone(),
        };
        for set in sets.iter().skip(1) {
            if acc.is_empty() {
                return acc;
            }
            acc &= set.as_ref();
        }
        for term in negated {
            if acc.is_empty() {
                break;
            }
            if let Expr::Not(inner) = term {
                acc -= inner.evaluate(members).as_ref();
            }
        }
        acc
    }

    /// How many users the expression selects, without building the set
    /// where it need not (one tag, or two tags intersected).
    pub fn count(&self, members: &dyn Members) -> u64 {
        let empty = RoaringBitmap::new();
        let tag = |id: u32| members.tag(id).unwrap_or(&empty);
        match self {
            Expr::Tag(id) => tag(*id).len(),
            Expr::And(terms) if terms.len() == 2 => match (&terms[0], &terms[1]) {
                (Expr::Tag(a), Expr::Tag(b)) => tag(*a).intersection_len(tag(*b)),
                (Expr::Tag(a), Expr::Not(b)) | (Expr::Not(b), Expr::Tag(a)) => match **b {
                    Expr::Tag(b) => tag(*a).difference_len(tag(b)),
                    _ => self.select(members).len(),
                },
                _ => self.select(members).len(),
            },
            _ => self.select(members).len(),
        }
    }
}

/// The bitmaps an expression is evaluated over.
pub trait Members {
    /// The users holding `tag_id`, if anyone does.
    fn tag(&self, tag_id: u32) -> Option<&RoaringBitmap>;
    /// The users `NOT` ranges over: those holding any tag.
    fn universe(&self) -> &RoaringBitmap;
}

impl fmt::Display for Expr {
    /// The expression written back with tag ids, fully parenthesised
    /// where operators meet.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Tag(id) => write!(f, "{id}"),
            Expr::Not(inner) => match **inner {
                Expr::Tag(_) | Expr::Not(_) => write!(f, "NOT {inner}"),
                _ => write!(f, "NOT ({inner})"),
            },
            Expr::And(terms) | Expr::Or(terms) => {
                let op = if matches!(self, Expr::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                for (i, term) in terms.iter().enumerate() {
                    if i > 0 {
                        f.write_str(op)?;
                    }
                    match term {
                        Expr::And(_) | Expr::Or(_) => write!(f, "({term})")?,
                        _ => write!(f, "{term}")?,
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tags 1..=8, with names for 2, 3 and 5 (one with a space).
    fn resolve(r: Reference<'_>) -> Option<u32> {
        match r {
            Reference::Id(id) if (1..=8).contains(&id) => Some(id),
            Reference::Id(_) => None,
            Reference::Name("活跃交易者") | Reference::Name("ActiveTraderTask") => Some(2),
            Reference::Name("LowRiskUserTask") => Some(3),
            Reference::Name("VIP客户") | Reference::Name("VIP users") => Some(5),
            Reference::Name(_) => None,
        }
    }

    fn ok(text: &str) -> Expr {
        parse(text, &resolve).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn err(text: &str) -> ExprError {
        parse(text, &resolve).expect_err(text)
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        assert_eq!(ok("(5 AND 2) AND NOT 3").to_string(), "5 AND 2 AND NOT 3");
        assert_eq!(ok("1 OR 2 AND 3").to_string(), "1 OR (2 AND 3)");
        assert_eq!(ok("NOT 1 AND 2").to_string(), "NOT 1 AND 2");
        assert_eq!(ok("not (1 or 2)").to_string(), "NOT (1 OR 2)");
        assert_eq!(ok("NOT NOT 4").to_string(), "NOT NOT 4");
        assert_eq!(ok("((7))"), Expr::Tag(7));
    }

    #[test]
    fn names_resolve_bare_or_quoted_and_quoted_numbers_are_names() {
        assert_eq!(
            ok("VIP客户 AND 活跃交易者"),
            Expr::And(vec![Expr::Tag(5), Expr::Tag(2)])
        );
        assert_eq!(ok("\"VIP users\" OR LowRiskUserTask").tags(), vec![3, 5]);
        let e = err("VIP客户(2)");
        assert_eq!((e.position, e.token.as_str()), (5, "("));
    }

    #[test]
    fn errors_point_at_the_token() {
        let e = err("(5 AND 2) AND NOT 33");
        assert_eq!(
            (e.position, e.token.as_str(), e.reason.as_str()),
            (18, "33", "no such tag")
        );
        let e = err("5 AND");
        assert_eq!((e.position, e.token.as_str()), (5, ""));
        let e = err("5 2");
        assert_eq!((e.position, e.token.as_str()), (2, "2"));
        assert!(e.reason.contains("expected AND, OR"), "{e}");
        let e = err("(5 AND 2");
        assert_eq!(
            (e.position, e.reason.as_str()),
            (8, "expected a closing parenthesis")
        );
        let e = err("5 AND 2)");
        assert_eq!(e.position, 7);
        assert!(e.reason.contains("without an opening"), "{e}");
        let e = err("高净值 AND 9");
        assert_eq!((e.position, e.token.as_str()), (0, "高净值"));
        let e = err("1 AND \"VIP");
        assert_eq!(
            (e.position, e.reason.as_str()),
            (6, "unterminated quoted name")
        );
        assert_eq!(err("").position, 0);
        assert_eq!(err("   ").position, 3);
        assert_eq!(err("AND 1").token, "AND");
        assert!(err("\"5\"").reason.contains("no such tag"));
    }

    #[test]
    fn long_or_deep_expressions_are_refused_without_recursing_far() {
        let deep = format!("{}1{}", "(".repeat(200), ")".repeat(200));
        assert!(err(&deep).reason.contains("nested deeper"));
        let nots = format!("{}1", "NOT ".repeat(100));
        assert!(err(&nots).reason.contains("nested deeper"));
        let long = vec!["1"; 3000].join(" OR ");
        assert!(err(&long).reason.contains("longer than"));
    }

    struct Fixed(Vec<(u32, RoaringBitmap)>, RoaringBitmap);

    impl Members for Fixed {
        fn tag(&self, tag_id: u32) -> Option<&RoaringBitmap> {
            self.0.iter().find(|(t, _)| *t == tag_id).map(|(_, b)| b)
        }
        fn universe(&self) -> &RoaringBitmap {
            &self.1
        }
    }

    #[test]
    fn evaluation_follows_set_algebra_over_the_universe() {
        let bits = |ids: &[u32]| ids.iter().copied().collect::<RoaringBitmap>();
        let members = Fixed(
            vec![
                (1, bits(&[1, 2, 3, 4])),
                (2, bits(&[3, 4, 5])),
                (3, bits(&[4, 6])),
            ],
            bits(&[1, 2, 3, 4, 5, 6, 7]),
        );
        let cases: [(&str, &[u32]); 13] = [
            ("NOT 1 AND NOT 3", &[5, 7]),
            ("(1 OR 2) AND NOT (3 OR 8) AND 2", &[3, 5]),
            ("2 AND 1 AND 2 AND NOT 8", &[3, 4]),
            ("1 AND 2", &[3, 4]),
            ("1 AND 2 AND NOT 3", &[3]),
            ("1 AND NOT 3", &[1, 2, 3]),
            ("NOT 3 AND 1", &[1, 2, 3]),
            ("1 OR 3", &[1, 2, 3, 4, 6]),
            ("NOT 1", &[5, 6, 7]),
            ("NOT (1 OR 2 OR 3)", &[7]),
            ("8 AND 1", &[]),
            ("NOT 8", &[1, 2, 3, 4, 5, 6, 7]),
            ("8", &[]),
        ];
        for (text, want) in cases {
            let expr = ok(text);
            assert_eq!(expr.select(&members), bits(want), "{text}");
            assert_eq!(expr.count(&members), want.len() as u64, "{text}");
        }
    }
}
