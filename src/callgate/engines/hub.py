"""Models that are not shipped in a package: fetched from the Hugging Face Hub on first use.

The offline default (Whisper tiny, the Joe voice, Silero) needs none of this. Other Whisper
sizes, Piper voices and GGUF language models are downloaded once into the Hub cache, with a
progress bar on stderr so that a first call that takes minutes says why. Without a network
the download fails fast with a message that names the model and what to do instead. The Hub's
own ``HF_ENDPOINT``/``HF_HUB_OFFLINE`` variables apply; ``endpoint`` overrides them (tests).
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path

from callgate.log import event

logger = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """A model could not be found locally nor downloaded."""


def download_snapshot(repo_id: str, *, what: str, allow_patterns: list[str] | None = None,
                      endpoint: str | None = None) -> str:
    """Local folder holding ``repo_id`` (downloaded now if it is not cached yet)."""
    import huggingface_hub  # only needed when something is downloaded

    event(logger, "model_download", repo=repo_id, what=what)
    try:
        path: str = huggingface_hub.snapshot_download(
            repo_id, allow_patterns=allow_patterns, endpoint=endpoint)
    except Exception as exc:
        raise ModelUnavailable(_message(what, repo_id, exc)) from exc
    return path


def download_file(repo_id: str, filename: str, *, what: str, endpoint: str | None = None) -> str:
    """Local path of one file of ``repo_id`` (downloaded now if it is not cached yet)."""
    # A one-file snapshot rather than hf_hub_download: that one retries for ~25 s when there
    # is no network, which a caller waiting on the line should not sit through.
    folder = download_snapshot(repo_id, what=what, allow_patterns=[filename], endpoint=endpoint)
    return str(Path(folder) / filename)


def pick_file(repo_id: str, pattern: str, *, what: str, endpoint: str | None = None) -> str:
    """The first file of ``repo_id`` whose name matches ``pattern`` (case-insensitive)."""
    import huggingface_hub

    try:
        # model_info, not list_repo_files: the latter retries for ~25 s without a network.
        info = huggingface_hub.HfApi(endpoint=endpoint).model_info(repo_id)
        names = [sibling.rfilename for sibling in info.siblings or ()]
    except Exception as exc:
        raise ModelUnavailable(_message(what, repo_id, exc)) from exc
    matches = sorted(n for n in names if fnmatch.fnmatch(n.lower(), pattern.lower()))
    if not matches:
        raise ModelUnavailable(f"{what}: no file matching {pattern!r} in {repo_id}")
    return matches[0]


def _message(what: str, source: str, exc: Exception) -> str:
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (f"{what} is not available locally and could not be downloaded from {source} "
            f"(no network?): {first_line}. Use the shipped model or a local file, or run "
            f"once with network access to cache it.")
