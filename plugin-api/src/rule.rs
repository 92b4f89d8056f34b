//! The rule language of `tags.md`: parse, validate against a schema, evaluate
//! vectorised with SQL's three-valued logic.
//!
//! ```
//! use tag_plugin_api::{rule::{Rule, Schema}, ColumnType};
//!
//! let rule = Rule::parse(r#"{"logic": "AND", "conditions": [
//!     {"field": "total_asset_value", "operator": ">=", "value": 150000},
//!     {"field": "cash_balance", "operator": ">=", "value": 60000}]}"#).unwrap();
//! let schema = Schema::new([("total_asset_value", ColumnType::Float64)]);
//! let err = rule.validate(&schema).unwrap_err();
//! assert_eq!(err.path, "rule.conditions[1]");
//! assert!(err.message.contains("unknown field \"cash_balance\""));
//! ```

use crate::abi::ColumnType;
use crate::batch::{Batch, BatchError, Column, Dates, Numbers};
use crate::date::{Date, MICROS_PER_DAY};
use crate::echo;
use crate::mask::{pack, pack_indexed, Mask, Truth};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::fmt;

/// Groups nested deeper than this are rejected (guards the evaluator's stack).
pub const MAX_DEPTH: usize = 32;
/// Most conditions (leaves) a rule may hold.
pub const MAX_CONDITIONS: usize = 256;
/// Most items an `in` / `not_in` list may hold.
pub const MAX_LIST: usize = 10_000;

/// How a group combines its conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logic {
    /// All conditions hold.
    And,
    /// At least one condition holds.
    Or,
    /// The AND of the conditions does not hold.
    Not,
}

macro_rules! operators {
    ($($variant:ident => $text:literal,)+) => {
        /// A condition's operator.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Operator { $(#[doc = concat!("`", $text, "`")] $variant,)+ }

        impl Operator {
            /// Every operator, in the order `tags.md` lists them.
            pub const ALL: &'static [Operator] = &[$(Operator::$variant,)+];

            /// The operator's spelling in rule JSON.
            pub fn as_str(self) -> &'static str {
                match self { $(Operator::$variant => $text,)+ }
            }

            /// Parses the spelling used in rule JSON.
            pub fn parse(text: &str) -> Option<Operator> {
                match text { $($text => Some(Operator::$variant),)+ _ => None }
            }
        }
    };
}

