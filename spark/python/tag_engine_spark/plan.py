"""The job's plan: a JSON document (written by the host, schema in
spark/README.md) read and checked before Spark is touched. Every error names
the field at fault, e.g. ``plan: tags[2].tag_id: expected an integer >= 0``.
"""
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional

UNIVERSE = "user_basic_info"
# The column types the plugins declare (Evaluator.tags()'s input types).
COLUMN_TYPES = ("boolean", "int32", "int64", "float64", "date", "timestamp", "string")
SCOPES = ("full", "user_ids", "incremental")
MIN_WATERMARK = -(2**63)


class PlanError(ValueError):
    """A plan that cannot be run; the message names the field."""

    def __init__(self, where, why):
        super().__init__(f"plan: {where}: {why}")


@dataclass
class Table:
    name: str
    path: Optional[str]
    columns: Dict[str, str]  # column -> declared type, in plan order


@dataclass
class TagRequest:
    tag_id: int
    rule: Optional[str]  # rule-language JSON, None for the plugin's default
    rule_version: object
    # An incremental plan's per-tag scope: the tables the tag reads, each
    # with the newest time its last run saw (MIN_WATERMARK: never seen).
    # None: the tag evaluates every user of the run's scope.
    changed_since: Optional[Dict[str, int]] = None


@dataclass
class Scope:
    mode: str
    user_ids: List[str] = field(default_factory=list)
    # Per table, microseconds since the Unix epoch (UTC).
    watermarks: Dict[str, int] = field(default_factory=dict)

    def watermark(self, table):
        """A table without a watermark was never seen: any timed row is newer."""
        return self.watermarks.get(table, MIN_WATERMARK)


@dataclass
class Plan:
    tables: List[Table]
    tags: List[TagRequest]
    scope: Scope
    as_of: str
    plugins_dir: Optional[str]  # None: the plugin_files, as Spark ships them
    output: str
    data_dir: Optional[str] = None
    copies_dir: Optional[str] = None
    plugin_files: List[str] = field(default_factory=list)
    # Users per part of the output, about (tag-server commits a part at a time).
    part_users: int = 500_000

    def table(self, name):
        return next(t for t in self.tables if t.name == name)


