"""The HTTP relay against h11 (fuzz/differential.py): whatever a client sends, cut into reads,
what reaches the servers parses with h11 into the requests h11 reads from the client's bytes,
each with our X-Forwarded-For. ``\\xff\\x00`` in the input marks the cuts between reads."""

from __future__ import annotations

from fuzz.differential import check, quiet


def test_one_input(data: bytes) -> None:
    with quiet():
        check(data.split(b"\xff\x00"))


if __name__ == "__main__":
    from fuzz._atheris import run

    run(test_one_input)