operators! {
    Eq => "=",
    Ne => "!=",
    Gt => ">",
    Ge => ">=",
    Lt => "<",
    Le => "<=",
    In => "in",
    NotIn => "not_in",
    InRange => "in_range",
    NotInRange => "not_in_range",
    Contains => "contains",
    NotContains => "not_contains",
    StartsWith => "starts_with",
    EndsWith => "ends_with",
    IsNull => "is_null",
    IsNotNull => "is_not_null",
    IsTrue => "is_true",
    IsFalse => "is_false",
    RecentDays => "recent_days",
    DaysAgoBetween => "days_ago_between",
    DateInRange => "date_in_range",
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Operator {
    fn takes_value(self) -> bool {
        !matches!(
            self,
            Operator::IsNull | Operator::IsNotNull | Operator::IsTrue | Operator::IsFalse
        )
    }

    /// Whether this operator applies to a column of type `ty`.
    pub fn applies_to(self, ty: ColumnType) -> bool {
        use Operator::*;
        match self {
            IsNull | IsNotNull => true,
            Eq | Ne => true,
            Gt | Ge | Lt | Le | In | NotIn => ty != ColumnType::Boolean,
            InRange | NotInRange => !matches!(ty, ColumnType::Boolean | ColumnType::Utf8),
            Contains | NotContains | StartsWith | EndsWith => ty == ColumnType::Utf8,
            IsTrue | IsFalse => ty == ColumnType::Boolean,
            RecentDays | DaysAgoBetween | DateInRange => {
                matches!(ty, ColumnType::Date | ColumnType::Timestamp)
            }
        }
    }
}

/// A rule that fails to parse or does not fit a schema, pointing at the
/// condition at fault (`path` is e.g. `rule.conditions[1].conditions[0]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rule at {path}: {message}")]
pub struct RuleError {
    /// Where in the rule: `rule`, then `.conditions[i]` per level.
    pub path: String,
    /// What is wrong, naming the field and operator when there is one.
    pub message: String,
}

impl RuleError {
    fn new(path: &str, message: impl Into<String>) -> RuleError {
        RuleError {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

/// One `{"field", "operator", "value"}` condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The column it tests.
    pub field: String,
    /// The test.
    pub operator: Operator,
    /// The operand (`Null` for operators without one).
    pub value: Value,
    path: String,
}

impl Condition {
    /// Where the condition sits in its rule.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn error(&self, message: impl fmt::Display) -> RuleError {
        RuleError::new(
            &self.path,
            format!("{} {}: {message}", self.field, self.operator),
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Group { logic: Logic, children: Vec<Node> },
    Condition(Condition),
}

/// A parsed rule: a condition or a (nested) group of conditions.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    root: Node,
}

/// Column names and types a rule is checked against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    columns: Vec<(String, ColumnType)>,
}

impl Schema {
    /// A schema from `(name, type)` pairs.
    pub fn new<S: Into<String>>(columns: impl IntoIterator<Item = (S, ColumnType)>) -> Schema {
        Schema {
            columns: columns.into_iter().map(|(n, t)| (n.into(), t)).collect(),
        }
    }

    /// The schema of a batch.
    pub fn of_batch(batch: &Batch<'_>) -> Schema {
        Schema::new(batch.schema())
    }

    /// The type of column `name`.
    pub fn get(&self, name: &str) -> Option<ColumnType> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t)
    }

    fn names(&self) -> String {
        self.columns
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn describe(value: &Value) -> String {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    };
    format!("{kind} ({})", echo::clip(&value.to_string()))
}

fn check_keys(
    obj: &Map<String, Value>,
    allowed: &[&str],
    what: &str,
    path: &str,
) -> Result<(), RuleError> {
    match echo::unknown_keys(obj.keys().map(String::as_str), allowed) {
        Some(unknown) => Err(RuleError::new(
            path,
            format!("{unknown} (a {what} takes {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn parse_node(value: &Value, path: &str, depth: usize) -> Result<Node, RuleError> {
    if depth > MAX_DEPTH {
        return Err(RuleError::new(
            path,
            format!("groups nest deeper than {MAX_DEPTH} levels"),
        ));
    }
    let Some(obj) = value.as_object() else {
        return Err(RuleError::new(
            path,
            format!(
                "expected a group {{\"logic\", \"conditions\"}} or a condition {{\"field\", \"operator\", \"value\"}}, got {}",
                describe(value)
            ),
        ));
    };
    if obj.contains_key("logic") || obj.contains_key("conditions") {
        parse_group(obj, path, depth)
    } else {
        parse_condition(obj, path)
    }
}

/// A `{"logic", "conditions"}` object.
fn parse_group(obj: &Map<String, Value>, path: &str, depth: usize) -> Result<Node, RuleError> {
    check_keys(obj, &["logic", "conditions"], "group", path)?;
    let logic = match obj.get("logic") {
        Some(Value::String(s)) if s == "AND" => Logic::And,
        Some(Value::String(s)) if s == "OR" => Logic::Or,
        Some(Value::String(s)) if s == "NOT" => Logic::Not,
        Some(other) => {
            return Err(RuleError::new(
                path,
                format!(
                    "logic must be \"AND\", \"OR\" or \"NOT\", got {}",
                    describe(other)
                ),
            ))
        }
        None => {
            return Err(RuleError::new(
                path,
                "a group needs \"logic\" (AND, OR or NOT)",
            ))
        }
    };
    let conditions = match obj.get("conditions") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => {
            // An empty group would match everyone or no one by convention
            // alone; a rule must never fail open, so it is refused.
            return Err(RuleError::new(path, "\"conditions\" must not be empty"));
        }
        Some(other) => {
            return Err(RuleError::new(
                path,
                format!("\"conditions\" must be a list, got {}", describe(other)),
            ))
        }
        None => return Err(RuleError::new(path, "a group needs \"conditions\"")),
    };
    let children = conditions
        .iter()
        .enumerate()
        .map(|(i, c)| parse_node(c, &format!("{path}.conditions[{i}]"), depth + 1))
        .collect::<Result<_, _>>()?;
    Ok(Node::Group { logic, children })
}

/// A `{"field", "operator", "value"}` object.
fn parse_condition(obj: &Map<String, Value>, path: &str) -> Result<Node, RuleError> {
    check_keys(obj, &["field", "operator", "value"], "condition", path)?;
    let field = match obj.get("field") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(other) => {
            return Err(RuleError::new(
                path,
                format!(
                    "\"field\" must be a non-empty string, got {}",
                    describe(other)
                ),
            ))
        }
        None => return Err(RuleError::new(path, "a condition needs \"field\"")),
    };
    let operator = match obj.get("operator") {
        Some(Value::String(s)) => Operator::parse(s).ok_or_else(|| {
            let known: Vec<_> = Operator::ALL.iter().map(|o| o.as_str()).collect();
            RuleError::new(
                path,
                format!(
                    "{field}: unknown operator \"{s}\" (known: {})",
                    known.join(", ")
                ),
            )
        })?,
        Some(other) => {
            return Err(RuleError::new(
                path,
                format!(
                    "{field}: \"operator\" must be a string, got {}",
                    describe(other)
                ),
            ))
        }
        None => {
            return Err(RuleError::new(
                path,
                format!("{field}: a condition needs \"operator\""),
            ))
        }
    };
    let value = obj.get("value").cloned().unwrap_or(Value::Null);
    let condition = Condition {
        field,
        operator,
        value,
        path: path.to_string(),
    };
    match (operator.takes_value(), condition.value.is_null()) {
        (true, true) => Err(condition.error("needs a \"value\"")),
        (false, false) => Err(condition.error("takes no \"value\"")),
        _ => Ok(Node::Condition(condition)),
    }
}

impl Rule {
    /// Parses rule JSON text.
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| RuleError::new("rule", format!("not valid JSON: {e}")))?;
        Rule::from_json(&value)
    }

    /// Parses an already-decoded JSON value.
    pub fn from_json(value: &Value) -> Result<Rule, RuleError> {
        let root = parse_node(value, "rule", 0)?;
        fn leaves(n: &Node) -> usize {
            match n {
                Node::Group { children, .. } => children.iter().map(leaves).sum(),
                Node::Condition(_) => 1,
            }
        }
        let count = leaves(&root);
        if count > MAX_CONDITIONS {
            return Err(RuleError::new(
                "rule",
                format!("{count} conditions; a rule may hold at most {MAX_CONDITIONS}"),
            ));
        }
        Ok(Rule { root })
    }

    /// The rule as JSON (the same shape it was parsed from).
    pub fn to_json(&self) -> Value {
        fn node(n: &Node) -> Value {
            match n {
                Node::Group { logic, children } => serde_json::json!({
                    "logic": match logic { Logic::And => "AND", Logic::Or => "OR", Logic::Not => "NOT" },
                    "conditions": children.iter().map(node).collect::<Vec<_>>(),
                }),
                Node::Condition(c) if c.operator.takes_value() => {
                    serde_json::json!({"field": c.field, "operator": c.operator.as_str(), "value": c.value})
                }
                Node::Condition(c) => {
                    serde_json::json!({"field": c.field, "operator": c.operator.as_str()})
                }
            }
        }
        node(&self.root)
    }

    /// Every condition, depth first.
    pub fn conditions(&self) -> Vec<&Condition> {
        fn walk<'r>(n: &'r Node, out: &mut Vec<&'r Condition>) {
            match n {
                Node::Group { children, .. } => children.iter().for_each(|c| walk(c, out)),
                Node::Condition(c) => out.push(c),
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }

    /// Checks that every field exists in `schema` and every operator and value
    /// fits its column's type.
    pub fn validate(&self, schema: &Schema) -> Result<(), RuleError> {
        self.compile(schema, Date::today_utc()).map(|_| ())
    }

    /// Resolves the rule against `schema` and the reference date `as_of`.
    pub fn compile(&self, schema: &Schema, as_of: Date) -> Result<CompiledRule, RuleError> {
        Ok(CompiledRule {
            root: compile_node(&self.root, schema, as_of)?,
        })
    }

    /// Evaluates the rule on a batch: bit `i` is set where the rule is true
    /// (unknown, as with nulls, is not true).
    pub fn evaluate(&self, batch: &Batch<'_>, as_of: Date) -> Result<Mask, EvalError> {
        let compiled = self.compile(&Schema::of_batch(batch), as_of)?;
        Ok(compiled.evaluate(batch)?)
    }
}

/// Why a rule could not be evaluated on a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The rule does not fit the batch.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// The batch does not fit the compiled rule.
    #[error(transparent)]
    Batch(#[from] BatchError),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Cmp {
    fn of(op: Operator) -> Option<Cmp> {
        Some(match op {
            Operator::Eq => Cmp::Eq,
            Operator::Ne => Cmp::Ne,
            Operator::Gt => Cmp::Gt,
            Operator::Ge => Cmp::Ge,
            Operator::Lt => Cmp::Lt,
            Operator::Le => Cmp::Le,
            _ => return None,
        })
    }
}

/// A test on numbers; every kind compares in `f64`.
#[derive(Debug, Clone, PartialEq)]
enum NumTest {
    Cmp(Cmp, f64),
    Range { lo: f64, hi: f64, negate: bool },
    In { set: NumSet, negate: bool },
}

/// A test on dates (days since epoch); windows relative to `as_of` are resolved.
#[derive(Debug, Clone, PartialEq)]
enum DayTest {
    Cmp(Cmp, i32),
    Range { lo: i32, hi: i32, negate: bool },
    In { set: HashSet<i32>, negate: bool },
}

#[derive(Debug, Clone, PartialEq)]
enum StrTest {
    Cmp(Cmp, Vec<u8>),
    In { set: HashSet<Vec<u8>>, negate: bool },
    Contains { needle: Vec<u8>, negate: bool },
    StartsWith(Vec<u8>),
    EndsWith(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    /// `is_null` (true) / `is_not_null` (false): never unknown.
    Null(bool),
    /// `is_true` (true) / `is_false` (false): null gives false, never unknown.
    Truth(bool),
    /// `=` (negate false) / `!=` (negate true) on booleans.
    BoolEq {
        value: bool,
        negate: bool,
    },
    Num(NumTest),
    Day(DayTest),
    Str(StrTest),
}

#[derive(Debug, Clone, PartialEq)]
enum Plan {
    Group { logic: Logic, children: Vec<Plan> },
    Leaf { column: String, test: Test },
}

/// A rule resolved against a schema and a reference date, ready to run on
/// any number of batches of that schema.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledRule {
    root: Plan,
}

fn compile_node(node: &Node, schema: &Schema, as_of: Date) -> Result<Plan, RuleError> {
    match node {
        Node::Group { logic, children } => Ok(Plan::Group {
            logic: *logic,
            children: children
                .iter()
                .map(|c| compile_node(c, schema, as_of))
                .collect::<Result<_, _>>()?,
        }),
        Node::Condition(c) => Ok(Plan::Leaf {
            column: c.field.clone(),
            test: compile_condition(c, schema, as_of)?,
        }),
    }
}

fn number(c: &Condition, v: &Value) -> Result<f64, RuleError> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| c.error(format!("{n} is not a finite number"))),
        other => Err(c.error(format!("value must be a number, got {}", describe(other)))),
    }
}

