"""A python reward for the allowlist tests: whether this module was imported shows in sys.modules."""


def score(completions, **_) -> list[float]:
    return [1.0 for _ in completions]


def _private(completions, **_) -> list[float]:
    return [0.0 for _ in completions]
