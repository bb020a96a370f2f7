"""The generated reference docs match the code: a setting or an endpoint added without
regenerating them (`python -m cli.docs`) fails here."""

from cli.docs import rendered


def test_generated_docs_are_current() -> None:
    stale = [str(path) for path, text in rendered().items() if path.read_text() != text]
    assert not stale, f"regenerate with `python -m cli.docs`: {stale}"