fn date(c: &Condition, v: &Value) -> Result<i32, RuleError> {
    match v {
        Value::String(s) => Date::parse(s)
            .map(Date::days)
            .ok_or_else(|| c.error(format!("\"{s}\" is not a YYYY-MM-DD date"))),
        other => Err(c.error(format!(
            "value must be a \"YYYY-MM-DD\" date, got {}",
            describe(other)
        ))),
    }
}

fn string(c: &Condition, v: &Value) -> Result<Vec<u8>, RuleError> {
    match v {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        other => Err(c.error(format!("value must be a string, got {}", describe(other)))),
    }
}

fn day_count(c: &Condition, v: &Value) -> Result<i32, RuleError> {
    match v.as_u64() {
        Some(n) if n <= 1_000_000 => Ok(n as i32),
        _ => Err(c.error(format!(
            "value must be a whole number of days from 0 to 1000000, got {}",
            describe(v)
        ))),
    }
}

fn list<'v>(c: &Condition, v: &'v Value) -> Result<&'v [Value], RuleError> {
    match v {
        Value::Array(items) if items.len() > MAX_LIST => Err(c.error(format!(
            "the list has {} items; at most {MAX_LIST}",
            items.len()
        ))),
        Value::Array(items) if !items.is_empty() => Ok(items),
        Value::Array(_) => Err(c.error("the list must not be empty")),
        other => Err(c.error(format!("value must be a list, got {}", describe(other)))),
    }
}

