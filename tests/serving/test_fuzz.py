"""Schemathesis against the server's own OpenAPI schema: whatever a client sends to
``POST /predict`` (and the GET routes), the answer is never a 5xx. Plus hand-made hostile
bodies that a schema-driven generator does not think of, each answered 4xx in one line.

The server runs in this process under uvicorn (:class:`ServerThread`): the app's lifespan
(warm-up, the batcher) runs as in ``presso serve``, which an ASGI test transport may skip.

Hypothesis is driven here, one test per artifact, from schemathesis's strategies
(``APIOperation.as_strategy``) rather than by ``@schema.parametrize()``: the server's URL
comes from a fixture, and schemathesis's fixture-backed loader
(``schemathesis.pytest.from_fixture``, 4.32) fails on pytest 9.2 (it sets
``Function._nodeid``, which pytest 9.2 no longer has).
"""

from __future__ import annotations

import collections
import json

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from serve_helpers import FEATURES, ServerThread, artifacts_fixture  # noqa: F401 (the artifacts fixture)

import presso
from presso.serving.settings import ServeSettings

# One input of floats; two named inputs; a text model with a tokenizer (strings, or named
# int64 token arrays).
FUZZED = ["classification", "two-inputs", "embedding"]
FAST = 100  # examples per generation mode (positive, negative) of POST /predict, default run
BIG = 1000  # the same under -m slow


@pytest.fixture(scope="module", params=FUZZED)
def served(request, artifacts):
    """(task, base URL) of a server in this process for one artifact, shared by the module."""
    app = presso.serve_app(artifacts[request.param], ServeSettings(threads=1))
    with ServerThread(app) as url:
        yield request.param, url


