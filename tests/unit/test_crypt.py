"""age encryption of artifacts: streams that round-trip in any chunking, errors that say what is wrong without a key in
them, files the `age` CLI reads and writes, memory that stays flat, and no worker thread left behind."""

from __future__ import annotations

import gc
import hashlib
import io
import os
import random
import shutil
import subprocess
import threading
import tracemalloc

import pyrage
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockvault.storage.crypt import (
    NO_IDENTITY,
    SUFFIX,
    DecryptionFailed,
    EncryptingWriter,
    decrypted,
    parse_identities,
    recipient_of,
)

ALICE = pyrage.x25519.Identity.generate()
BOB = pyrage.x25519.Identity.generate()
EVE = pyrage.x25519.Identity.generate()
AGE_CHUNK = 64 << 10  # age's payload chunk: sizes around its multiples cross chunk boundaries
HEADER = b"age-encryption.org/v1\n"


def secret(identity: pyrage.x25519.Identity) -> str:
    return str(identity)


def public(identity: pyrage.x25519.Identity) -> str:
    return str(identity.to_public())


def key_file(identity: pyrage.x25519.Identity) -> str:
    """An identity file as `age-keygen` writes it."""
    return f"# created: 2026-11-21T03:00:00Z\n# public key: {public(identity)}\n{secret(identity)}\n"


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def encrypt(data: bytes, recipients: list[str], cuts: list[int] = ()) -> bytes:
    out = io.BytesIO()
    writer = EncryptingWriter(out, recipients)
    for piece in pieces(data, list(cuts)):
        writer.write(piece)
    writer.close()
    return out.getvalue()


def decrypt(ciphertext: bytes, identities: list[str], cuts: list[int] = ()) -> bytes:
    return b"".join(decrypted(iter(pieces(ciphertext, list(cuts))), identities))


def workers() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("age-")]


@pytest.fixture(autouse=True)
def no_worker_left_behind():
    yield
    assert workers() == []


def failure(ciphertext: bytes, identities: list[str]) -> str:
    with pytest.raises(DecryptionFailed) as caught:
        decrypt(ciphertext, identities)
    message = str(caught.value)
    for identity in (ALICE, BOB, EVE):
        assert secret(identity) not in message and secret(identity).lower() not in message
    return message


# --- round trips -------------------------------------------------------------------------------------------------------


sizes = st.one_of(
    st.integers(0, 300_000),
    st.sampled_from([0, 1, AGE_CHUNK - 1, AGE_CHUNK, AGE_CHUNK + 1, 2 * AGE_CHUNK, 3 * AGE_CHUNK + 7]),
)
cuts = st.lists(st.integers(0, 400_000), max_size=12)


@settings(max_examples=60, deadline=None)
@given(size=sizes, seed=st.integers(0, 2**32), write_cuts=cuts, read_cuts=cuts)
def test_round_trip_in_any_chunking(size, seed, write_cuts, read_cuts):
    data = random.Random(seed).randbytes(size)

    ciphertext = encrypt(data, [public(ALICE)], write_cuts)

    assert ciphertext.startswith(HEADER)
    assert decrypt(ciphertext, [secret(ALICE)], read_cuts) == data


def test_empty_input_is_a_valid_age_file():
    ciphertext = encrypt(b"", [public(ALICE)])

    assert ciphertext.startswith(HEADER)
    assert decrypt(ciphertext, [secret(ALICE)]) == b""
    assert pyrage.decrypt(ciphertext, [ALICE]) == b""


def test_any_recipient_decrypts_and_identities_may_be_whole_key_files():
    data = os.urandom(200_000)
    ciphertext = encrypt(data, [public(ALICE), public(BOB)], [AGE_CHUNK])

    assert ciphertext.count(b"\n-> X25519 ") == 2
    assert decrypt(ciphertext, [secret(ALICE)]) == data
    assert decrypt(ciphertext, [secret(BOB)]) == data
    assert decrypt(ciphertext, [key_file(EVE) + key_file(BOB)]) == data
    assert decrypt(ciphertext, [secret(EVE), key_file(ALICE)]) == data