/// A `[low, high]` pair with `low <= high`, each converted by `item`.
fn pair<T: PartialOrd + fmt::Debug>(
    c: &Condition,
    v: &Value,
    item: impl Fn(&Condition, &Value) -> Result<T, RuleError>,
) -> Result<(T, T), RuleError> {
    match v {
        Value::Array(items) if items.len() == 2 => {
            let (lo, hi) = (item(c, &items[0])?, item(c, &items[1])?);
            if lo > hi {
                return Err(c.error(format!(
                    "range start {} is after its end {}",
                    items[0], items[1]
                )));
            }
            Ok((lo, hi))
        }
        other => Err(c.error(format!(
            "value must be a [low, high] pair, got {}",
            describe(other)
        ))),
    }
}

fn compile_condition(c: &Condition, schema: &Schema, as_of: Date) -> Result<Test, RuleError> {
    use Operator::*;
    let ty = applicable_type(c, schema)?;
    let v = &c.value;
    let negate = matches!(c.operator, NotIn | NotInRange | NotContains);
    Ok(match (c.operator, ty) {
        (IsNull, _) => Test::Null(true),
        (IsNotNull, _) => Test::Null(false),
        (IsTrue, _) => Test::Truth(true),
        (IsFalse, _) => Test::Truth(false),
        (Eq | Ne, ColumnType::Boolean) => match v {
            Value::Bool(b) => Test::BoolEq {
                value: *b,
                negate: c.operator == Ne,
            },
            other => {
                return Err(c.error(format!(
                    "value must be true or false, got {}",
                    describe(other)
                )))
            }
        },
        (_, ColumnType::Int32 | ColumnType::Int64 | ColumnType::Float64) => {
            Test::Num(number_test(c, negate)?)
        }
        (_, ColumnType::Date | ColumnType::Timestamp) => Test::Day(day_test(c, negate, as_of)?),
        (_, ColumnType::Utf8) => Test::Str(string_test(c, negate)?),
        (op, ty) => unreachable!("operator {op} was admitted for {ty}"),
    })
}

