"""One-off studies: the question each answered, its command and its answer are in experiments/README.md."""


def as_list(value) -> list:
    """A list option as the config parser hands it over: a list ([S1,S2]), a comma-separated word
    (S1,S2) or a single value (3)."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [value]