def test_ciphertext_holds_no_plaintext():
    marker = bytes(range(64))
    data = marker * 5000

    ciphertext = encrypt(data, [public(ALICE)], [100, 70_000, 250_000])

    assert marker[:16] not in ciphertext
    assert len(ciphertext) > len(data)
    assert decrypt(ciphertext, [secret(ALICE)]) == data


def test_writer_accepts_buffers_and_leaves_out_open():
    out = io.BytesIO()
    writer = EncryptingWriter(out, [public(ALICE)])
    writer.write(bytearray(b"bytearray "))
    writer.write(memoryview(b"memoryview"))
    writer.close()
    writer.close()

    assert not out.closed
    assert pyrage.decrypt(out.getvalue(), [ALICE]) == b"bytearray memoryview"
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"more")


def test_suffix():
    assert SUFFIX == ".age"


# --- keys --------------------------------------------------------------------------------------------------------------


def test_parse_identities_picks_the_key_lines_of_a_key_file():
    text = "\n" + key_file(ALICE).replace("\n", "\r\n") + "\n  # another\n" + key_file(BOB)

    assert parse_identities(text) == [secret(ALICE), secret(BOB)]
    assert parse_identities("# only a comment\n\n") == []


def test_parse_identities_names_the_bad_line_without_echoing_it():
    damaged = secret(ALICE)[:-3] + ("AAA" if not secret(ALICE).endswith("AAA") else "QQQ")
    with pytest.raises(ValueError, match="line 3 .* damaged") as caught:
        parse_identities(f"# created\n\n{damaged}\n")
    assert damaged not in str(caught.value)

    with pytest.raises(ValueError, match="line 2 .* not an age X25519 identity") as caught:
        parse_identities("# key\nhunter2-my-passphrase\n")
    assert "hunter2" not in str(caught.value)


def test_recipient_of_is_the_public_key():
    assert recipient_of(secret(ALICE)) == public(ALICE)
    assert recipient_of(secret(BOB) + "\n") == public(BOB)
    with pytest.raises(ValueError, match="not an age X25519 identity") as caught:
        recipient_of("AGE-SECRET-KEY-1NOTAKEY")
    assert "NOTAKEY" not in str(caught.value)


def test_invalid_recipient_is_named_by_index():
    typo = public(BOB)[:-1] + ("q" if not public(BOB).endswith("q") else "p")

    with pytest.raises(ValueError, match=r"recipients\[1\] .* not a valid age X25519 recipient") as caught:
        EncryptingWriter(io.BytesIO(), [public(ALICE), typo])
    assert typo in str(caught.value)


def test_a_secret_given_as_recipient_is_never_echoed():
    with pytest.raises(ValueError, match=r"recipients\[0\] is an age identity, which is secret") as caught:
        EncryptingWriter(io.BytesIO(), [secret(ALICE)])
    assert secret(ALICE) not in str(caught.value)

    with pytest.raises(ValueError, match=r"recipients\[1\] is not an age X25519 recipient") as caught:
        EncryptingWriter(io.BytesIO(), [public(ALICE), "correct horse battery staple"])
    assert "horse" not in str(caught.value)


def test_no_recipient_is_refused():
    with pytest.raises(ValueError, match="no age recipients"):
        EncryptingWriter(io.BytesIO(), [])


def test_bad_identity_fails_at_the_call_naming_its_index():
    with pytest.raises(ValueError, match=r"identities\[1\]: line 1 .* damaged") as caught:
        decrypted(iter([b""]), [secret(ALICE), "AGE-SECRET-KEY-1NOTAKEY"])
    assert "NOTAKEY" not in str(caught.value)


# --- decryption failures -----------------------------------------------------------------------------------------------


