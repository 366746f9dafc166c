"""Any text presso prints in an error (file, key and layer names are the user's) stays one
line on the terminal and drives nothing: no line break, no escape sequence."""

from __future__ import annotations

import unicodedata

from fuzz_cases import tried
from hypothesis import given, settings
from hypothesis import strategies as st

from presso.cli.main import main
from presso.errors import one_line

ESCAPED = {"Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp"}  # what moves the cursor or breaks a line


@settings(max_examples=300, deadline=None, derandomize=True)
@given(text=st.text(max_size=60))
def test_one_line_escapes_every_line_break_and_control_character(text):
    tried["terminal text"] += 1
    shown = one_line(text)
    assert not any(unicodedata.category(c) in ESCAPED for c in shown)
    if text.isprintable():
        assert shown == text  # names without control characters are shown as written
    # everything else the user wrote is still there, in order
    rest = iter(shown)
    assert all(c in rest for c in text if unicodedata.category(c) not in ESCAPED)


def test_a_hostile_file_name_in_an_error_is_one_escaped_line(tmp_path, capsys):
    name = "evil\n\x1b[31mred\rrecipe.yaml"
    out = tmp_path / "out"
    code = main(["compress", "--example", "digits", "--recipe", str(tmp_path / name), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "\x1b" not in err and "\r" not in err
    assert "evil\\n\\x1b[31mred\\rrecipe.yaml" in err
    assert not out.exists()
