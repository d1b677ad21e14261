"""Counted nouns for people: "1 evaluator", "2 evaluators" (pages, flashes and API messages alike)."""


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """'1 evaluator', '0 evaluators', '3 stories' (plural_form for irregular nouns)."""
    noun = singular if count == 1 else (plural_form or singular + "s")
    return f"{count} {noun}"