/// The type of the condition's field, once its operator applies to it.
fn applicable_type(c: &Condition, schema: &Schema) -> Result<ColumnType, RuleError> {
    let ty = schema.get(&c.field).ok_or_else(|| {
        c.error(format!(
            "unknown field \"{}\" (fields: {})",
            c.field,
            schema.names()
        ))
    })?;
    if !c.operator.applies_to(ty) {
        let fits: Vec<_> = Operator::ALL
            .iter()
            .filter(|o| o.applies_to(ty))
            .map(|o| o.as_str())
            .collect();
        return Err(c.error(format!(
            "operator does not apply to {ty} column \"{}\" (operators for {ty}: {})",
            c.field,
            fits.join(", ")
        )));
    }
    Ok(ty)
}

fn number_test(c: &Condition, negate: bool) -> Result<NumTest, RuleError> {
    use Operator::*;
    let v = &c.value;
    Ok(match c.operator {
        In | NotIn => NumTest::In {
            set: NumSet::new(
                list(c, v)?
                    .iter()
                    .map(|x| number(c, x))
                    .collect::<Result<_, _>>()?,
            ),
            negate,
        },
        InRange | NotInRange => {
            let (lo, hi) = pair(c, v, number)?;
            NumTest::Range { lo, hi, negate }
        }
        op => NumTest::Cmp(
            Cmp::of(op).expect("applies_to admits only comparisons here"),
            number(c, v)?,
        ),
    })
}

