import pytest

from core.data.policy import hidden_reason


@pytest.mark.parametrize(
    ("path", "reason"),
    [("__MACOSX/a/b.png", "macos_metadata"), ("a/._b.png", "macos_metadata"), ("a/.DS_Store", "macos_metadata"),
     (".cache/a.png", "hidden"), ("a/.b.png", "hidden"), ("a/b.png", None), ("./a/b.png", None)],
)
def test_hidden_reason_names_why_a_file_is_not_an_image_of_the_set(path: str, reason: str | None) -> None:
    assert hidden_reason(path) == reason