def _get(obj, key, where, kind, required=True):
    if not isinstance(obj, dict):
        raise PlanError(where or "(top level)", "expected a JSON object")
    if key not in obj or obj[key] is None:
        if required:
            raise PlanError(_join(where, key), "missing")
        return None
    value = obj[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise PlanError(_join(where, key), f"expected an integer, got {json.dumps(value)}")
    if kind is not int and not isinstance(value, kind):
        names = {str: "a string", list: "a list", dict: "an object"}
        raise PlanError(_join(where, key), f"expected {names[kind]}, got {json.dumps(value)}")
    if kind is str and not value:
        raise PlanError(_join(where, key), "must not be empty")
    return value


def _join(where, key):
    return f"{where}.{key}" if where else key


def _table(obj, where, data_dir):
    name = _get(obj, "name", where, str)
    path = _get(obj, "path", where, str, required=False)
    if path is None and data_dir is None:
        raise PlanError(_join(where, "path"), "missing (and the plan has no data_dir)")
    columns = {}
    for i, column in enumerate(_get(obj, "columns", where, list)):
        at = f"{where}.columns[{i}]"
        col = _get(column, "name", at, str)
        kind = _get(column, "type", at, str)
        if kind not in COLUMN_TYPES:
            raise PlanError(f"{at}.type", f"{kind!r} is not one of {', '.join(COLUMN_TYPES)}")
        if col in ("user_id", "updated_time") or col in columns:
            raise PlanError(f"{at}.name", f"{col!r} is read anyway or listed twice")
        columns[col] = kind
    return Table(name, path, columns)


def _tag(obj, where, tables):
    tag_id = _get(obj, "tag_id", where, int)
    if tag_id < 0 or tag_id > 2**32 - 1:
        raise PlanError(f"{where}.tag_id", f"expected an integer in [0, 2^32), got {tag_id}")
    rule = obj.get("rule")
    if rule is not None and not isinstance(rule, dict):
        raise PlanError(f"{where}.rule", "expected a rule object or null (the plugin's default)")
    if "rule_version" not in obj:
        raise PlanError(f"{where}.rule_version", "missing")
    return TagRequest(
        tag_id, None if rule is None else json.dumps(rule), obj["rule_version"], _changed_since(obj, where, tables)
    )


def _changed_since(obj, where, tables):
    marks = obj.get("changed_since")
    if marks is None:
        return None
    if not isinstance(marks, dict) or not marks:
        raise PlanError(f"{where}.changed_since", "expected an object of table: microseconds (or null)")
    out = {}
    for table, mark in marks.items():
        at = f"{where}.changed_since.{table}"
        if table not in tables:
            raise PlanError(at, "not a table of the plan")
        if mark is not None and (isinstance(mark, bool) or not isinstance(mark, int)):
            raise PlanError(at, f"expected microseconds since the epoch or null, got {json.dumps(mark)}")
        out[table] = MIN_WATERMARK if mark is None else mark
    return out


def _scope(obj, tables):
    mode = _get(obj, "mode", "scope", str)
    if mode not in SCOPES:
        raise PlanError("scope.mode", f"{mode!r} is not one of {', '.join(SCOPES)}")
    scope = Scope(mode)
    if mode == "user_ids":
        ids = _get(obj, "user_ids", "scope", list)
        for i, user in enumerate(ids):
            if not isinstance(user, str):
                raise PlanError(f"scope.user_ids[{i}]", f"expected a string, got {json.dumps(user)}")
        scope.user_ids = list(dict.fromkeys(ids))
    if mode == "incremental":
        marks = _get(obj, "watermarks", "scope", dict)
        for table, mark in marks.items():
            at = f"scope.watermarks.{table}"
            if table not in tables:
                raise PlanError(at, "not a table of the plan")
            if isinstance(mark, bool) or not isinstance(mark, int):
                raise PlanError(at, f"expected microseconds since the epoch, got {json.dumps(mark)}")
        scope.watermarks = dict(marks)
    return scope


def parse(doc):
    """A Plan from the decoded JSON `doc`; raises PlanError."""
    data_dir = _get(doc, "data_dir", "", str, required=False)
    tables = [_table(t, f"tables[{i}]", data_dir) for i, t in enumerate(_get(doc, "tables", "", list))]
    names = [t.name for t in tables]
    if len(set(names)) != len(names):
        raise PlanError("tables", f"a table is listed twice: {names}")
    if UNIVERSE not in names:
        raise PlanError("tables", f"{UNIVERSE} (the user universe) is missing")
    tags = [_tag(t, f"tags[{i}]", names) for i, t in enumerate(_get(doc, "tags", "", list))]
    if not tags:
        raise PlanError("tags", "no tag to evaluate")
    if len({t.tag_id for t in tags}) != len(tags):
        raise PlanError("tags", "a tag_id is listed twice")
    as_of = _get(doc, "as_of", "", str)
    try:
        dt.date.fromisoformat(as_of)
    except ValueError:
        raise PlanError("as_of", f"{as_of!r} is not a YYYY-MM-DD date") from None
    return Plan(
        tables=tables,
        tags=sorted(tags, key=lambda t: t.tag_id),
        scope=_scope(_get(doc, "scope", "", dict), names),
        as_of=as_of,
        plugins_dir=_plugins_dir(doc),
        output=_get(doc, "output", "", str),
        data_dir=data_dir,
        copies_dir=_get(doc, "copies_dir", "", str, required=False),
        plugin_files=_plugin_files(doc),
        part_users=_part_users(doc),
    )


def _part_users(doc):
    n = _get(doc, "part_users", "", int, required=False)
    if n is None:
        return Plan.part_users
    if isinstance(n, bool) or n < 1:
        raise PlanError("part_users", f"expected a positive integer, got {json.dumps(n)}")
    return n


def _plugins_dir(doc):
    """The executors' plugins directory; without one, `plugin_files` are
    shipped to them (SparkContext.addFile) and loaded from Spark's files
    directory."""
    required = not doc.get("plugin_files") if isinstance(doc, dict) else True
    return _get(doc, "plugins_dir", "", str, required=required)


def _plugin_files(doc):
    files = _get(doc, "plugin_files", "", list, required=False) or []
    for i, f in enumerate(files):
        if not isinstance(f, str) or not f.endswith(".so"):
            raise PlanError(f"plugin_files[{i}]", f"expected the path or URI of a .so library, got {json.dumps(f)}")
    if files and doc.get("plugins_dir") is not None:
        raise PlanError("plugin_files", "give plugins_dir or plugin_files, not both")
    return files


def load(path):
    """The plan in the local file `path`; raises PlanError."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise PlanError(path, f"cannot read the plan: {e}") from None
    except json.JSONDecodeError as e:
        raise PlanError(path, f"not JSON: {e}") from None
    return parse(doc)