fn day_test(c: &Condition, negate: bool, as_of: Date) -> Result<DayTest, RuleError> {
    use Operator::*;
    let v = &c.value;
    let today = as_of.days();
    Ok(match c.operator {
        In | NotIn => DayTest::In {
            set: list(c, v)?
                .iter()
                .map(|x| date(c, x))
                .collect::<Result<_, _>>()?,
            negate,
        },
        InRange | NotInRange | DateInRange => {
            let (lo, hi) = pair(c, v, date)?;
            DayTest::Range { lo, hi, negate }
        }
        RecentDays => DayTest::Range {
            lo: today - day_count(c, v)?,
            hi: today,
            negate: false,
        },
        DaysAgoBetween => {
            let (lo, hi) = pair(c, v, day_count)?;
            DayTest::Range {
                lo: today - hi,
                hi: today - lo,
                negate: false,
            }
        }
        op => DayTest::Cmp(
            Cmp::of(op).expect("applies_to admits only comparisons here"),
            date(c, v)?,
        ),
    })
}

fn string_test(c: &Condition, negate: bool) -> Result<StrTest, RuleError> {
    use Operator::*;
    let v = &c.value;
    Ok(match c.operator {
        In | NotIn => StrTest::In {
            set: list(c, v)?
                .iter()
                .map(|x| string(c, x))
                .collect::<Result<_, _>>()?,
            negate,
        },
        Contains | NotContains => StrTest::Contains {
            needle: string(c, v)?,
            negate,
        },
        StartsWith => StrTest::StartsWith(string(c, v)?),
        EndsWith => StrTest::EndsWith(string(c, v)?),
        op => StrTest::Cmp(
            Cmp::of(op).expect("applies_to admits only comparisons here"),
            string(c, v)?,
        ),
    })
}

/// Bits for a comparison on plain values; `conv` maps the stored type to the
/// compared one. Monomorphised per column type so each loop vectorises.
fn cmp_bits<T: Copy, U: PartialOrd + Copy>(
    values: &[T],
    conv: impl Fn(T) -> U + Copy,
    cmp: Cmp,
    c: U,
) -> Vec<u64> {
    match cmp {
        Cmp::Eq => pack(values, |x| conv(x) == c),
        Cmp::Ne => pack(values, |x| conv(x) != c),
        Cmp::Gt => pack(values, |x| conv(x) > c),
        Cmp::Ge => pack(values, |x| conv(x) >= c),
        Cmp::Lt => pack(values, |x| conv(x) < c),
        Cmp::Le => pack(values, |x| conv(x) <= c),
    }
}

/// The numbers of an `in` list, sorted for binary search (numbers cannot
/// be hashed; `-0.0` is stored and looked up as `0.0`, as `==` treats them).
#[derive(Debug, Clone, PartialEq)]
struct NumSet(Vec<f64>);

impl NumSet {
    fn new(mut values: Vec<f64>) -> NumSet {
        for v in &mut values {
            *v += 0.0;
        }
        values.sort_by(f64::total_cmp);
        values.dedup();
        NumSet(values)
    }

    fn contains(&self, x: f64) -> bool {
        let x = x + 0.0;
        self.0.binary_search_by(|v| v.total_cmp(&x)).is_ok()
    }
}

fn num_bits<T: Copy>(values: &[T], conv: impl Fn(T) -> f64 + Copy, test: &NumTest) -> Vec<u64> {
    match test {
        NumTest::Cmp(cmp, c) => cmp_bits(values, conv, *cmp, *c),
        NumTest::Range { lo, hi, negate } => pack(values, |x| {
            let x = conv(x);
            (*lo <= x && x <= *hi) != *negate
        }),
        NumTest::In { set, negate } => pack(values, |x| set.contains(conv(x)) != *negate),
    }
}

