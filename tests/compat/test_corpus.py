"""The compatibility corpus (issue 21): real-world transformers SigLIP / SigLIP 2 snippets run as written against
transformers 5.24 (the oracle) and with only their import statements switched to `siglip`, offline, on tiny random
checkpoints that transformers saved under the snippets' hub ids. A snippet passes when both runs finish and leave
the same values behind (floats within 1e-5). How it works and how to add a snippet: README.md beside this file."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import _corpus
import pytest

SNIPPETS = _corpus.snippets()


@pytest.fixture(scope="session")
def corpus_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict, int, Path]]:
    """The two runner processes, the offline hub cache and the image server, built once per session."""
    root = tmp_path_factory.mktemp("corpus")
    hub_root = root / "hub"
    runners = {
        library: _corpus.Runner(library, _corpus.run_environment(hub_root)) for library in _corpus.LIBRARIES
    }
    try:
        _corpus.build_hub_cache(hub_root, sorted({hub_id for s in SNIPPETS for hub_id in s.hub_ids}))
        with _corpus.image_server() as port:
            yield runners, port, root / "runs"
    finally:
        for runner in runners.values():
            runner.close()


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[snippet.name for snippet in SNIPPETS])
def test_snippet(snippet: _corpus.Snippet, request: pytest.FixtureRequest) -> None:
    missing = _corpus.missing_requirements(snippet)
    if missing:
        pytest.skip("needs " + ", ".join(missing))
    runners, port, work = request.getfixturevalue("corpus_world")
    verdict = _corpus.verdict(snippet, runners, port, work)
    if verdict.startswith("SKIP: "):
        pytest.skip(verdict.removeprefix("SKIP: "))
    declared = snippet.header.get("differs-on-purpose")
    if declared is None:
        assert verdict == "PASS", verdict
        return
    # `# Differs-on-purpose: reason; values: name, name`: only those values may differ, and they must
    values = re.search(r"; values: (.*)$", declared)
    assert values and verdict.startswith("FAIL: outputs differ"), verdict
    expected = {v.strip() for v in values.group(1).split(", ")}
    differing = set(re.findall(r"^  (\S+?):", verdict, flags=re.M))
    assert differing == expected, f"declared {sorted(expected)}, differing {sorted(differing)}:\n{verdict}"


def test_corpus_size_and_sources() -> None:
    """At least 45 snippets, each citing where it comes from."""
    assert len(SNIPPETS) >= 45
    assert all(snippet.header["source"] for snippet in SNIPPETS)


@pytest.mark.parametrize(
    ("written", "switched"),
    [
        ("from transformers import AutoModel, pipeline\n", "from siglip import AutoModel, pipeline\n"),
        ("from transformers.image_utils import load_image\n", "from siglip.image_utils import load_image\n"),
        ("from transformers import (\n    AutoModel,\n)\n", "from siglip import (\n    AutoModel,\n)\n"),
        ("import transformers\n", "import siglip as transformers\n"),
        ("import transformers as tf\n", "import siglip as tf\n"),
        (
            "def f():\n    from transformers import SiglipModel\n",
            "def f():\n    from siglip import SiglipModel\n",
        ),
        (
            'x = "from transformers import X"  # transformers\n',
            'x = "from transformers import X"  # transformers\n',
        ),
        ("from transformers_extra import X\n", "from transformers_extra import X\n"),
    ],
)
def test_only_import_statements_change(written: str, switched: str) -> None:
    assert _corpus.swap_imports(written) == switched


def test_urls_in_strings_go_to_the_local_server() -> None:
    source = 'url = "http://images.cocodataset.org/a.jpg"  # see https://example.org\n'
    assert _corpus.serve_urls_locally(source, 8000) == (
        'url = "http://127.0.0.1:8000/images.cocodataset.org/a.jpg"  # see https://example.org\n'
    )