def fuzz(task: str, url: str, examples: int) -> collections.Counter[int]:
    """Every operation of the live schema: no answer is a 5xx. ``examples`` positive and
    ``examples`` negative cases of ``POST /predict``; the GETs take no parameters, one case
    each. Returns how many answers of each status came back."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /predict", "GET /healthz", "GET /metrics", "GET /"} <= labels, labels
    statuses: collections.Counter[int] = collections.Counter()
    for operation in operations:
        if operation.method.upper() == "POST":
            for mode in GenerationMode:
                _no_server_error(task, url, operation, mode, examples, statuses)
        else:
            _no_server_error(task, url, operation, GenerationMode.POSITIVE, 1, statuses)
    return statuses


def _no_server_error(task, url, operation, mode: GenerationMode, examples: int, statuses) -> None:
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        response = case.call(base_url=url, timeout=60)
        statuses[response.status_code] += 1
        assert response.status_code < 500, (
            f"{task}: {operation.label} ({mode.value}) answered {response.status_code}: "
            f"{response.text[:300]}\nreproduce: {case.as_curl_command()}"
        )

    check()


def _report(task: str, statuses: collections.Counter[int]) -> int:
    n = sum(statuses.values())
    print(f"schemathesis: {n} cases against {task}, no 5xx (statuses {dict(sorted(statuses.items()))})")
    return n


def test_no_server_error(served):
    task, url = served
    # it did run: hypothesis stops early only where it runs out of distinct inputs
    assert _report(task, fuzz(task, url, FAST)) >= FAST


@pytest.mark.slow
def test_no_server_error_long(served):
    task, url = served
    assert _report(task, fuzz(task, url, BIG)) >= BIG


# Near-valid inputs: the shapes and numbers a real client gets slightly (or wildly) wrong,
# which schemathesis, knowing only "a list of anything", rarely builds. Answered 200 with the
# model's own outputs, or 4xx; never 5xx.
NUMBERS = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(width=32, allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.booleans()
)


def _rows(n: int, width: st.SearchStrategy[int]) -> st.SearchStrategy[list]:
    return width.flatmap(
        lambda w: st.lists(st.lists(NUMBERS, min_size=w, max_size=w), min_size=n, max_size=n)
    )


ROWS = st.integers(0, 4)
NEAR_VALID = {
    # six features a row, mostly; an empty row, one feature, seven
    "classification": ROWS.flatmap(
        lambda n: _rows(n, st.sampled_from([FEATURES] * 3 + [0, 1, FEATURES + 1]))
    ),
    # a: one value a row, b: three; now and then another width, or rows that do not match
    "two-inputs": st.tuples(ROWS, st.sampled_from([0] * 4 + [1])).flatmap(
        lambda nd: st.fixed_dictionaries(
            {
                "a": _rows(nd[0], st.sampled_from([1] * 4 + [2])),
                "b": _rows(nd[0] + nd[1], st.sampled_from([3] * 4 + [1])),
            }
        )
    ),
    # any code point, lone surrogates included; one string or a list
    "embedding": st.lists(st.text(st.characters(codec=None, exclude_categories=[]), max_size=40), max_size=4)
    | st.text(max_size=200),
}


def _nan(x):
    """None (the server's non-finite) and inf as NaN, for comparing."""
    a = np.array(x, dtype=object)
    a[np.equal(a, None)] = np.nan
    a = a.astype(np.float64)
    a[~np.isfinite(a)] = np.nan
    return a


def test_near_valid_inputs(served, artifacts):
    task, url = served
    reference = presso.load(artifacts[task])
    statuses: collections.Counter[int] = collections.Counter()

    @settings(max_examples=FAST, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(inputs=NEAR_VALID[task])
    def check(inputs):
        body = json.dumps({"inputs": inputs}).encode()  # ASCII: lone surrogates as \ud800 escapes
        got = httpx.post(f"{url}/predict", content=body, timeout=60)
        statuses[got.status_code] += 1
        assert got.status_code in (200, 413, 422), f"{got.status_code} {got.text[:300]} for {inputs!r}"[:2000]
        if got.status_code != 200:
            assert "\n" not in got.json()["error"]
            return
        if task == "embedding":
            want = reference.predict(inputs if isinstance(inputs, list) else [inputs])
            np.testing.assert_allclose(got.json()["outputs"], want, atol=2e-5)
        else:
            x = (
                {k: np.asarray(v).astype(np.float32) for k, v in inputs.items()}
                if isinstance(inputs, dict)
                else np.asarray(inputs).astype(np.float32)
            )
            want = reference.predict(x)
            np.testing.assert_allclose(_nan(got.json()["outputs"]), _nan(want), rtol=1e-5, equal_nan=True)

    check()
    print(
        f"near-valid: {sum(statuses.values())} cases against {task} (statuses {dict(sorted(statuses.items()))})"
    )
    assert statuses[200] > 0 and sum(statuses.values()) >= FAST // 2


DEEP = 10_000


def _nested(depth: int, inner: bytes = b"") -> bytes:
    return b"[" * depth + inner + b"]" * depth


# name -> raw body. Each is wrong for every artifact fuzzed (a float model, a two-input model,
# a text model) and must be answered 4xx with {"error": "one line"}, never 5xx.
HOSTILE: dict[str, bytes] = {
    "lists nested 10,000 deep": b'{"inputs": ' + _nested(DEEP) + b"}",
    "a number in lists nested 10,000 deep": b'{"inputs": ' + _nested(DEEP, b"1.5") + b"}",
    "lists nested 10,000 deep, unclosed": b'{"inputs": ' + b"[" * DEEP,
    "lists nested 500 deep (JSON parses, numpy does not)": b'{"inputs": ' + _nested(500, b"1") + b"}",
    "objects nested 10,000 deep": b'{"inputs": ' + b'{"a": ' * DEEP + b"1" + b"}" * DEEP + b"}",
    "a named input nested 10,000 deep": b'{"inputs": {"x": ' + _nested(DEEP, b"1") + b"}}",
    "1e999 as the inputs": b'{"inputs": 1e999}',
    "1e999 in a row": b'{"inputs": [[1e999, 0, 0, 0, 0, 0]]}',
    "-1e999 in a named input": b'{"inputs": {"x": [[-1e999, 0, 0, 0, 0, 0]], "a": [[-1e999]]}}',
    # 10**30 would fit a float32, but as a JSON integer beyond int64 numpy holds it as an object
    "10**30 in a row (an integer beyond int64)": b'{"inputs": [['
    + str(10**30).encode()
    + b", 0, 0, 0, 0, 0]]}",
    "10**40 in a row (beyond float32)": b'{"inputs": [[' + str(10**40).encode() + b", 0, 0, 0, 0, 0]]}",
    "10**30 among text": b'{"inputs": ["a text", ' + str(10**30).encode() + b"]}",
    "an integer of 5,000 digits": b'{"inputs": [[' + b"9" * 5000 + b", 0, 0, 0, 0, 0]]}",
    "a string for a named input": b'{"inputs": {"x": "abc"}}',
    "null inputs": b'{"inputs": null}',
    "true inputs": b'{"inputs": true}',
    "an empty object of inputs": b'{"inputs": {}}',
    "an empty list of rows": b'{"inputs": []}',
    "a list as the whole body": b"[1, 2, 3]",
    "a string as the whole body": b'"inputs"',
    "null as the whole body": b"null",
    "an empty body": b"",
    "not UTF-8": b'{"inputs": "\xff\xfe\xfa"}',
    "not UTF-8 at all": b"\xff\xfe\x00\xd8\x00\xdc" * 10,
    "NaN and Infinity": b'{"inputs": [[NaN, Infinity, -Infinity, 0, 0, 0]]}',
    "booleans for numbers": b'{"inputs": [[true, false, true, false, true, false]]}',
    "an unknown field": b'{"inputs": [[0, 0, 0, 0, 0, 0]], "extra": {"deep": ' + _nested(100) + b"}}",
    "rows of unequal lengths": b'{"inputs": [[0, 0, 0, 0, 0, 0], [0]]}',
    "an object in a row": b'{"inputs": [[{"a": 1}, 0, 0, 0, 0, 0]]}',
    "truncated JSON": b'{"inputs": [[0, 0, 0',
    "a NUL byte": b'{"inputs": [[0, 0, 0, 0, 0, 0]]}\x00',
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_bodies_get_one_line_4xx(served, name):
    task, url = served
    got = httpx.post(
        f"{url}/predict", content=HOSTILE[name], headers={"content-type": "application/json"}, timeout=60
    )
    assert 400 <= got.status_code < 500, f"{task}, {name}: {got.status_code} {got.text[:300]}"
    body = got.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"] and "\n" not in body["error"], body
    assert len(body["error"]) < 500 and "Traceback" not in body["error"], body


def test_hostile_token_ids_get_one_line_4xx(artifacts):
    """The text model's named token arrays: ids beyond the vocabulary or the int64 range, an
    empty sequence. Checked or refused by the model, they are the caller's to fix: 4xx."""
    names = [i.name for i in presso.load(artifacts["embedding"]).session.get_inputs()]
    assert "input_ids" in names, names

    def named(ids) -> dict:
        return {"inputs": {n: ids if n == "input_ids" else [[0] * len(ids[0])] for n in names}}

    bodies = {
        "ids beyond the vocabulary": named([[10**9, 1, 2]]),
        "negative ids": named([[-(10**9), 1, 2]]),
        "ids beyond int64": named([[10**30, 1, 2]]),
        "ids of 2**63": named([[2**63, 1, 2]]),
        "fractional ids": named([[1.5, 1, 2]]),
        "an empty sequence": named([[]]),
    }
    with ServerThread(presso.serve_app(artifacts["embedding"], ServeSettings(threads=1))) as url:
        for name, body in bodies.items():
            got = httpx.post(f"{url}/predict", json=body, timeout=60)
            assert 400 <= got.status_code < 500, f"{name}: {got.status_code} {got.text[:300]}"
            error = got.json()["error"]
            assert error and "\n" not in error, (name, error)
        # The server still answers a good request after all that.
        ok = httpx.post(f"{url}/predict", json={"inputs": ["still here"]}, timeout=60)
        assert ok.status_code == 200, ok.text


def test_an_id_of_2_to_the_63_is_refused_before_the_model(artifacts):
    """numpy reads [2**63, 1, 2] as float64; 2.0**63 compares equal to int64's maximum
    (rounded to a float), yet is beyond it: the server's own range check must refuse it, not
    cast it to -2**63 (a model that does not index with it would answer 200, wrongly)."""
    names = [i.name for i in presso.load(artifacts["embedding"]).session.get_inputs()]
    body = {"inputs": {n: [[2**63, 1, 2]] if n == "input_ids" else [[0, 0, 0]] for n in names}}
    with ServerThread(presso.serve_app(artifacts["embedding"], ServeSettings(threads=1))) as url:
        got = httpx.post(f"{url}/predict", json=body, timeout=60)
    assert got.status_code == 422, got.text
    assert "range of int64" in got.json()["error"], got.json()["error"]
