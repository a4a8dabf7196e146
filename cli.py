"""The command line of every program: how config.py declares a key, and the ``--key=value`` parser.

A key of config.py is one line, ``name: Key(read_by, check) = default  # comment``:
``read_by`` names the programs (and the model builder) that read it, ``check`` what its value
must be, and the comment is its --help text. Everything here reads those lines; nothing else
lists keys. A tool outside config.py declares its own keys as ``{key: (default, comment[, types[,
check]])}`` (``like("device")``: config.py's key of that name) and hands them to ``parse`` /
``parse_or_exit`` as ``extra``.

Values are Python literals (numbers, lists, booleans, None); a bare word is a string; a bare
``--flag`` means True. ``--config=path.py`` reads a file of ``key = literal`` lines (read as data,
never executed). A key the program does not read, a value of the wrong type and a value that
cannot work (e.g. ``--lr=0``) are rejected with a one-line message naming the key.
"""
from __future__ import annotations

import ast
import copy
import math
import re
import sys
from pathlib import Path

PROGRAMS = ("train", "test", "preprocess", "demo")  # the programs that take config.py's keys
MODEL_BUILDER = "newmodel"  # read_by name of the keys newmodel.build_model reads (the model's own arguments)
MAX_SEED = 2**32 - 1  # numpy's seed range


class ConfigError(ValueError):
    pass


class Range:
    """A number from ``lo`` to ``hi``; ``lo_ok``/``hi_ok``: whether the end itself is allowed."""

    def __init__(self, lo: float, hi: float, lo_ok: bool, hi_ok: bool, wanted: str):
        self.lo, self.hi, self.lo_ok, self.hi_ok, self.wanted = lo, hi, lo_ok, hi_ok, wanted

    def __call__(self, key: str, value):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                value < self.lo or value > self.hi or (value == self.lo and not self.lo_ok)
                or (value == self.hi and not self.hi_ok)):
            raise ConfigError(f"--{key}: must be {self.wanted}, got {value!r}")
        return value


POSITIVE = Range(0, math.inf, False, False, "> 0")
AT_LEAST_1 = Range(1, math.inf, True, False, ">= 1")
NON_NEGATIVE = Range(0, math.inf, True, False, ">= 0")
RATE = Range(0, 1, True, False, "in [0, 1)")


def one_of(*choices):
    """A check: the value is one of ``choices``."""
    def check(key: str, value):
        if value not in choices:
            raise ConfigError(f"--{key}: expected one of {choices}, got {value!r}")
        return value
    return check