fn day_bits<T: Copy>(values: &[T], conv: impl Fn(T) -> i32 + Copy, test: &DayTest) -> Vec<u64> {
    match test {
        DayTest::Cmp(cmp, c) => cmp_bits(values, conv, *cmp, *c),
        DayTest::Range { lo, hi, negate } => pack(values, |x| {
            let x = conv(x);
            (*lo <= x && x <= *hi) != *negate
        }),
        DayTest::In { set, negate } => pack(values, |x| set.contains(&conv(x)) != *negate),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn eval_leaf(column: &Column<'_>, test: &Test) -> Result<Truth, BatchError> {
    let len = column.len();
    let valid = column.validity_words();
    let bits = match test {
        Test::Null(want_null) => {
            let bits = if *want_null {
                valid.iter().map(|w| !w).collect()
            } else {
                valid
            };
            return Ok(Truth::definite(bits, len));
        }
        Test::Truth(want) => {
            let values = column.booleans()?;
            let words = values_words(values);
            let bits = words
                .iter()
                .zip(&valid)
                .map(|(b, v)| if *want { b & v } else { !b & v })
                .collect();
            return Ok(Truth::definite(bits, len));
        }
        Test::BoolEq { value, negate } => {
            let words = values_words(column.booleans()?);
            let flip = *value == *negate;
            words.iter().map(|w| if flip { !w } else { *w }).collect()
        }
        Test::Num(t) => match column.numbers()? {
            Numbers::Int32(v) => num_bits(v, f64::from, t),
            Numbers::Int64(v) => num_bits(v, |x| x as f64, t),
            Numbers::Float64(v) => num_bits(v, |x| x, t),
        },
        Test::Day(t) => match column.dates()?.inner() {
            Dates::Days(v) => day_bits(v, |d| d, t),
            Dates::Micros(v) => day_bits(v, |us| us.div_euclid(MICROS_PER_DAY) as i32, t),
        },
        Test::Str(t) => {
            let strings = column.strings()?.inner();
            let at = |i: usize| strings.bytes(i);
            match t {
                StrTest::Cmp(cmp, s) => {
                    let s = s.as_slice();
                    match cmp {
                        Cmp::Eq => pack_indexed(len, |i| at(i) == s),
                        Cmp::Ne => pack_indexed(len, |i| at(i) != s),
                        Cmp::Gt => pack_indexed(len, |i| at(i) > s),
                        Cmp::Ge => pack_indexed(len, |i| at(i) >= s),
                        Cmp::Lt => pack_indexed(len, |i| at(i) < s),
                        Cmp::Le => pack_indexed(len, |i| at(i) <= s),
                    }
                }
                StrTest::In { set, negate } => {
                    pack_indexed(len, |i| set.contains(at(i)) != *negate)
                }
                StrTest::Contains { needle, negate } => {
                    pack_indexed(len, |i| contains(at(i), needle) != *negate)
                }
                StrTest::StartsWith(p) => pack_indexed(len, |i| at(i).starts_with(p)),
                StrTest::EndsWith(p) => pack_indexed(len, |i| at(i).ends_with(p)),
            }
        }
    };
    Ok(Truth::new(bits, valid, len))
}

fn values_words(values: crate::batch::Nullable<'_, crate::batch::Booleans<'_>>) -> Vec<u64> {
    values.inner().words()
}

fn eval_plan(plan: &Plan, batch: &Batch<'_>) -> Result<Truth, BatchError> {
    match plan {
        Plan::Leaf { column, test } => eval_leaf(&batch.column(column)?, test),
        Plan::Group { logic, children } => {
            let mut parts = children.iter().map(|c| eval_plan(c, batch));
            let first = parts.next().expect("parser refuses empty groups")?;
            let combined = parts.try_fold(first, |acc, next| {
                let next = next?;
                Ok::<_, BatchError>(match logic {
                    Logic::Or => acc.or(&next),
                    Logic::And | Logic::Not => acc.and(&next),
                })
            })?;
            Ok(if *logic == Logic::Not {
                combined.not()
            } else {
                combined
            })
        }
    }
}

impl CompiledRule {
    /// Evaluates on a batch with the schema it was compiled for.
    pub fn evaluate(&self, batch: &Batch<'_>) -> Result<Mask, BatchError> {
        Ok(eval_plan(&self.root, batch)?.into_mask())
    }
}
