"""BlockSplitter: finished Markdown blocks once, a small tail; half-written Markdown kept calm."""

from __future__ import annotations

import random

import pytest

from pk_notebook.notebook.blocks import BlockSplitter, escape_open_math

ANSWER = (
    "# Title\nIntro line\nmore.\n\n- a\n- b\n\n  still item b\n\n"
    "```python\nx = 1\n\ny = 2\n```\nafter the fence\n\n"
    "| a | b |\n|---|---|\n| 1 | 2 |\n\nThe $x + y$ sum.\n\n~~~\ncode\n~~~\nend"
)


def feed_in_pieces(text: str, sizes: list[int], limit: int = 10_000) -> tuple[list[str], str]:
    splitter = BlockSplitter(limit=limit)
    done: list[str] = []
    at = 0
    for size in sizes:
        splitter.feed(text[at : at + size])
        at += size
        done += splitter.take()
    return done, splitter.tail


@pytest.mark.parametrize("seed", range(20))
def test_the_pieces_and_the_tail_are_the_text_however_it_arrives(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.randint(1, 12) for _ in range(len(ANSWER))]
    done, tail = feed_in_pieces(ANSWER, sizes)
    assert "".join(done) + tail == ANSWER
    assert done == feed_in_pieces(ANSWER, [len(ANSWER)])[0]  # the same cuts in one go


def test_cuts_are_at_block_boundaries() -> None:
    done, tail = feed_in_pieces(ANSWER, [len(ANSWER)])
    assert done[:4] == [
        "# Title\n",
        "Intro line\nmore.\n\n",
        "- a\n- b\n\n  still item b\n\n",  # an indented line after a blank stays in the list
        "```python\nx = 1\n\ny = 2\n```\n",  # a blank line inside code is no boundary
    ]
    assert "| a | b |\n|---|---|\n| 1 | 2 |\n\n" in done
    assert tail == "end"


def test_a_long_code_block_is_cut_and_reopened_so_the_tail_stays_small() -> None:
    code = "```python\n" + "".join(f"line_{i} = {i}\n" for i in range(2000)) + "```\n"
    splitter = BlockSplitter(limit=500)
    tails = []
    for i in range(0, len(code), 37):
        splitter.feed(code[i : i + 37])
        for piece in splitter.take():
            assert piece.startswith("```python\n") and piece.endswith("```\n")
        tails.append(len(splitter.tail))
    assert max(tails) < 600


def test_a_long_table_repeats_its_header_in_the_tail() -> None:
    table = "| k | v |\n|---|---|\n" + "".join(f"| {i} | x |\n" for i in range(300))
    splitter = BlockSplitter(limit=200)
    splitter.feed(table)
    pieces = splitter.take()
    assert all(p.startswith("| k | v |\n|---|---|\n") for p in pieces)
    assert splitter.tail.startswith("| k | v |\n|---|---|\n")


def test_one_huge_line_is_cut_at_a_space() -> None:
    splitter = BlockSplitter(limit=100)
    splitter.feed("word " * 1000)
    pieces = splitter.take()
    assert pieces and len(splitter.tail) <= 200
    assert all(p.endswith(" \n") for p in pieces)


def tail_of(text: str) -> str:
    splitter = BlockSplitter()
    splitter.feed(text)
    splitter.take()
    return splitter.tail_markdown()


def test_an_open_code_fence_renders_as_code() -> None:
    assert tail_of("Intro\n\n```python\ndef f():\n    return 1") == (
        "```python\ndef f():\n    return 1\n```"
    )


def test_a_table_row_being_written_is_held_back() -> None:
    assert tail_of("| a | b |\n|---|---|\n| 1 | 2 |\n| 3 |") == "| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert tail_of("| a | b |\n|--") == ""  # a header without its delimiter row yet
    assert tail_of("| a | b |\n") == ""


def test_math_is_typeset_only_once_closed() -> None:
    assert tail_of("Cost $x + y") == "Cost &#36;x + y"
    assert tail_of("Cost $x + y$ and $$\\sum_i") == "Cost $x + y$ and &#36;&#36;\\sum_i"
    assert escape_open_math("see \\(a_b") == "see &#92;(a_b"
    assert escape_open_math("`$HOME` is $") == "`$HOME` is &#36;"
    assert escape_open_math("plain") == "plain"


def test_crlf_split_across_pieces_is_one_newline() -> None:
    splitter = BlockSplitter()
    done: list[str] = []
    for piece in ("para\r", "\n\r", "\nnext\r\n"):
        splitter.feed(piece)
        done += splitter.take()
    assert done == ["para\n\n"] and splitter.tail == "next\n"