CIPHERTEXT_DATA = bytes(range(256)) * 1000  # 256000 bytes: four age chunks
CIPHERTEXT = encrypt(CIPHERTEXT_DATA, [public(ALICE)])


@pytest.mark.parametrize("identities", [[], [""], ["# public key: age1...\n"]])
def test_no_identity(identities):
    with pytest.raises(DecryptionFailed) as caught:
        decrypted(iter([CIPHERTEXT]), identities)
    assert str(caught.value) == NO_IDENTITY


def test_wrong_identity_names_the_recipients_it_tried():
    message = failure(CIPHERTEXT, [secret(BOB), key_file(EVE)])

    assert message.startswith("no matching identity")
    assert public(BOB) in message and public(EVE) in message
    assert public(ALICE) not in message


@pytest.mark.parametrize("length", [0, 10, len(HEADER) + 20, 300, AGE_CHUNK, len(CIPHERTEXT) // 2, len(CIPHERTEXT) - 1])
def test_truncated_ciphertext(length):
    message = failure(CIPHERTEXT[:length], [secret(ALICE)])

    assert message.startswith("the encrypted artifact is truncated or corrupt")


def header_end(ciphertext: bytes) -> int:
    return ciphertext.index(b"\n", ciphertext.index(b"\n---")) + 1


FLIPS = {
    "version line": lambda c: 5,
    "header MAC": lambda c: c.index(b"\n---") + 10,
    "payload nonce": lambda c: header_end(c) + 3,
    "first payload chunk": lambda c: header_end(c) + 1000,
    "second payload chunk": lambda c: header_end(c) + 16 + AGE_CHUNK + 16 + 1000,
    "last byte": lambda c: len(c) - 1,
}


@pytest.mark.parametrize("where", FLIPS)
def test_flipped_byte(where):
    damaged = bytearray(CIPHERTEXT)
    damaged[FLIPS[where](CIPHERTEXT)] ^= 0x01

    message = failure(bytes(damaged), [secret(ALICE)])

    assert message.startswith("the encrypted artifact is truncated or corrupt")


def test_a_flipped_byte_in_the_recipient_stanza_looks_like_a_wrong_key():
    damaged = bytearray(CIPHERTEXT)
    where = CIPHERTEXT.index(b"-> X25519 ") + 15  # inside the ephemeral share: swap one base64 letter for another
    damaged[where] = ord("A") if damaged[where] != ord("A") else ord("B")

    message = failure(bytes(damaged), [secret(ALICE)])

    assert message.startswith("no matching identity") and "or its header is damaged" in message


def test_failures_in_a_stream_longer_than_the_queues_surface_while_it_is_still_being_fed():
    ciphertext = encrypt(os.urandom(4 << 20), [public(ALICE)])
    damaged = bytearray(ciphertext)
    damaged[header_end(ciphertext) + 1000] ^= 0x01
    fed = []

    def feed(data: bytes):
        for piece in pieces(data, list(range(0, len(data), AGE_CHUNK))):
            fed.append(len(piece))
            yield piece

    with pytest.raises(DecryptionFailed, match="no matching identity"):
        b"".join(decrypted(feed(ciphertext), [secret(BOB)]))
    assert sum(fed) < len(ciphertext)

    fed.clear()
    with pytest.raises(DecryptionFailed, match="truncated or corrupt"):
        b"".join(decrypted(feed(bytes(damaged)), [secret(ALICE)]))
    assert sum(fed) < len(ciphertext)


def test_trailing_bytes_and_plaintext_are_corrupt():
    assert "truncated or corrupt" in failure(CIPHERTEXT + b"x", [secret(ALICE)])
    assert "truncated or corrupt" in failure(CIPHERTEXT_DATA, [secret(ALICE)])


# --- errors and threads ------------------------------------------------------------------------------------------------


class BrokenSink:
    def __init__(self, fail_after: int) -> None:
        self.writes = 0
        self.fail_after = fail_after

    def write(self, data: bytes) -> None:
        self.writes += 1
        if self.writes > self.fail_after:
            raise OSError("disk full")


@pytest.mark.parametrize("fail_after", [0, 3])
def test_a_failing_out_raises_on_the_callers_thread_and_stops_the_worker(fail_after):
    writer = EncryptingWriter(BrokenSink(fail_after), [public(ALICE)])

    with pytest.raises(OSError, match="disk full"):
        for _ in range(64):
            writer.write(os.urandom(256 << 10))
        writer.close()

    assert workers() == []
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"more")


def test_a_dropped_writer_stops_its_worker():
    writer = EncryptingWriter(io.BytesIO(), [public(ALICE)])
    writer.write(os.urandom(3 << 20))
    assert workers() == ["age-encrypt"]

    del writer
    gc.collect()

    assert workers() == []


def test_a_failing_source_raises_unchanged_and_stops_the_worker():
    def chunks():
        yield CIPHERTEXT[:100_000]
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        decrypt_all = decrypted(chunks(), [secret(ALICE)])
        for _ in decrypt_all:
            pass


def test_a_reader_that_stops_early_stops_the_worker():
    ciphertext = encrypt(os.urandom(8 << 20), [public(ALICE)])
    stream = decrypted(iter(pieces(ciphertext, list(range(0, len(ciphertext), AGE_CHUNK)))), [secret(ALICE)])
    assert next(stream)  # more than the queues hold is still unread, so the worker waits for it
    assert workers() == ["age-decrypt"]

    stream.close()

    assert workers() == []


# --- the age CLI -------------------------------------------------------------------------------------------------------


needs_age = pytest.mark.skipif(not (shutil.which("age") and shutil.which("age-keygen")), reason="age CLI not installed")


@pytest.fixture
def cli_key(tmp_path):
    """A key file made by age-keygen, and its recipient."""
    keys = tmp_path / "key.txt"
    subprocess.run(["age-keygen", "-o", str(keys)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(keys)], check=True, capture_output=True, text=True).stdout.strip()
    return keys, recipient


@needs_age
def test_age_cli_decrypts_our_files(tmp_path, cli_key):
    keys, recipient = cli_key
    data = os.urandom(300_000)
    encrypted = tmp_path / "media.tar.zst.age"
    encrypted.write_bytes(encrypt(data, [public(BOB), recipient], [1, AGE_CHUNK, 99_999]))

    plain = subprocess.run(["age", "-d", "-i", str(keys), str(encrypted)], check=True, capture_output=True).stdout

    assert plain == data
    assert recipient_of(parse_identities(keys.read_text())[0]) == recipient


@needs_age
def test_we_decrypt_age_cli_files(cli_key):
    keys, recipient = cli_key
    data = os.urandom(300_000)

    encrypted = subprocess.run(["age", "-r", recipient, "-r", public(ALICE)], input=data, check=True,
                               capture_output=True).stdout

    assert decrypt(encrypted, [keys.read_text()], [7, AGE_CHUNK + 3]) == data
    assert decrypt(encrypted, [secret(ALICE)]) == data


# --- memory ------------------------------------------------------------------------------------------------------------


def test_memory_stays_flat_over_a_long_stream():
    """256 MiB are encrypted and decrypted as one pipeline; Python's peak allocation must not follow the stream."""
    block = os.urandom(1 << 20)
    total = 256

    def ciphertext():
        pending: list[bytes] = []

        class Collect:
            write = pending.append

        writer = EncryptingWriter(Collect, [public(ALICE)])
        for _ in range(total):
            writer.write(block)
            yield from pending
            pending.clear()
        writer.close()
        yield from pending

    expected = hashlib.sha256()
    for _ in range(total):
        expected.update(block)
    digest = hashlib.sha256()

    tracemalloc.start()
    try:
        for chunk in decrypted(ciphertext(), [secret(ALICE)]):
            digest.update(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert digest.hexdigest() == expected.hexdigest()
    assert peak < 64 << 20
