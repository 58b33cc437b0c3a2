"""The Hugging Face hub: every download goes through `hub_call`, so an offline machine, a missing or gated
repo and a failed request each end in one line saying how to go on."""

from __future__ import annotations

import importlib
import os

from mode.core.errors import UserError

_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Whether huggingface_hub is told to stay offline (`HF_HUB_OFFLINE`, read now or at its import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The connection errors of the HTTP client huggingface_hub uses (httpx2, httpx or requests)."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests.exceptions", ("ConnectionError", "Timeout"))):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        found.extend(getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), type))
    return tuple(found)


def hub_call(fn, what: str, fallback: str, **kwargs):
    """`fn(**kwargs)` against the hub, its failures turned into one-line `UserError`s.

    Args:
        fn: a huggingface_hub function (`snapshot_download`, `list_repo_files`).
        what: what is being fetched, for the message.
        fallback: how the user can go on without the hub.
    """
    from huggingface_hub import utils as hf

    def unreachable(why: str) -> str:
        return (f"the Hugging Face hub is unreachable ({why}), so {what} cannot be fetched; {fallback} "
                "or run the same command where the hub is reachable")

    if hub_offline():
        raise UserError(unreachable("HF_HUB_OFFLINE is set"))
    try:
        return fn(**kwargs)
    except hf.RevisionNotFoundError:
        raise UserError(f"{what}: revision {kwargs.get('revision')!r} not found in {kwargs['repo_id']}") from None
    except hf.RepositoryNotFoundError:
        raise UserError(f"{what}: {kwargs['repo_id']} is not on the hub or is gated (accept its terms on "
                        "huggingface.co and log in with `hf auth login`)") from None
    except (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled, *_transport_errors()) as e:
        raise UserError(unreachable(type(e).__name__)) from e
    except hf.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "?")
        raise UserError(f"{what}: the hub answered HTTP {status} for {kwargs['repo_id']}") from e
