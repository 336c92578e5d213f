"""Coverage-guided fuzz harnesses for every parser of untrusted bytes and for the config loader.

Each ``fuzz/harness_<name>.py`` defines ``test_one_input(data: bytes) -> None``: it feeds ``data``
to one parser and raises only when the parser broke its contract (an exception other than our own
error, or a property that does not hold). Seeds live in ``fuzz/corpus/<name>/`` and are committed;
a crash found by the fuzzer becomes a file there *and* a regression test in ``tests/``.

``python -m fuzz`` runs every harness under atheris (libFuzzer) for a bounded time;
``tests/unit/test_fuzz_corpus.py`` replays every corpus file through its harness in the ordinary
test run, so the seeds and past crashes are checked even where atheris is not installed.
"""
