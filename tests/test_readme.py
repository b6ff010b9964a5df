"""Every ```python block of README.md runs as written.

Each block runs in a fresh namespace, in order, with the current folder set to an empty
temporary folder (so a block cannot lean on files of the checkout) and the datasets cache in
a temporary folder too. A block is compiled with README.md as its file name and its README
line numbers, so a traceback points at the README line that failed.
"""

import re
import traceback
from pathlib import Path

import pytest

from jax_lm import data

README = Path(__file__).resolve().parents[1] / "README.md"

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line of the opening fence, 1-based; code) of every ```python block, in order."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, lang = opening.groups()
        start, i = i, i + 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            i += 1
        if lang == "python":
            body = [line[len(indent):] if line.startswith(indent) else line
                    for line in lines[start + 1:i]]
            blocks.append((start + 1, "\n".join(body) + "\n"))
        i += 1  # past the closing fence
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_python_blocks():
    assert BLOCKS, f"no ```python blocks found in {README}"


@pytest.fixture(scope="module")
def readme_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("readme_cache")


@pytest.mark.parametrize(
    "number, line, code",
    [(n, line, code) for n, (line, code) in enumerate(BLOCKS, 1)],
    ids=[f"block{n}-line{line}" for n, (line, _) in enumerate(BLOCKS, 1)],
)
def test_readme_block_runs(number, line, code, tmp_path, monkeypatch, readme_cache):
    if "shared_data_dir()" in code and not data.shared_data_dir().is_dir():
        pytest.skip(f"README.md:{line} reads {data.shared_data_dir()}, which is absent "
                    "(set JAX_LM_DATA_DIR to the folder with ptb/ and tinyshakespeare/)")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JAX_LM_CACHE_DIR", str(readme_cache))
    # Leading newlines make the compiled block's line numbers the README's.
    compiled = compile("\n" * line + code, str(README), "exec")
    try:
        exec(compiled, {"__name__": f"readme_block{number}"})
    except Exception as err:  # reported below, outside the handler, without chaining
        failure = err
    else:
        return
    frames = [f for f in traceback.extract_tb(failure.__traceback__) if f.filename == str(README)]
    where = f"README.md:{frames[-1].lineno}: {frames[-1].line}" if frames else f"README.md:{line}"
    detail = "".join(traceback.format_exception(failure))
    pytest.fail(
        f"README ```python block {number} (opening at line {line}) raised "
        f"{type(failure).__name__}: {failure}\n  at {where}\n\n{detail}",
        pytrace=False,
    )
