"""The rules for option values, written once: every command and library function that takes an
option checks it with the same rule here, so a value is refused with the same one-line message
wherever it appears (`--energy` of score, run and compare; `--seed` of every seeded step ...).

Nothing here imports torch: the checks run before any heavy import.
"""

from __future__ import annotations

import errno
import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

from .atomic import is_stream
from .errors import InputError

MAX_SEED = 2**63 - 1  # numpy and torch both take seeds in 0 .. 2^63 - 1
MAX_WORKERS = 256
MAX_TIMEOUT_MINUTES = 10**6


def _number(value, flag: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{flag} must be a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise InputError(f"{flag} {value} is out of range") from None


def share(value, flag: str) -> float:
    """A share in (0, 1]: --energy, --tau."""
    number = _number(value, flag)
    if not 0 < number <= 1:  # NaN fails this too
        raise InputError(f"{flag} must be in (0, 1], got {value}")
    return number


def count(value, flag: str, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer of at least `minimum` (and at most `maximum`): sizes, rows, workers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{flag} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise InputError(f"{flag} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InputError(f"{flag} must be at most {maximum}, got {value}")
    return value


def seed(value, flag: str = "--seed") -> int:
    return count(value, flag, 0, MAX_SEED)


def minutes(value, flag: str = "--dist-timeout") -> float:
    number = _number(value, flag)
    if not 0 < number <= MAX_TIMEOUT_MINUTES:
        raise InputError(f"{flag} must be a positive number of minutes (at most {MAX_TIMEOUT_MINUTES}), got {value}")
    return number


def choice(value, choices, flag: str) -> str:
    if value not in choices:
        raise InputError(f"{flag} must be one of {', '.join(choices)}, not {value!r}")
    return value


def device(value, flag: str = "--device") -> str:
    """auto, cpu, cuda or cuda:N (whether it is there is asked when it is used)."""
    text = str(value)
    index = text.removeprefix("cuda:")
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and index.isdigit() and index.isascii()):
        return text
    raise InputError(f"{flag} {text!r}: expected auto, cpu, cuda or cuda:N")


def resolve_device(value: str, flag: str = "--device"):
    """The torch.device of a checked --device: auto is the first GPU when one is usable."""
    import torch

    text = device(value, flag)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"{flag} {text}: no usable CUDA GPU here")
    dev = torch.device(text)
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"{flag} {text}: only {torch.cuda.device_count()} CUDA GPUs are present")
    return dev


def _no_loop(text: str, flag: str) -> None:
    try:
        os.stat(text)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{flag} {text!r}: its symlinks form a loop") from None
    except ValueError:  # a NUL in the name
        raise InputError(f"{flag} {text!r}: not a usable path") from None


def output_file(path, flag: str = "--out", folder: bool = False) -> Path:
    """A file to write (or `-`, a character device, a FIFO: a stream), not a directory
    (folder=True: an existing one may be replaced, as a save_to_disk subset is)."""
    text = os.fspath(path)
    _no_loop(text, flag)
    if is_stream(text):
        return Path(text)
    target = Path(text)
    if (
        text in ("", ".", "..")
        or text.endswith(("/", os.sep))
        or target.name in ("", ".", "..")
        or (target.is_dir() and not folder)
    ):
        raise InputError(f"{flag} {text!r}: names a directory; name a file to write")
    return target


def output_dir(path, flag: str = "--out") -> Path:
    """A folder to write into: not a file, not a stream."""
    text = os.fspath(path)
    _no_loop(text, flag)
    target = Path(text)
    if text == "" or is_stream(text) or (target.exists() and not target.is_dir()):
        raise InputError(f"{flag} {text!r}: names a file or a stream; name a folder to write into")
    return target


def text(value, flag: str) -> str:
    """Text that can be written as UTF-8 (a lone surrogate from a mis-encoded argv cannot)."""
    if not isinstance(value, str):
        raise InputError(f"{flag}: expected text, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{flag}: not valid UTF-8 text ({ascii(value)[:60]})") from None
    return value


MAX_TEMPLATE_BYTES = 1 << 20


