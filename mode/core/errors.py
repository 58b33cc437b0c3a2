"""The one exception type for user errors, and the reading guard that turns a bad input file into one.

The CLI prints a UserError's message on one line and exits 2.
"""

from __future__ import annotations

from contextlib import contextmanager


class UserError(Exception):
    """A wrong flag, path or value given by the user; the message says what is wrong and what is valid."""


def bad_data_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean a data file is not what it should be (parquet, JSON, npy/zip, tar, pickle, text)."""
    import json
    import pickle
    import tarfile
    import zipfile

    import pyarrow as pa

    return (pa.ArrowException, json.JSONDecodeError, zipfile.BadZipFile, tarfile.TarError, pickle.UnpicklingError,
            UnicodeDecodeError)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextmanager
def reading(path, what: str = "file"):
    """Inside: read `path`. A corrupt, truncated or mistyped file (missing column, wrong dtype, not an array,
    pickled objects) becomes a UserError naming it; keep the block to the reading itself."""
    try:
        yield
    except UserError:
        raise
    except (*bad_data_errors(), ValueError, EOFError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a readable {what} ({type(e).__name__}: {first_line(e)})") from None
