"""The ``--key=value`` options of the tools in benchmarks/, read by ``cli.parse_or_exit`` as every program's.

Each tool declares its keys in a module-level dict, ``{key: (default, comment[, accepted types])}``,
and ``--help`` prints them with their defaults. A list option takes ``--models=vlaai,ivlaai``,
``--models=[vlaai,ivlaai]`` or one value ``--models=vlaai``; an empty ``--extra_windows=`` is no
value at all. ``as_list`` turns each of these into a list.
"""
from __future__ import annotations

import sys
from types import SimpleNamespace

import cli


def parse(argv, keys: dict, program: str, doc: str = "") -> SimpleNamespace:
    """The tool's options as attributes (``cli.parse_or_exit(argv, program=None, extra=keys)``).

    ``--help`` prints ``doc`` and the keys under the title ``python -m benchmarks.<program>``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        title = f"python -m benchmarks.{program}: keys (--key=value), defaults and what they do"
        print((doc.strip() + "\n\n" if doc.strip() else "") + cli.help_text(None, keys, title=title))
        sys.exit(0)
    cfg, _ = cli.parse_or_exit(argv, None, keys)
    return SimpleNamespace(**cfg)


def as_list(value, key: str, kind=str) -> list:
    """A list option as the parser hands it over -- a list ([a,b]), a comma-separated word (a,b),
    one value (a, 3) or nothing ('') -- as a list of ``kind``; a value that is not one is a
    one-line SystemExit naming ``--key``."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    try:
        return [v if kind is str and isinstance(v, str) else kind(str(v).strip()) for v in items]
    except ValueError:
        raise SystemExit(f"--{key}: expected a comma-separated list of {kind.__name__} values, got {value!r}") from None