def chat_template(path, flag: str = "--chat-template") -> str:
    """A chat template from a file: its text (a Jinja template, e.g. chat_template.jinja), or
    the "chat_template" string of a JSON file (chat_template.json, tokenizer_config.json)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{flag} {path}: no such file" if not path.exists() else f"{flag} {path}: not a regular file")
    if path.stat().st_size > MAX_TEMPLATE_BYTES:
        raise InputError(f"{flag} {path}: over {MAX_TEMPLATE_BYTES >> 20} MiB, not a chat template")
    try:
        body = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{flag} {path}: not UTF-8 text") from None
    if path.suffix == ".json":
        try:
            body = json.loads(body).get("chat_template")
            if isinstance(body, list):  # named templates (tokenizer_config.json): the default one
                body = next((t.get("template") for t in body if t.get("name") == "default"), None)
        except (ValueError, AttributeError, RecursionError):
            body = None
        if not isinstance(body, str):
            raise InputError(f'{flag} {path}: a JSON file without a "chat_template" string')
    if not body.strip():
        raise InputError(f"{flag} {path}: empty")
    return text(body, flag)


PILOT_ROWS = 2048  # rows of the sketch's pilot sample, by default
DEFAULT_TIMEOUT_MINUTES = 60.0  # how long a torchrun rank waits for the others (--dist-timeout)
SCORE_METHODS = ("auto", "exact", "sketch")
EIG_METHODS = ("auto", "full", "krylov")
BACKENDS = ("auto", "native", "torch")


def sketch_without_l2(what: str = "the sketch") -> str:
    """Why the one-pass sketch cannot take l2_normalize (the message of its refusal)."""
    return (
        f"{what} cannot use --l2-normalize (l2_normalize): it scales the centred rows, whose "
        "column means one pass does not know beforehand; use the exact engine (--method exact)"
    )


@dataclass
class ScoreOptions:
    """How `score` (and `run`'s scoring) computes the importance scores; see leverage_scores."""

    energy: float = 0.9
    device: str = "auto"
    standardize: bool = False
    l2_normalize: bool = False
    chunk_rows: int | None = None
    method: str = "auto"
    sketch_size: int | None = None
    seed: int = 0
    pilot_rows: int = PILOT_ROWS
    backend: str = "auto"
    eig_method: str = "auto"

    def check(self) -> "ScoreOptions":
        share(self.energy, "--energy")
        device(self.device)
        if self.chunk_rows is not None:
            count(self.chunk_rows, "--chunk-rows")
        choice(self.method, SCORE_METHODS, "--method")
        if self.l2_normalize and self.method == "sketch":
            raise InputError(sketch_without_l2())
        if self.sketch_size is not None:
            count(self.sketch_size, "--sketch-size")
        seed(self.seed)
        count(self.pilot_rows, "--pilot-rows", 2)
        choice(self.backend, BACKENDS, "backend")
        choice(self.eig_method, EIG_METHODS, "eig_method")
        return self


SELECT_METHODS = ("scalselect", "random", "length", "cluster")


@dataclass
class SelectOptions:
    """Which of the scored samples `select` (and `run`) keeps; see select.top_positions."""

    method: str = "scalselect"
    seed: int = 0
    stratify_by: str | None = None  # a record field, or "source": quotas per value
    shares: dict | None = None  # the quotas' shares per value (else the pool's own)
    store: object = None  # method "cluster": the store (or .npy, or matrix) of the vectors
    clusters: int = 100  # method "cluster": k

    def check(self) -> "SelectOptions":
        choice(self.method, SELECT_METHODS, "--method")
        seed(self.seed)
        if self.method == "cluster":
            if self.stratify_by is not None:
                raise InputError("--stratify-by cannot be combined with --method cluster (its clusters are its strata)")
            if self.store is None:
                raise InputError("--method cluster needs the vectors: pass --store STORE")
            count(self.clusters, "--clusters")
        return self


def method_list(text, flag: str = "--methods") -> list[str]:
    """A comma-separated list of selection methods."""
    methods = [m.strip() for m in str(text).split(",") if m.strip()]
    unknown = [m for m in methods if m not in SELECT_METHODS]
    if not methods or unknown:
        raise InputError(
            f"{flag}: expected a comma-separated list of {', '.join(SELECT_METHODS)}{f', not {unknown[0]!r}' if unknown else ''}"
        )
    return methods


def share_table(table, flag: str = "--shares") -> dict[str, float]:
    """{"source": share, ...}: finite numbers >= 0, not all 0 (they are normalised)."""
    if not isinstance(table, dict) or not table:
        raise InputError(f"{flag}: expected a JSON object of source -> share >= 0")
    shares = {}
    for key, value in table.items():
        number = _number(value, f"{flag}: the share of {key!r}") if not isinstance(value, bool) else None
        if number is None or not (math.isfinite(number) and number >= 0):
            raise InputError(f"{flag}: expected a JSON object of source -> share >= 0 (the share of {key!r} is {value!r})")
        shares[str(key)] = number
    if not sum(shares.values()) > 0:
        raise InputError(f"{flag}: every share is 0")
    return shares