def seed_list(key: str, value) -> list:
    """A check: one seed or a non-empty list of distinct seeds in numpy's range (one seed -> [seed])."""
    value = [value] if isinstance(value, int) else value
    if not value or not all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        raise ConfigError(f"--{key}: expected a non-empty list of integers, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"--{key}: each seed once, got {value!r}")
    bad = [s for s in value if not 0 <= s <= MAX_SEED]
    if bad:
        raise ConfigError(f"--{key}: each seed must be in 0 .. 2**32 - 1, got {bad[0]}")
    return value


def seed_or_none(key: str, value):
    """A check: None or one seed in numpy's range."""
    if value is not None and not 0 <= value <= MAX_SEED:
        raise ConfigError(f"--{key}: must be in 0 .. 2**32 - 1 or None, got {value}")
    return value


def count_or_names(key: str, value):
    """A check: a count >= 1, or a non-empty list of distinct names."""
    if isinstance(value, int) and value < 1 or isinstance(value, list) and (
            not value or not all(isinstance(c, str) for c in value)):
        raise ConfigError(f"--{key}: must be a count >= 1 or a non-empty list of names, got {value!r}")
    if isinstance(value, list) and len(set(value)) != len(value):
        raise ConfigError(f"--{key}: lists a name twice: {value!r}")
    return value


class Key:
    """The declaration of one config.py key (its annotation): which programs read it, the types it
    takes when they are not its default's (``None`` in ``types`` allows None), and its check."""

    def __init__(self, read_by: str, check=None, types: tuple | None = None):
        self.read_by = tuple(read_by.split())
        self.check = check
        self.types = None if types is None else tuple(type(None) if t is None else t for t in types)


def declared() -> dict[str, Key]:
    """{key: Key} of config.py, in the file's order."""
    import config  # config.py imports this module for Key; the keys are read when first needed
    return dict(config.__annotations__)


def defaults(program: str | None = None) -> dict:
    """Every config.py key with its default value (``program``: only the keys that program reads)."""
    import config
    return {k: copy.deepcopy(getattr(config, k)) for k in read_by(program)}


def read_by(program: str | None) -> tuple:
    """The keys ``program`` (or MODEL_BUILDER) reads, in config.py's order; None: every key."""
    if program is not None and program not in (*PROGRAMS, MODEL_BUILDER):
        raise ValueError(f"unknown program {program!r}; known: {', '.join(PROGRAMS)}")
    return tuple(k for k, spec in declared().items() if program is None or program in spec.read_by)


def model_keys() -> tuple:
    """The keys newmodel.build_model reads: a checkpoint stores them as the model's own arguments."""
    return read_by(MODEL_BUILDER)


def literal(text: str):
    """A command-line value: a Python literal, a [bare, word] list, or else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # e.g. {[1]: 2} is unhashable
        pass
    if text.startswith("[") and text.endswith("]"):  # [S1,S2] or ['*_008', 9]: bare words are strings
        return [literal(t.strip()) for t in text[1:-1].split(",") if t.strip()]
    return text  # a bare word is a string


def _kind(types) -> str:
    return "/".join("None" if t is type(None) else t.__name__ for t in types)


def _check(key: str, value, base: dict, specs: dict):
    if key not in base:
        raise ConfigError(f"unknown config key {key!r} for this program. It accepts: {', '.join(sorted(base))}")
    spec = specs[key]
    allowed = spec.types or (type(base[key]),)
    if (float in allowed or isinstance(base[key], float)) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(f"--{key}: expected {_kind(allowed)}, got {value!r} (a boolean)")
    if not isinstance(value, allowed):
        raise ConfigError(f"--{key}: expected {_kind(allowed)}, got {value!r} ({type(value).__name__})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"--{key}: must be a finite number, got {value!r}")
    return spec.check(key, value) if spec.check else value


def read_config_file(path) -> dict:
    """A file of ``key = literal`` assignments (comments allowed), parsed as data, not executed."""
    path = Path(path)
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from exc
    except SyntaxError as exc:
        raise ConfigError(f"{path}: not valid Python syntax (line {exc.lineno}: {exc.msg})") from exc
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # a docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ConfigError(f"{path}:{node.lineno}: only 'key = value' lines are allowed in a config file")
        key = node.targets[0].id
        if key in out:
            raise ConfigError(f"{path}:{node.lineno}: {key!r} is set twice")
        try:
            out[key] = ast.literal_eval(node.value)
        except (ValueError, TypeError, MemoryError, RecursionError) as exc:
            raise ConfigError(f"{path}:{node.lineno}: the value must be a Python literal ({exc})") from exc
    return out


def like(key: str, default=None, comment: str | None = None) -> tuple:
    """A tool's option that means what config.py's ``key`` means: its default (unless given),
    comment (unless given), types and check, as an ``extra`` entry."""
    spec = declared()[key]
    default = defaults()[key] if default is None else default
    return (default, comment or comments()[key], spec.types or (type(default),), spec.check)


def _extra_key(default, given) -> Key:
    """The Key of a tool's own option from its (types[, check]): the given types, else its default's."""
    check = given[1] if len(given) > 1 else None
    if given:
        types = given[0]
    elif default is None:
        types = (object,)
    elif isinstance(default, (int, float)) and not isinstance(default, bool):
        types = (int, float) if isinstance(default, float) else (int,)
    elif isinstance(default, (list, dict)):
        types = (list, dict, int, float, str, type(None))  # e.g. a per-protocol dict or one value
    else:
        types = (type(default),)
    return Key("", check, types)


def _program_keys(program: str | None, extra: dict | None) -> tuple[dict, dict]:
    """(defaults, Key) of a program's keys plus its ``extra`` {key: (default, comment[, types])}."""
    if program is not None and program not in PROGRAMS:
        raise ValueError(f"unknown program {program!r}; known: {', '.join(PROGRAMS)}")
    base = defaults(program) if program else {}
    keys = declared()
    specs = {k: keys[k] for k in base}
    for key, (default, _comment, *given) in (extra or {}).items():
        base[key], specs[key] = default, _extra_key(default, given)
    return base, specs


def parse(argv=None, program: str | None = "train", extra: dict | None = None) -> tuple[dict, set]:
    """Resolve a program's config from defaults, ``--config=file.py`` and ``--key=value`` arguments.

    ``extra``: keys a script declares itself, {key: (default, comment[, types[, check]])}; they are added to the
    program's keys (or are all the keys, with ``program=None``). Returns (config, keys the user set).
    """
    argv = sys.argv[1:] if argv is None else argv
    base, specs = _program_keys(program, extra)
    cfg, given = copy.deepcopy(base), set()  # callers may mutate lists in cfg
    for arg in argv:
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; use --key=value. It accepts: {', '.join(sorted(base))}")
        key, eq, text = arg[2:].partition("=")
        if key == "config":
            if not eq:
                raise ConfigError("--config needs a file: --config=path.py")
            for k, v in read_config_file(text).items():
                cfg[k] = _check(k, v, base, specs)
                given.add(k)
            continue
        value = literal(text) if eq else True
        if isinstance(value, tuple):  # --seeds=1,2 reads as a tuple
            value = list(value)
        allowed = (specs[key].types or (type(base[key]),)) if key in base else ()
        if eq and str in allowed and not isinstance(value, allowed):
            value = text  # e.g. --run_dir=2024 is a folder name, not a number
        cfg[key] = _check(key, value, base, specs)
        given.add(key)
    return cfg, given


def comments() -> dict:
    """{key: comment} read from config.py's ``key: Key(...) = value  # comment`` lines (and their
    ``#   ...`` continuation lines), so that --help and the README cannot drift from the defaults."""
    import config
    out, last = {}, None
    for line in Path(config.__file__).read_text().splitlines():
        m = re.match(r"^([a-z_][a-z0-9_]*)(?:: .*?)? = .*?  # (.*)$", line)
        if m:
            last = m.group(1)
            out[last] = m.group(2).strip()
        elif last and line.startswith("#   "):
            out[last] += " " + line[4:].strip()
        else:
            last = None
    return out


def help_text(program: str | None, extra: dict | None = None, title: str = "") -> str:
    base, _ = _program_keys(program, extra)
    notes = dict(comments(), **{k: (v[1] if len(v) > 1 else "") for k, v in (extra or {}).items()})
    lines = [title or f"{program or Path(sys.argv[0]).name}: keys (--key=value), defaults and what they do"]
    lines += [f"  --{k}={base[k]!r}\n      {notes.get(k, '')}" for k in base]
    return "\n".join(lines)


def parse_or_exit(argv=None, program: str | None = "train", extra: dict | None = None) -> tuple[dict, set]:
    """``parse``, with ``--help`` printing the keys and a config error ending the program in one line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        print(help_text(program, extra))
        sys.exit(0)
    try:
        return parse(argv, program, extra)
    except ConfigError as exc:
        sys.exit(f"config error: {exc}")
